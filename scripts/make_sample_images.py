"""Make sample_images/: small low-light photos for the README's demo.

The sources are public-domain / CC0 photographs that scikit-image ships (see
sample_images/README.md for each licence). Each is shrunk to fit 480x320 and
darkened with the real command line, ``lldiff darken --noise --seed SEED``; only
the low-light images are kept.

    python scripts/make_sample_images.py            # writes sample_images/
    python scripts/make_sample_images.py --seed 3 --out /tmp/samples
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import skimage.data
from PIL import Image

from lldiff_cli.errors import run_script

SOURCES = ("astronaut", "chelsea", "coffee", "rocket")  # skimage.data functions
MAX_SIZE = (480, 320)  # width, height: keeps each noisy PNG near 300 KB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "sample_images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, dataset = Path(tmp) / "src", Path(tmp) / "dataset"
        src.mkdir()
        for name in SOURCES:
            image = Image.fromarray(getattr(skimage.data, name)())
            image.thumbnail(MAX_SIZE, Image.Resampling.LANCZOS)
            image.save(src / f"{name}.png")
        subprocess.run([sys.executable, "-m", "lldiff_cli", "darken", str(src), str(dataset),
                        "--noise", "--seed", str(args.seed), "--quiet"], check=True)
        args.out.mkdir(parents=True, exist_ok=True)
        for name in SOURCES:
            shutil.copyfile(dataset / "low" / f"{name}.png", args.out / f"{name}.png")
            print(args.out / f"{name}.png")
        print((dataset / "manifest.jsonl").read_text(), end="")


if __name__ == "__main__":
    run_script(main)
