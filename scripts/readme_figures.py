"""Rebuild the README's pictures with the shipped default model.

    python benchmarks/real_photos.py /tmp/real            # the non-LOL check set (darkened photos)
    python scripts/readme_figures.py /tmp/real            # -> docs/sample_images.jpg, docs/exposure_knob.jpg

docs/sample_images.jpg: every image of sample_images/, before and after `lldiff enhance`.
docs/exposure_knob.jpg: three photos of the check set where the constant auto exposure is
wrong or colours are at risk (a star field, a night launch, a saturated coffee), with
--exposure auto, 0.1 and 0.25, and the ground truth.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from lldiff_cli.atomic import atomic_write
from lldiff_cli.checkpoints import load_model
from lldiff_cli.enhance import EnhanceSettings, enhance_image
from lldiff_cli.errors import LldiffError, run_script
from lldiff_cli.evaluate import comparison_sheet
from lldiff_cli.images import list_images, read_image, to_uint8

ROOT = Path(__file__).resolve().parent.parent
KNOB_IMAGES = ("hubble_deep_field", "rocket", "coffee")
KNOB_EXPOSURES = (None, 0.1, 0.25)


def save_jpeg(sheet: torch.Tensor, path: Path) -> None:
    with atomic_write(path, suffix=".jpg") as tmp:
        Image.fromarray(to_uint8(sheet)).save(tmp, quality=88, optimize=True)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("real", type=Path, help="the folder benchmarks/real_photos.py wrote (low/ and high/)")
    args = parser.parse_args()
    for name in KNOB_IMAGES:  # before anything is written: a wrong folder leaves docs/ as it was
        for part in ("low", "high"):
            if not (args.real / part / f"{name}.png").is_file():
                raise LldiffError(f"{args.real / part / name}.png not found: give the folder "
                                  "benchmarks/real_photos.py wrote")
    torch.set_flush_denormal(True)
    device = torch.device("cpu")
    model = load_model()

    rows = []
    for path in list_images(ROOT / "sample_images"):
        low = read_image(ROOT / "sample_images" / path).rgb
        rows.append((path.stem, [low, enhance_image(model, low, EnhanceSettings(), device)]))
    save_jpeg(comparison_sheet(rows, ["sample_images/ (input)", "lldiff enhance (defaults)"]),
              ROOT / "docs" / "sample_images.jpg")

    rows = []
    for name in KNOB_IMAGES:
        low = read_image(args.real / "low" / f"{name}.png").rgb
        high = read_image(args.real / "high" / f"{name}.png").rgb
        outs = [enhance_image(model, low, EnhanceSettings(exposure=e), device) for e in KNOB_EXPOSURES]
        rows.append((name, [low, *outs, high]))
    labels = ["input", *[f"--exposure {e or 'auto'}" for e in KNOB_EXPOSURES], "ground truth"]
    save_jpeg(comparison_sheet(rows, labels, cell_width=240), ROOT / "docs" / "exposure_knob.jpg")


if __name__ == "__main__":
    run_script(main)
