"""The LOL-protocol proxy, cross-validated: how a model's exposure estimator scores on single
shots of seen scenes, over several folds of them instead of one set of 40.

    python benchmarks/singles_cv.py RUN --checkpoint default.pt [--folds 4] [--count 40] [--members 1,4]
                                    [--maps 0,4] [--shrink 0.5,0.75] [--spread 0.27] [--iterations 1500]
                                    [--jitter 0.1] [--only 0,2]

RUN is a `lldiff train` run folder on LOL (config.yaml, split.json). Fold k of K holds out 40
(``--count``) single pairs spread over the numbering at its own offset (never one of the run's blocks, never a
neighbour of an eval15 name: data.benchmark_neighbours); the checkpoint's body gets a fresh grid
estimator (6x8 cells, `scripts/default_model.py calibrate`'s fit) of each ``--members`` count,
fitted on every other pair outside the blocks (with ``--maps`` K, K ExposureMaps join each
estimator: lldiff_cli.networks.exposure), and is scored on the fold as `lldiff enhance`
runs it (2 steps x 4 copies, spread 0.27, prior 0.44: the checkpoint's sampler with those
exposure settings) for each ``--shrink`` (and ``--spread``, when several are given), and at the
constant prior (shrink 0, the first spread). One JSON line per
fold and setting, then the means over all K x 40 images. The body is the checkpoint's: if it
trained on these pairs, their structure (GT-mean) is optimistic, but the brightness part is
honest, and the comparison between settings is fair.

Why: two sets of 40 singles differ by about 1 dB in plain PSNR for the same model (23.65 on the
campaign's first split, 22.72 on the second), as much as the settings being compared do.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import default_model  # noqa: E402  (scripts/default_model.py: calibrate, score)

from lldiff_cli.checkpoints import load_checkpoint  # noqa: E402
from lldiff_cli.data import _natural, benchmark_neighbours  # noqa: E402
from lldiff_cli.device import pick_precision  # noqa: E402
from lldiff_cli.enhance import EnhanceSettings  # noqa: E402
from lldiff_cli.errors import LldiffError, run_script  # noqa: E402

COUNT = 40  # singles per fold, as data.val_singles in the LOL config


def folds(names: list[str], blocks: set[str], k: int, layout: str = "LOL", count: int = COUNT) -> list[list[str]]:
    """``k`` disjoint sets of ``count`` names, spread over the natural order of the names outside
    ``blocks`` and away from the benchmark's scenes, each at its own offset within the spacing."""
    keep = benchmark_neighbours(layout, names)
    candidates = sorted((n for n in names if n not in blocks and n not in keep), key=_natural)
    if k * count > len(candidates) // 2:
        raise LldiffError(f"{k} folds of {count} singles need {2 * k * count} candidate pairs, "
                          f"there are {len(candidates)}")
    step = len(candidates) / count
    return [[candidates[int((j + (f + 0.5) / k) * step)] for j in range(count)] for f in range(k)]


def integers(text: str, option: str) -> list[int]:
    """'1,4' -> [1, 4]; anything else is an LldiffError naming the option."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise LldiffError(f"{option} takes comma-separated whole numbers, got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--checkpoint", default="default.pt", help="in RUN: the body to score")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--members", default="1,4", help="estimator sizes to compare")
    parser.add_argument("--maps", default="0", help="ExposureMaps joining each estimator, comma-separated counts")
    parser.add_argument("--map-iterations", type=int, default=3000)
    parser.add_argument("--only", default="", help="score only these folds (comma-separated, from 0), the rest "
                                                   "still held out as in the full run; default all")
    parser.add_argument("--shrink", default="0.5,0.75", help="auto exposure = prior + shrink * (estimate - prior)")
    parser.add_argument("--prior", type=float, default=0.44)
    parser.add_argument("--spread", default="0.27", help="the copies' exposure spread(s), comma-separated")
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--jitter", type=float, default=0.1)
    parser.add_argument("--count", type=int, default=COUNT, help="singles per fold")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    members, maps = integers(args.members, "--members"), integers(args.maps, "--maps")
    only = set(integers(args.only, "--only")) if args.only else set(range(args.folds))
    if not only <= set(range(args.folds)):
        raise LldiffError(f"--only names folds outside 0..{args.folds - 1}: {args.only}")
    shrinks = [float(s) for s in args.shrink.split(",")]
    spreads = [float(s) for s in args.spread.split(",")]
    training, cfg = default_model.run_pairs(args.run, held_out=False)  # LldiffError without split.json
    block_pairs = default_model.run_pairs(args.run, part="blocks")[0]
    everything = training + block_pairs + default_model.run_pairs(args.run, part="singles")[0]
    blocks = {name for name, _, _ in block_pairs}
    layout = str((cfg.get("data") or {}).get("layout", "LOL"))
    by_name = {name: (name, low, high) for name, low, high in everything}
    payload = load_checkpoint(args.run / args.checkpoint)
    precision = pick_precision("auto", torch.device("cpu"))
    settings = EnhanceSettings(precision=precision)
    base = default_model.sampler_model(payload, steps=2, ensemble=4, exposure_spread=spreads[0],
                                       exposure_prior=args.prior, exposure_shrink=0.0)
    rows: dict[str, list[dict]] = {}

    def record(label: str, fold: int, result: dict) -> None:
        rows.setdefault(label, []).append(result)
        print(json.dumps({"fold": fold, "setting": label, **{k: round(v, 4) for k, v in result.items()}}), flush=True)

    for f, held in enumerate(folds(list(by_name), blocks, args.folds, layout, count=args.count)):
        if f not in only:
            continue
        held_set = set(held)
        train = [by_name[n] for n in by_name if n not in blocks and n not in held_set]
        test = [by_name[n] for n in held]
        record("constant", f, default_model.score(base, test, settings))
        for m, k in itertools.product(members, maps):
            start = time.perf_counter()
            fitted = default_model.calibrate(base, train, grid=(6, 8), members=m, maps=k, iterations=args.iterations,
                                             map_iterations=args.map_iterations, jitter=args.jitter)
            fit_s = time.perf_counter() - start
            for s, spread in itertools.product(shrinks, spreads):
                fitted.config = replace(fitted.config, exposure_shrink=s, exposure_spread=spread).validate()
                label = (f"members {m}" + (f" maps {k}" if k else "") + f" shrink {s}"
                         + (f" spread {spread}" if len(spreads) > 1 else ""))
                record(label, f, default_model.score(fitted, test, settings) | {"fit_s": fit_s})
    for label, results in rows.items():
        n = sum(r["n"] for r in results)
        means = {k: sum(r[k] * r["n"] for r in results) / n for k in ("psnr", "ssim", "psnr_gtmean", "ssim_gtmean")}
        print(json.dumps({"setting": label, "images": n, **{k: round(v, 4) for k, v in means.items()}}))


if __name__ == "__main__":
    run_script(main)
