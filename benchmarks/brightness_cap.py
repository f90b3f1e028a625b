"""How much plain PSNR does not knowing the ground truth's brightness cost? A ceiling per dataset.

    python benchmarks/brightness_cap.py [--dataset LOL --root data --split train] [--run RUN [--held-out]]
                                        [--targets 0.30:0.60:0.01] [--exposure 0.4214] [--structure-db 24]

A method that cannot read the ground truth's overall brightness from the dark input (LOL's
cannot be: its mean grey level varies 0.21-0.75 between scenes, and hardly correlates with
the input's) gives every image about the same output brightness. Here each output is the
ground truth itself, perfectly restored, only rescaled to one mean grey level ``e`` for all
images (and clipped to [0, 1]); the mean PSNR over the images is then the ceiling of the plain
protocol for any such method, and GT-mean PSNR of the same outputs is infinite. The script
prints that ceiling for every ``e`` of the grid, the best ``e``, and the ceiling at
``--exposure`` (the shipped model's auto exposure, when given). A few images whose brightness
happens to match ``e`` score near infinity and make that curve jumpy; ``--structure-db S`` adds
to every image the squared error of a method whose GT-mean PSNR is S dB (structure and colour
errors that no brightness fixes), which gives the ceiling of such a method. ``--run`` restricts
the pairs to a training run's held-out split (``--held-out``) or to its training pairs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import numpy as np

from lldiff_cli.data import load_dataset
from lldiff_cli.errors import LldiffError
from lldiff_cli.images import read_image


def grid(text: str) -> list[float]:
    """'start:stop:step' -> the values from start to stop inclusive."""
    try:
        start, stop, step = (float(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--targets must be start:stop:step, e.g. 0.30:0.60:0.01, got {text!r}") from None
    if not (0 < start <= stop < 1 and step > 0):
        raise ValueError(f"--targets needs 0 < start <= stop < 1 and step > 0, got {text!r}")
    return [round(start + i * step, 6) for i in range(int(round((stop - start) / step)) + 1)]


def ceiling(highs: list[np.ndarray], exposure: float, structure_db: float | None = None) -> float:
    """Mean PSNR (dB) of each HxWx3 [0, 1] ground truth rescaled to mean grey ``exposure``,
    plus the squared error (0..1 scale) of ``structure_db`` when given."""
    floor = 0.0 if structure_db is None else 10.0 ** (-structure_db / 10.0)
    scores = []
    for high in highs:
        out = np.clip(high * (exposure / high.mean()), 0.0, 1.0)
        mse = float(np.mean((out - high) ** 2)) + floor
        scores.append(-10.0 * math.log10(mse) if mse > 0 else math.inf)
    return statistics.mean(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="LOL")
    parser.add_argument("--root", default="data")
    parser.add_argument("--split", default="train")
    parser.add_argument("--run", default=None, help="a training run folder: use its split.json")
    parser.add_argument("--held-out", action="store_true", help="with --run: its held-out pairs (else its training pairs)")
    parser.add_argument("--targets", default="0.30:0.60:0.01", help="start:stop:step of the output brightness")
    parser.add_argument("--exposure", type=float, default=None, help="also report this output brightness")
    parser.add_argument("--structure-db", type=float, default=None,
                        help="add the error of a method with this GT-mean PSNR (dB)")
    args = parser.parse_args()
    if args.held_out and not args.run:
        parser.error("--held-out needs --run")
    try:
        targets = grid(args.targets)
    except ValueError as err:
        parser.error(str(err))

    pairs = load_dataset(args.dataset, root=Path(args.root), split=args.split).pairs
    if args.run:
        split = Path(args.run) / "split.json"
        if not split.is_file():
            raise LldiffError(f"{split} not found: --run takes a folder that `lldiff train` wrote")
        held_out = set(json.loads(split.read_text())["val"])
        pairs = [p for p in pairs if (p.name in held_out) == args.held_out]
    highs = []
    for pair in pairs:  # only the ground truths are scored: the dark inputs are never decoded
        try:
            high = read_image(pair.high).rgb
        except LldiffError as err:
            print(f"skipped {pair.name}: {err}")
            continue
        if float(high.mean()) == 0.0:
            print(f"skipped {pair.name}: its ground truth is black")
            continue
        highs.append(high[0].permute(1, 2, 0).double().numpy())
    if not highs:
        raise SystemExit("no pairs to score")
    means = np.array([h.mean() for h in highs])
    print(f"{len(highs)} pairs; ground-truth mean grey {means.mean():.3f} (sd {means.std():.3f}, "
          f"{means.min():.3f}-{means.max():.3f})")
    rows = [(e, ceiling(highs, e, args.structure_db)) for e in targets]
    for e, score in rows:
        print(f"  e {e:.3f}: {score:6.2f} dB")
    best_e, best = max(rows, key=lambda row: row[1])
    print(f"best constant brightness {best_e:.3f}: ceiling {best:.2f} dB")
    if args.exposure is not None:
        print(f"at {args.exposure:.4f}: ceiling {ceiling(highs, args.exposure, args.structure_db):.2f} dB")


if __name__ == "__main__":
    try:
        main()
    except LldiffError as err:
        raise SystemExit(f"error: {err}")
