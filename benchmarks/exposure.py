"""Does the output follow the exposure knob? Mean grey level of enhanced images per target.

    python benchmarks/exposure.py IN_DIR [--model CARD_OR_CKPT] [--targets 0.2,0.3,0.4,0.5,0.6] [--limit N]

For every image of IN_DIR and every target exposure (plus ``auto``), enhance with the model
at its default sampler settings and report the mean of the output's grey level (the mean of
R, G and B in [0, 1], the quantity the model is conditioned on), averaged over the images,
with the mean absolute gap to the target.
"""

from __future__ import annotations

import argparse
import statistics

from lldiff_cli.checkpoints import load_model
from lldiff_cli.device import pick_device
from lldiff_cli.enhance import EnhanceSettings, enhance_image
from lldiff_cli.errors import LldiffError, run_script
from lldiff_cli.images import list_images, read_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("in_dir")
    parser.add_argument("--model", default=None)
    parser.add_argument("--targets", default="0.2,0.3,0.4,0.5,0.6")
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    try:  # the inputs first, then the model: a typo fails at once
        targets = [float(t) for t in args.targets.split(",")]
    except ValueError:
        raise LldiffError(f"--targets must be numbers separated by commas, got {args.targets!r}") from None
    if not all(0 < t < 1 for t in targets):
        raise LldiffError(f"--targets must lie in (0, 1), got {args.targets!r}")
    files = list_images(args.in_dir)[: args.limit or None]
    images = [read_image(f"{args.in_dir}/{f}").rgb for f in files]
    device = pick_device("cpu")  # flushes denormals on the CPU
    model = load_model(args.model)
    print(f"{len(images)} images from {args.in_dir}")
    print(f"{'target':>8} {'output mean':>12} {'|gap|':>8}")
    for target in [None] + targets:
        means, gaps = [], []
        for image in images:
            out = enhance_image(model, image, EnhanceSettings(exposure=target), device)
            means.append(float(out.mean()))
            if target is not None:
                gaps.append(abs(means[-1] - target))
        gap = f"{statistics.mean(gaps):8.3f}" if gaps else f"{'':>8}"
        print(f"{'auto' if target is None else target:>8} {statistics.mean(means):12.3f} {gap}", flush=True)


if __name__ == "__main__":
    run_script(main)
