"""A non-LOL check set: public-domain photos of other kinds, darkened and noised by lldiff.

    python benchmarks/real_photos.py OUT_DIR [--seed 0]
    python benchmarks/real_photos.py OUT_DIR --mode scale --factor 0.1   # a plain exposure cut instead
    lldiff eval --low OUT_DIR/low --high OUT_DIR/high -m default -m gamma:0.25 -m clahe --sheet sheet.png --sheet-images 7

LOL's ground truths share one brightness style; these do not. The sources are photos that
scikit-image ships (public domain or CC0, see sample_images/README.md), plus its colour wheel
(a colour-shift check) and the Hubble deep field (bright points on black: a blow-out check),
shrunk to at most 600 px a side and darkened with `lldiff darken --noise` (Lv et al.'s model
with Poisson-Gaussian sensor noise). Pairs land in OUT_DIR/low and OUT_DIR/high.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from lldiff_cli.errors import run_script

SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "colorwheel", "hubble_deep_field")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=["lv", "scale"], default="lv",
                        help="lv: Lv et al.'s random gamma (colours shift with it); scale: brightness times --factor")
    parser.add_argument("--factor", type=float, default=0.1, help="scale mode's brightness factor")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        for name in SOURCES:
            array = getattr(skimage.data, name)()
            if array.ndim == 2:
                array = np.stack([array] * 3, axis=-1)
            image = Image.fromarray(array[..., :3])
            image.thumbnail((600, 600), Image.Resampling.LANCZOS)
            image.save(src / f"{name}.png")
        subprocess.run([sys.executable, "-m", "lldiff_cli", "darken", str(src), str(args.out), "--noise",
                        "--mode", args.mode, *(["--factor", str(args.factor)] if args.mode == "scale" else []),
                        "--seed", str(args.seed), "--overwrite", "--quiet"], check=True)


if __name__ == "__main__":
    run_script(main)
