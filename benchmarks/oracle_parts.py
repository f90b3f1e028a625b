"""Where does the model lose against the ground truth: brightness, the low band or the details?

    python benchmarks/oracle_parts.py [--dataset LOL --root data --split train] [--run RUN [--held-out]]
                                      [--model CARD_OR_CKPT] [--steps 2] [--limit N]

For every pair, the model's output is scored (plain PSNR / SSIM, lldiff_cli.metrics) five ways,
each with parts taken from the ground truth:

  auto exposure      the model as `lldiff enhance` runs it, but one copy (no mirrored copies)
  true brightness    the ground truth's mean grey as the exposure (what --exposure can give)
  + true finest      ... and the ground truth's finest detail bands (level 1, half resolution)
                     in place of that HFRM's; the coarser levels' stay the model's
  + true details     ... and all the ground truth's wavelet detail bands in place of the HFRMs'
  + true low band    ... and the ground truth's low band in place of the diffusion's (HFRMs kept)

The gap from the first to the second row is what not knowing the brightness costs; the third
to fifth rows bound what a better finest HFRM, better HFRMs or a better low-band diffusion
could give. Images are padded to the model's multiple (as `lldiff enhance` does) and never
tiled; seed 0. A model with a refiner runs it on every row's image, as `lldiff enhance` does.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from lldiff_cli import metrics as M
from lldiff_cli.checkpoints import load_model
from lldiff_cli.data import read_pair
from lldiff_cli.errors import LldiffError, run_script
from lldiff_cli.tiling import pad_to_multiple, unpad

import pairs as pairs_options  # benchmarks/pairs.py, beside this script

ROWS = ("auto exposure", "true brightness", "+ true finest", "+ true details", "+ true low band")


@torch.no_grad()
def rebuilt(model, low: torch.Tensor, high: torch.Tensor, steps: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The rows' images as the wavelet bands rebuild them (padded to the model's multiple, before
    the refiner and any clamping), and the padded dark input the refiner takes beside them."""
    dark, bright = pad_to_multiple(low, model.multiple)[0], pad_to_multiple(high, model.multiple)[0]
    band, lls, highs = model.decompose(dark)
    band_true, _, highs_true = model.decompose(bright)
    exposure = high.mean().reshape(1)

    def restored_band(e: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return model.restore_band(band, e, steps=steps, eta=model.config.eta, generator=generator)

    auto, true = restored_band(model.estimate_exposure(band)), restored_band(exposure)
    details = model.restore_details(true, lls, highs)
    images = {
        ROWS[0]: model.reconstruct(auto, model.restore_details(auto, lls, highs)),
        ROWS[1]: model.reconstruct(true, details),
        ROWS[2]: model.reconstruct(true, highs_true[:1] + details[1:]),
        ROWS[3]: model.reconstruct(true, highs_true),
        ROWS[4]: model.reconstruct(band_true, model.restore_details(band_true, lls, highs)),
    }
    return images, dark


@torch.no_grad()
def outputs(model, low: torch.Tensor, high: torch.Tensor, steps: int) -> dict[str, torch.Tensor]:
    """The outputs of the module docstring for one 1x3xHxW pair, [0, 1], unpadded: :func:`rebuilt`'s
    images refined (a model with a refiner), clamped and cropped back to the pair's size."""
    images, dark = rebuilt(model, low, high, steps)
    size = tuple(low.shape[-2:])
    return {name: unpad(model.refine(image, dark).clamp(0, 1), size) for name, image in images.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pairs_options.add_options(parser)
    parser.add_argument("--model", default=None, help="a card (.yaml) or checkpoint (.pt); default: the shipped model")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's)")
    parser.add_argument("--limit", type=int, default=0, help="score only the first N pairs")
    args = parser.parse_args()
    if args.limit < 0:
        parser.error(f"--limit must be 0 (all) or more, got {args.limit}")

    torch.set_flush_denormal(True)
    model = load_model(Path(args.model) if args.model else None).eval()
    steps = model.config.steps if args.steps is None else args.steps
    pairs = pairs_options.selected(parser, args)
    if args.limit:
        pairs = pairs[:args.limit]
    scores = {name: ([], []) for name in ROWS}
    for pair in pairs:
        try:
            low, high = read_pair(pair)
        except LldiffError as err:
            print(f"skipped {pair.name}: {err}")
            continue
        if high is None:
            print(f"skipped {pair.name}: no ground truth")
            continue
        target = M.as_array255(high)
        for name, image in outputs(model, low, high, steps).items():
            out = M.as_array255(image)
            scores[name][0].append(M.psnr(out, target))
            scores[name][1].append(M.ssim(out, target))
    if not scores[ROWS[0]][0]:
        raise SystemExit("no pairs to score")
    print(f"{len(scores[ROWS[0]][0])} pairs, {steps} DDIM steps, one copy")
    for name, (psnrs, ssims) in scores.items():
        print(f"  {name:16s} {statistics.mean(psnrs):6.2f} dB  SSIM {statistics.mean(ssims):.3f}")


if __name__ == "__main__":
    run_script(main)
