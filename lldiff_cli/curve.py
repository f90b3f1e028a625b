"""curve.png: a training run's loss and validation PSNR against step, drawn with PIL."""

from __future__ import annotations

import math
from pathlib import Path


def write_curve(history: list[dict], path: Path, width: int = 720, height: int = 520) -> None:
    """Draw training loss (log scale, top) and validation PSNR (bottom) against step into a PNG.

    ``history``: records with "step" and "loss" or "val_psnr". Drawn with PIL (no plotting
    library); written atomically, so a viewer never sees half a file.
    """
    from PIL import Image, ImageDraw, ImageFont

    from lldiff_cli.atomic import atomic_write

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    losses = [(r["step"], r["loss"]) for r in history if "loss" in r and r["loss"] > 0 and math.isfinite(r["loss"])]
    psnrs = [(r["step"], r["val_psnr"]) for r in history if "val_psnr" in r and math.isfinite(r["val_psnr"])]
    steps = [s for s, _ in losses + psnrs] or [0, 1]
    x_lo, x_hi = min(steps), max(max(steps), min(steps) + 1)
    half = height // 2
    panels = [("training loss (log scale)", [(s, math.log10(v)) for s, v in losses], (0, half), "#1f77b4",
               lambda v: f"{10 ** v:.3g}"),
              ("validation PSNR (dB)", psnrs, (half, height), "#d62728", lambda v: f"{v:.2f}")]
    left, right, top_pad, bottom_pad = 64, 16, 22, 26
    for title, points, (y0, y1), colour, label in panels:
        box = (left, y0 + top_pad, width - right, y1 - bottom_pad)
        draw.rectangle(box, outline="black")
        draw.text((left, y0 + 5), title, fill="black", font=font)
        draw.text((box[0], box[3] + 4), str(x_lo), fill="black", font=font)
        draw.text((box[2] - 40, box[3] + 4), f"step {x_hi}", fill="black", font=font)
        if not points:
            draw.text((box[0] + 10, box[1] + 10), "no data yet", fill="gray", font=font)
            continue
        values = [v for _, v in points]
        v_lo, v_hi = min(values), max(values)
        draw.text((4, box[1]), label(v_hi), fill="black", font=font)
        draw.text((4, box[3] - 10), label(v_lo), fill="black", font=font)
        pad = max(v_hi - v_lo, 1e-6) * 0.05  # keep the line off the frame
        v_lo, v_hi = v_lo - pad, v_hi + pad

        def xy(s, v, box=box, v_lo=v_lo, v_hi=v_hi):
            return (box[0] + (box[2] - box[0]) * (s - x_lo) / (x_hi - x_lo),
                    box[3] - (box[3] - box[1]) * (v - v_lo) / (v_hi - v_lo))

        coords = [xy(s, v) for s, v in points]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=2)
        for cx, cy in coords if len(coords) <= 50 else coords[-1:]:  # dots while they stay apart
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=colour)
    with atomic_write(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")
