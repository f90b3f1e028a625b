"""How much plain PSNR does not knowing the ground truth's brightness cost? A ceiling per dataset.

    python benchmarks/brightness_cap.py [--dataset LOL --root data --split train] [--run RUN [--held-out]]
                                        [--targets 0.30:0.60:0.01] [--exposure 0.44] [--structure-db 24]
                                        [--power P] [--outputs DIR]

A method that cannot read the ground truth's overall brightness from the dark input (LOL's
cannot be: its mean grey level varies 0.21-0.75 between scenes, and hardly correlates with
the input's) gives every image about the same output brightness. Here each output is the
ground truth itself, perfectly restored, only rescaled to one mean grey level ``e`` for all
images (and clipped to [0, 1]); the mean PSNR over the images is then the ceiling of the plain
protocol for any such method, and GT-mean PSNR of the same outputs is infinite. The script
prints that ceiling for every ``e`` of the grid, the best ``e``, and the ceiling at
``--exposure`` (e.g. the shipped model's auto-exposure target, 0.44). A few images whose brightness
happens to match ``e`` score near infinity and make that curve jumpy; ``--structure-db S`` adds
to every image the squared error of a method whose GT-mean PSNR is S dB (structure and colour
errors that no brightness fixes), which gives the ceiling of such a method. ``--run`` restricts
the pairs to a training run's held-out split (``--held-out``) or to its training pairs.

The brightness a method holds constant need not be the mean grey. ``--power P`` holds the
P-power mean of linear luminance constant instead (shown as the grey level of that linear
value, so ``e`` is still a grey level): P = 1 is the mean in linear light, and a larger P
weighs the highlights more, like a camera's metering that keeps highlights from clipping.
LOL's ground truths are more alike at P = 4 than in their mean grey. ``--outputs DIR`` rescales
a method's own outputs (files named as the dark inputs, e.g. written by ``lldiff enhance``)
to each ``e`` in place of the ground truths, and scores them against the ground truths: that
shows whether the method's outputs reproduce the statistic well enough for the rule to help.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import numpy as np
import torch

from lldiff_cli.darken import linear_to_srgb, srgb_to_linear
from lldiff_cli.data import unpaired_folder
from lldiff_cli.errors import LldiffError, run_script
from lldiff_cli.images import read_image

import pairs as pairs_options  # benchmarks/pairs.py, beside this script

LUMA = (0.2126, 0.7152, 0.0722)  # Rec. 709 weights of linear R, G, B


def grid(text: str) -> list[float]:
    """'start:stop:step' -> the values from start to stop inclusive."""
    try:
        start, stop, step = (float(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--targets must be start:stop:step, e.g. 0.30:0.60:0.01, got {text!r}") from None
    if not (0 < start <= stop < 1 and step > 0):
        raise ValueError(f"--targets needs 0 < start <= stop < 1 and step > 0, got {text!r}")
    count = math.floor((stop - start) / step + 1e-9) + 1  # never past stop (0.5:0.95:0.3 is 0.5, 0.8)
    return [round(start + i * step, 6) for i in range(count)]


def rgb(path: Path) -> np.ndarray:
    """An image file as HxWx3 float64 in [0, 1]."""
    return read_image(path).rgb[0].permute(1, 2, 0).double().numpy()


def level(image: np.ndarray, power: float = 0.0) -> float:
    """The brightness of an HxWx3 [0, 1] sRGB image: its mean grey (``power`` 0), or the grey
    level whose linear light is the ``power``-power mean of its linear luminance."""
    if power == 0:
        return float(image.mean())
    luminance = srgb_to_linear(torch.from_numpy(np.ascontiguousarray(image))) @ torch.tensor(LUMA, dtype=torch.float64)
    return float(linear_to_srgb(luminance.pow(power).mean().pow(1.0 / power)))


def ceiling(highs: list[np.ndarray], exposure: float, structure_db: float | None = None, *,
            outputs: list[np.ndarray] | None = None, levels: list[float] | None = None) -> float:
    """Mean PSNR (dB) of each HxWx3 [0, 1] ground truth (or of the method's output for it,
    ``outputs``) rescaled from its brightness (``levels``, default: mean grey) to ``exposure``,
    against the ground truth, plus the squared error (0..1 scale) of ``structure_db`` when given."""
    floor = 0.0 if structure_db is None else 10.0 ** (-structure_db / 10.0)
    sources = highs if outputs is None else outputs
    levels = [level(source) for source in sources] if levels is None else levels
    scores = []
    for high, source, brightness in zip(highs, sources, levels):
        out = np.clip(source * (exposure / brightness), 0.0, 1.0)
        mse = float(np.mean((out - high) ** 2)) + floor
        scores.append(-10.0 * math.log10(mse) if mse > 0 else math.inf)
    return statistics.mean(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pairs_options.add_options(parser)
    parser.add_argument("--targets", default="0.30:0.60:0.01", help="start:stop:step of the output brightness")
    parser.add_argument("--exposure", type=float, default=None, help="also report this output brightness")
    parser.add_argument("--structure-db", type=float, default=None,
                        help="add the error of a method with this GT-mean PSNR (dB)")
    parser.add_argument("--power", type=float, default=0.0,
                        help="hold the POWER-power mean of linear luminance constant (0: the mean grey)")
    parser.add_argument("--outputs", type=Path, default=None,
                        help="rescale a method's outputs from this folder (named as the dark inputs) instead")
    args = parser.parse_args()
    try:
        targets = grid(args.targets)
    except ValueError as err:
        parser.error(str(err))
    if args.outputs is not None and args.structure_db is not None:
        parser.error("--structure-db adds a made-up structure error; --outputs has its own")
    if args.power < 0:
        parser.error(f"--power must be 0 or more, got {args.power}")

    pairs = pairs_options.selected(parser, args)
    made = {}  # a method's outputs by name, the same names as the pairs' (path without extension)
    if args.outputs is not None:
        made = {output.name: output.low for output in unpaired_folder(args.outputs, recursive=True).pairs}
    highs, outputs, truth, levels = [], [], [], []
    for pair in pairs:  # the dark inputs are never decoded
        try:
            high = rgb(pair.high)
            if args.outputs is None:
                output = high
            elif pair.name in made:
                output = rgb(made[pair.name])
            else:
                raise LldiffError(f"no output named {pair.name} in {args.outputs}")
        except LldiffError as err:
            print(f"skipped {pair.name}: {err}")
            continue
        if output.shape != high.shape:
            print(f"skipped {pair.name}: its output is {output.shape[1]}x{output.shape[0]}, "
                  f"its ground truth {high.shape[1]}x{high.shape[0]}")
            continue
        high_level, output_level = level(high, args.power), level(output, args.power)
        if high_level == 0.0 or output_level == 0.0:
            print(f"skipped {pair.name}: its ground truth or output is black")
            continue
        highs.append(high)
        outputs.append(output)
        truth.append(high_level)
        levels.append(output_level)
    if not highs:
        raise SystemExit("no pairs to score")
    truth = np.array(truth)
    name = "mean grey" if args.power == 0 else f"{args.power:g}-power linear level"
    print(f"{len(highs)} pairs; ground-truth {name} {truth.mean():.3f} (sd {truth.std():.3f}, "
          f"{truth.min():.3f}-{truth.max():.3f}; sd of its log {np.log(truth).std():.3f})")
    source = {"outputs": outputs, "levels": levels}
    rows = [(e, ceiling(highs, e, args.structure_db, **source)) for e in targets]
    for e, score in rows:
        print(f"  e {e:.3f}: {score:6.2f} dB")
    best_e, best = max(rows, key=lambda row: row[1])
    print(f"best constant brightness {best_e:.3f}: ceiling {best:.2f} dB")
    if args.exposure is not None:
        print(f"at {args.exposure:.4f}: ceiling {ceiling(highs, args.exposure, args.structure_db, **source):.2f} dB")


if __name__ == "__main__":
    run_script(main)
