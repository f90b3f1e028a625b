"""Seconds and peak memory of the whole `lldiff enhance` command, by photo size.

    python benchmarks/speed.py                          # 600x400 (15 photos), 2000x1500, 4000x3000
    python benchmarks/speed.py --sizes 4000x3000 --ensemble 1 --steps 1   # what the trade-offs buy
    python benchmarks/speed.py --model lol --json speed.json

For each size it writes dark JPEG photos (scikit-image's sample photos, resized and darkened by
Lv et al.'s model at fixed parameters) into a temporary folder and times one
``python -m lldiff_cli enhance IN OUT`` over them: start-up, model loading, reading, exposure,
tiles, mirrored copies, refiner, keeping highlights, writing, all that a user waits for. Each
command runs in its own process, whose peak resident memory (max RSS) is its own (Unix).
Sizes under a megapixel get ``--small-count`` photos (like LOL's 15 test images), so start-up
is spread as it is over a folder; the others one photo, start-up included. ``s/MP`` is
seconds per megapixel of photo; ``x small`` is that over the first size's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lldiff_cli.errors import run_script

PHOTOS = ("coffee", "astronaut", "chelsea", "rocket")


def dark_photo(name: str, width: int, height: int) -> "PIL.Image.Image":
    """scikit-image's photo ``name`` resized to width x height and darkened (Lv et al.'s model,
    alpha 0.95, beta 0.6, gamma 2.5), as an 8-bit RGB PIL image."""
    import skimage.data
    import torch
    from PIL import Image

    from lldiff_cli.darken import lv_darken

    photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((width, height), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255)
    dark = lv_darken(x, alpha=0.95, beta=0.6, gamma=2.5)
    return Image.fromarray((dark.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))


# Runs argv[1:] and prints its peak RSS and exit code. On Linux a process's max RSS includes
# the pages of the process it was cloned from (the kernel keeps the high-water mark across
# exec), so the command is started from this small launcher, not from the benchmark, which
# holds torch and the photos.
LAUNCHER = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)")


def run_command(cmd: list[str]) -> tuple[float, int]:
    """Run ``cmd``; (wall seconds, its peak resident memory in bytes). Raises on failure."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    try:
        maxrss, code = (int(v) for v in done.stdout.split())
    except ValueError:
        raise RuntimeError(f"the launcher of {' '.join(cmd)} failed: {done.stderr.strip()[-500:]}") from None
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {code}: {done.stderr.strip()[-500:]}")
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return seconds, maxrss * scale


def measure(width: int, height: int, count: int, options: list[str], work: Path) -> dict:
    src = work / f"in-{width}x{height}"
    src.mkdir()
    for i in range(count):
        dark_photo(PHOTOS[i % len(PHOTOS)], width, height).save(src / f"photo{i:02d}.jpg", quality=95)
    cmd = [sys.executable, "-m", "lldiff_cli", "enhance", str(src), str(work / f"out-{width}x{height}"),
           "--overwrite", "--quiet", *options]
    seconds, peak = run_command(cmd)
    megapixels = width * height / 1e6
    return {"size": f"{width}x{height}", "images": count, "seconds": seconds, "s_per_image": seconds / count,
            "s_per_mp": seconds / count / megapixels, "peak_mb": peak / 2 ** 20}


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"sizes must be WxH, got {text!r}")
    if width < 16 or height < 16:
        raise SystemExit(f"sizes must be at least 16x16, got {text!r}")
    return width, height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="600x400,2000x1500,4000x3000")
    parser.add_argument("--small-count", type=int, default=15, help="photos per size under a megapixel")
    parser.add_argument("--model", default=None, help="as lldiff enhance's --model (default: the shipped model)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--ensemble", type=int, default=None)
    parser.add_argument("--precision", default=None, help="as lldiff enhance's --precision")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    options = []
    for flag, value in (("--model", args.model), ("--steps", args.steps), ("--ensemble", args.ensemble),
                        ("--precision", args.precision)):
        if value is not None:
            options += [flag, str(value)]
    print(f"lldiff enhance {' '.join(options) or '(defaults)'}, {os.cpu_count()} CPUs")
    print(f"{'size':>10} {'images':>6} {'s/image':>8} {'s/MP':>6} {'x small':>7} {'peak MB':>8}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lldiff-speed-") as tmp:
        for width, height in sizes:
            count = args.small_count if width * height < 1_000_000 else 1
            row = measure(width, height, count, options, Path(tmp))
            row["x_small"] = row["s_per_mp"] / rows[0]["s_per_mp"] if rows else 1.0
            rows.append(row)
            print(f"{row['size']:>10} {count:>6} {row['s_per_image']:8.2f} {row['s_per_mp']:6.2f} "
                  f"{row['x_small']:7.2f} {row['peak_mb']:8.0f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    run_script(main)
