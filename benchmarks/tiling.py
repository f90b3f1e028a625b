"""Does tiling change the result? Tiled against untiled output, and both against the ground truth.

    python benchmarks/tiling.py [--dataset LOL --root data --split train] [--run RUN [--held-out]]
                                [--model CARD_OR_CKPT] [--size 1127x750] [--tile 640] [--every 8]

Large photos are enhanced in tiles (lldiff_cli.tiling); this measures what that costs. Each
pair is upscaled (bicubic) to ``--size``, large enough for the model's default tiling, then
enhanced twice with one copy (the model's steps, seed 0): untiled, and in tiles of ``--tile``
pixels (default: the model's). It prints, per pair and on average, the PSNR of the tiled output
to the untiled one (how far tiling moves it) and of each to the ground truth, upscaled alike.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pairs as pairs_options
import torch
import torch.nn.functional as F

from lldiff_cli import metrics as M
from lldiff_cli.checkpoints import load_model
from lldiff_cli.data import read_pair
from lldiff_cli.errors import run_script
from lldiff_cli.tiling import enhance_tensor


def compare(model, low: torch.Tensor, high: torch.Tensor, size: tuple[int, int], tile=None) -> dict[str, float]:
    """PSNRs (dB) of the tiled output to the untiled one and of each to the ground truth, at ``size`` (h, w)."""
    low, high = (F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1) for x in (low, high))
    exposure = float(model.auto_exposure(low))  # one target for both, as enhance.enhance_image decides it
    whole = enhance_tensor(model, low, max_pixels=size[0] * size[1], exposure=exposure, ensemble=1, seed=0)
    tiled = enhance_tensor(model, low, tile=tile, exposure=exposure, ensemble=1, seed=0)
    whole8, tiled8, high8 = M.as_array255(whole), M.as_array255(tiled), M.as_array255(high)
    return {"tiled to untiled": M.psnr(tiled8, whole8), "untiled to GT": M.psnr(whole8, high8),
            "tiled to GT": M.psnr(tiled8, high8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pairs_options.add_options(parser)
    parser.add_argument("--model", default=None, help="a card (.yaml) or checkpoint (.pt); default: the shipped model")
    parser.add_argument("--size", default="1127x750", help="WxH the pairs are upscaled to")
    parser.add_argument("--tile", type=int, default=None, help="tile size in pixels (default: the model's)")
    parser.add_argument("--every", type=int, default=8, help="score every N-th pair")
    args = parser.parse_args()
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must be WxH, got {args.size!r}")
    if w < 1 or h < 1 or args.every < 1 or (args.tile is not None and args.tile < 16):
        parser.error("--size needs positive sides, --every at least 1 and --tile at least 16")

    torch.set_flush_denormal(True)
    model = load_model(Path(args.model) if args.model else None).eval()
    rows = []
    for pair in pairs_options.selected(parser, args)[::args.every]:
        low, high = read_pair(pair)
        if high is None:
            print(f"skipped {pair.name}: no ground truth")
            continue
        rows.append(compare(model, low, high, (h, w), args.tile))
        print(pair.name, "  ".join(f"{k} {v:.2f}" for k, v in rows[-1].items()), flush=True)
    if not rows:
        raise SystemExit("no pairs to score")
    print(f"{len(rows)} pairs at {w}x{h}, one copy: " +
          "  ".join(f"{k} {statistics.mean(r[k] for r in rows):.2f} dB" for k in rows[0]))


if __name__ == "__main__":
    run_script(main)
