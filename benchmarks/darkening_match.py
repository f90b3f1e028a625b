"""How a paired dataset's dark images were made, and how close lldiff's darkening comes to them.

    python benchmarks/darkening_match.py [--dataset LOL --root data --split train] [--run RUN [--held-out]]
                                         [--every 1] [--alpha 0.9,1] [--beta 0.5,1] [--gamma 1.5,5]
                                         [--gain 0.00025,0.0025] [--read-noise 0.0005,0.005] [--seed 0]

For every pair, two measurements of the dark image against its ground truth:

* its tone: ``low = a * high ** gamma`` fitted in sRGB values on the medians of the dark image
  in 20 bins of the ground truth's values (0.08 to 0.9: clipped and near-black pixels left out;
  bins whose dark median is under two 8-bit levels too),
  the form of Lv et al.'s model ``beta * (alpha * x) ** gamma`` with ``a = beta * alpha ** gamma``;
* its noise: the standard deviation, in 8-bit levels, of the 2x2 high-pass
  ``x[i, j] - x[i+1, j] - x[i, j+1] + x[i+1, j+1]`` of its grey image (the mean of R, G, B),
  and that statistic's median absolute value (less swayed by edges). Texture shows in it too,
  so it is compared between images of the same scenes, never read as a noise level alone.

The same ground truths are then darkened as ``lldiff train`` darkens ``data.photos`` (Lv's model
with the ``--alpha/--beta/--gamma`` ranges, sensor noise with the ``--gain/--read-noise`` ranges,
rounded to 8 bits) and measured alike. The table gives each statistic's median and 10th / 90th
percentiles for both: choose the ranges that make the columns agree, then pass them to
``lldiff darken`` or to a training config's ``data.darken``. On LOL our485 (every other pair,
``--every 2``), ``--beta 0.08,0.45 --gamma 1.4,2.8 --gain 2e-5,1e-4 --read-noise 2e-4,1e-3``
match its tone and noise; the defaults (the papers' ranges) are darker and three times as noisy.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from lldiff_cli.darken import LvRanges, NoiseRanges, random_pair
from lldiff_cli.errors import LldiffError, run_script
from lldiff_cli.images import read_image
from lldiff_cli.train_data import quantize

import pairs as pairs_options  # benchmarks/pairs.py, beside this script

BINS = 20
FIT_RANGE = (0.08, 0.9)  # ground-truth values the tone fit uses: no clipped highlights, no black
MIN_LEVEL = 2 / 255      # bins whose dark median is under two 8-bit levels are left out of the fit


def fit_tone(low: np.ndarray, high: np.ndarray) -> tuple[float, float]:
    """(a, gamma) of ``low = a * high ** gamma`` for two aligned [0, 1] arrays, fitted by least
    squares in log-log on the median of ``low`` in ``BINS`` quantile bins of ``high``."""
    h, lo = high.ravel(), low.ravel()
    usable = (h > FIT_RANGE[0]) & (h < FIT_RANGE[1])
    if usable.sum() < 10 * BINS:
        raise LldiffError(f"too few ground-truth values in {FIT_RANGE[0]}-{FIT_RANGE[1]} to fit its tone")
    h, lo = h[usable], lo[usable]
    edges = np.quantile(h, np.linspace(0, 1, BINS + 1))
    which = np.clip(np.searchsorted(edges, h, side="right") - 1, 0, BINS - 1)
    xs, ys = [], []
    for b in range(BINS):
        members = which == b
        level = float(np.median(lo[members])) if members.sum() >= 5 else 0.0
        if level >= MIN_LEVEL:  # darker bins are 8-bit rounding, not tone
            xs.append(np.log(np.median(h[members])))
            ys.append(np.log(level))
    if len(set(xs)) < 2:
        raise LldiffError("the ground truth is too flat, or its dark image too dark, to fit a tone curve")
    gamma, log_a = np.polyfit(xs, ys, 1)
    return float(np.exp(log_a)), float(gamma)


def noise_level(image: np.ndarray) -> tuple[float, float]:
    """(standard deviation, median absolute value), in 8-bit levels, of the 2x2 high-pass of the
    grey (mean of channels) of an HxWx3 [0, 1] image."""
    grey = image.mean(axis=2)
    high_pass = grey[1:, 1:] - grey[:-1, 1:] - grey[1:, :-1] + grey[:-1, :-1]
    return float(high_pass.std() * 255), float(np.median(np.abs(high_pass)) * 255)


def measure(low: np.ndarray, high: np.ndarray) -> dict[str, float]:
    """The statistics the table compares, for one dark image and its ground truth (HxWx3, [0, 1])."""
    a, gamma = fit_tone(low, high)
    noise_sd, noise_median = noise_level(low)
    return {"mean grey": float(low.mean()), "a": a, "gamma": gamma,
            "noise sd": noise_sd, "noise median": noise_median}


def darken_like_training(high: np.ndarray, generator: torch.Generator, lv: LvRanges,
                         noise: NoiseRanges | None) -> np.ndarray:
    """``high`` (HxWx3, [0, 1]) darkened as ``lldiff train`` darkens a photo, rounded to 8 bits."""
    batch = torch.from_numpy(np.ascontiguousarray(high.transpose(2, 0, 1)))[None].float()
    low = quantize(random_pair(batch, generator, mode="lv", ranges=lv, noise=noise))
    return low[0].permute(1, 2, 0).double().numpy()


def summary(values: list[float]) -> str:
    q10, median, q90 = np.quantile(values, [0.1, 0.5, 0.9])
    return f"{median:8.4f} [{q10:.4f}, {q90:.4f}]"


def rng(text: str) -> tuple[float, float]:
    """'MIN,MAX' -> (MIN, MAX)."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX, got {text!r}") from None
    return low, high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pairs_options.add_options(parser)
    parser.add_argument("--every", type=int, default=1, help="measure every EVERY-th pair")
    defaults_lv, defaults_noise = LvRanges(), NoiseRanges()
    for name, default in (("alpha", defaults_lv.alpha), ("beta", defaults_lv.beta), ("gamma", defaults_lv.gamma),
                          ("gain", defaults_noise.gain), ("read-noise", defaults_noise.read_noise)):
        parser.add_argument(f"--{name}", type=rng, default=default, metavar="MIN,MAX",
                            help=f"range of the synthetic darkening's {name} (default {default[0]:g},{default[1]:g})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.every < 1:
        parser.error(f"--every must be 1 or more, got {args.every}")
    try:  # the ranges' own checks (darken.py), as `lldiff darken` applies them
        lv = LvRanges(alpha=args.alpha, beta=args.beta, gamma=args.gamma)
        noise = NoiseRanges(gain=args.gain, read_noise=args.read_noise)
    except LldiffError as err:
        parser.error(str(err))

    generator = torch.Generator().manual_seed(args.seed)
    real: dict[str, list[float]] = {}
    synthetic: dict[str, list[float]] = {}
    for pair in pairs_options.selected(parser, args)[::args.every]:
        try:
            low, high = (read_image(path).rgb[0].permute(1, 2, 0).double().numpy() for path in (pair.low, pair.high))
            if low.shape != high.shape:
                raise LldiffError(f"the dark image is {low.shape[1]}x{low.shape[0]}, "
                                  f"its ground truth {high.shape[1]}x{high.shape[0]}")
            measured = measure(low, high), measure(darken_like_training(high, generator, lv, noise), high)
        except LldiffError as err:
            print(f"skipped {pair.name}: {err}")
            continue
        for table, values in zip((real, synthetic), measured):
            for key, value in values.items():
                table.setdefault(key, []).append(value)
    if not real:
        raise SystemExit("no pairs to measure")
    print(f"{len(real['a'])} pairs; median [10th, 90th percentile]")
    print(f"{'statistic':14} {'dataset':>27} {'lldiff darkening':>27}")
    for key in real:
        print(f"{key:14} {summary(real[key]):>27} {summary(synthetic[key]):>27}")


if __name__ == "__main__":
    run_script(main)
