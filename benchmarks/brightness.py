"""How well can a dark image tell its ground truth's brightness? Exposure estimators fitted on
a run's training pairs, scored on its two held-out parts.

    python benchmarks/brightness.py RUN [--grids none,6x8] [--jitter 0,0.15] [--iterations 600]
                                        [--seeds 4] [--maps 4 --map-iterations 3000]

RUN is a `lldiff train` run folder (config.yaml for the data, split.json for the held-out
names: "singles", LOL's protocol, scenes seen in training; "blocks", new scenes). For each
estimator (lldiff_cli.networks.ExposureNet with the given grid, fitted by
lldiff_cli.calibrate.fit_exposure on whole training images) and for the constant prior (the
training targets' mean), it prints per part the mean absolute error of log brightness and the
PSNR of the ground truth itself rescaled to the estimate (clipped to [0, 1]): what the
brightness alone costs a perfect image, an upper bound for a model driven by that estimate.
With ``--maps K``, K ExposureMaps (fitted pixel by pixel to the ground truth's band by
lldiff_cli.calibrate.fit_exposure_map, seeds 0..K-1) are scored alone, and each grid row again
with them joined to its estimators (one geometric mean, as an ensemble with ``maps`` estimates).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lldiff_cli.calibrate import fit_exposure, fit_exposure_map
from lldiff_cli.data import run_pairs
from lldiff_cli.errors import LldiffError, run_script
from lldiff_cli.images import read_image
from lldiff_cli.metrics import psnr
from lldiff_cli.model import decompose
from lldiff_cli.networks.exposure import ExposureMap, ExposureNet


def low_band(image: torch.Tensor, levels: int = 2) -> torch.Tensor:
    """The band the model's estimator reads: 1x3xHxW in [0, 1] -> the level-``levels`` Haar low
    band scaled to [-1, 1] (model.decompose's first output)."""
    return decompose(image, levels)[0]


def load_part(run: Path, part: str | None) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, low, high) of the run's training pairs (part None) or of one held-out part."""
    chosen = run_pairs(run, held_out=False) if part is None else run_pairs(run, part=part)
    return [(p.name, read_image(p.low).rgb, read_image(p.high).rgb) for p in chosen]


PSNR_CAP = 60.0  # an estimate within rounding of the truth reads 60 dB, not inf (which would end the mean)


def scores(estimates: torch.Tensor, parts: list) -> dict:
    """Mean |log error| and rescaled-ground-truth PSNR of ``estimates`` over ``parts``."""
    errors, psnrs = [], []
    for e, (_, _, high) in zip(estimates.tolist(), parts):
        true = float(high.mean())
        errors.append(abs(torch.log(torch.tensor(e / true)).item()))
        psnrs.append(min(PSNR_CAP, psnr((high * e / true).clamp(0, 1), high)))
    return {"log_error": round(sum(errors) / len(errors), 4), "psnr_bound": round(sum(psnrs) / len(psnrs), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--grids", default="none,6x8", help="estimator grids: none (pooled only) or RxC")
    parser.add_argument("--jitter", default="0,0.15")
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, default=1, help="estimators fitted from this many initialisations, "
                                                            "their log estimates averaged")
    parser.add_argument("--maps", type=int, default=0, help="ExposureMaps fitted (seeds 0..maps-1), scored alone "
                                                           "and joined to each grid row")
    parser.add_argument("--map-iterations", type=int, default=3000)
    args = parser.parse_args()
    if not (args.run / "split.json").is_file():
        raise LldiffError(f"{args.run} is not a training run folder (no split.json)")
    grids = [None if g == "none" else tuple(int(v) for v in g.split("x")) for g in args.grids.split(",")]
    jitters = [float(j) for j in args.jitter.split(",")]
    train = load_part(args.run, None)
    held = {part: load_part(args.run, part) for part in ("singles", "blocks")}
    band = {name: low_band(low) for group in [train, *held.values()] for name, low, _ in group}
    targets = torch.tensor([float(high.mean()) for _, _, high in train])
    prior = float(targets.mean())
    rows = [{"estimator": f"constant {prior:.4f}",
             **{part: scores(torch.full((len(items),), prior), items) for part, items in held.items()}}]

    def logs_of(nets, items):  # N x len(items): each net's log estimates
        with torch.no_grad():
            return torch.stack([torch.cat([net(band[n]) for n, _, _ in items]).log() for net in nets])

    def scored_row(name, logs, **extra):  # logs: {"train" and each part: N x items}, estimates their geometric mean
        return {"estimator": name, **extra, "train": scores(logs["train"].mean(0).exp(), train),
                **{part: scores(logs[part].mean(0).exp(), items) for part, items in held.items()}}

    groups = {"train": train, **held}
    map_logs = None
    if args.maps:
        start = time.perf_counter()
        truths = {name: (low_band(high) + 1) / 2 for name, _, high in train}
        maps = []
        for seed in range(args.maps):
            torch.manual_seed(seed)
            maps.append(ExposureMap(width=args.width))
            fit_exposure_map(maps[-1], [band[n] for n, _, _ in train], [truths[n] for n, _, _ in train],
                             iterations=args.map_iterations, seed=seed)
        map_logs = {part: logs_of(maps, items) for part, items in groups.items()}
        rows.append(scored_row(f"maps x{args.maps}", map_logs, seconds=round(time.perf_counter() - start)))
    for grid in grids:
        for jitter in jitters:
            start = time.perf_counter()
            nets = []
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                nets.append(ExposureNet(width=args.width, grid=grid))
                fit_exposure(nets[-1], [band[n] for n, _, _ in train], targets, iterations=args.iterations,
                             jitter=jitter, lr=args.lr, seed=seed)
            logs = {part: logs_of(nets, items) for part, items in groups.items()}
            name = f"grid {grid} jitter {jitter} x{args.seeds}"
            rows.append(scored_row(name, logs, seconds=round(time.perf_counter() - start)))
            if map_logs is not None:
                rows.append(scored_row(f"{name} + maps x{args.maps}",
                                {part: torch.cat([logs[part], map_logs[part]]) for part in groups}))
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    run_script(main)
