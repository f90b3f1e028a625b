"""Do real dark photos keep what they got right? A check set of backlit, lamp, night and
starry scenes, and the three figures of lldiff_cli.tone over it (issue 20).

    python benchmarks/tone.py                         # BSDS500 from ../shared/data/photos/BSDS500
    python benchmarks/tone.py --photos skimage --sheet docs/tone_sheet.jpg   # public-domain photos

Each scene is made from a normal-light photo, deterministically (a seed per photo and
situation), in linear light as a camera would record it, then sensor noise
(darken.add_sensor_noise) and sRGB encoding:

  plain    the whole photo 10 to 30 times darker
  backlit  a bright sky (the bright areas touching the top edge) kept as it is, the rest 15 to
           50 times darker: a backlit subject against a blue sky or a window
  lamps    the photo 20 to 50 times darker, with 1 to 3 saturated lamp shades (orange, warm
           yellow, red, cyan) pasted in, shaded and pleated, with a glow
  night    the photo 70 to 200 times darker, with lit windows (mullioned, warm or cool) and
           small street lights
  stars    the sky turned black with white stars and a yellowish moon, the rest 20 to 50
           times darker

Methods: the default model run by lldiff_cli.enhance (CPU, its own settings) with and without
the highlight-keeping fusion (tone.keep_highlights), gamma:0.6 and clahe. Printed per method:
the median and worst (lowest) over the scenes of contrast kept and chroma kept (scenes with no
well-exposed part, or a grey one, have none), and the median shadow lift. --sheet writes
input | default without | default with, one row per situation.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from lldiff_cli import tone
from lldiff_cli.darken import add_sensor_noise, linear_to_srgb, seed_for, srgb_to_linear
from lldiff_cli.errors import run_script

SITUATIONS = ("plain", "backlit", "lamps", "night", "stars")
BSDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos" / "BSDS500"
# scikit-image's photos that may be published (sample_images/README.md has their licences).
SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket")
LAMP_COLOURS = ((1.0, 0.45, 0.1), (1.0, 0.72, 0.3), (1.0, 0.18, 0.08), (0.15, 0.75, 1.0))
WINDOW_COLOURS = ((1.0, 0.7, 0.35), (1.0, 0.82, 0.55), (0.75, 0.85, 1.0))


# --- the scenes: deterministic functions of (linear photo, generator) ------------------------


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of Nx1xHxW (reflecting border)."""
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


def sky_mask(photo: torch.Tensor) -> torch.Tensor:
    """1x1xHxW in [0, 1]: the bright areas (smoothed grey > 0.5) connected to the top edge."""
    import cv2

    bright = (_blur(tone.grey(photo), 2.0) > 0.5)[0, 0].numpy().astype(np.uint8)
    count, labels = cv2.connectedComponents(bright, connectivity=4)
    top = {int(v) for v in np.unique(labels[0]) if bright[0][labels[0] == v].any()}
    sky = np.isin(labels, sorted(top - {0})) if top - {0} else np.zeros_like(bright, dtype=bool)
    return _blur(torch.from_numpy(sky.astype(np.float32))[None, None], 1.0)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _disc(h: int, w: int, cy: float, cx: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, angle) of every pixel from (cy, cx), each 1x1xHxW."""
    y = torch.arange(h, dtype=torch.float32)[:, None] - cy
    x = torch.arange(w, dtype=torch.float32)[None, :] - cx
    return (y ** 2 + x ** 2).sqrt()[None, None], torch.atan2(y, x)[None, None]


def add_lamp(linear: torch.Tensor, g: torch.Generator, colour: tuple[float, float, float]) -> torch.Tensor:
    """A pleated, shaded lamp shade of ``colour`` (linear RGB at full brightness) with a glow."""
    h, w = linear.shape[-2:]
    radius = _uniform(g, 0.05, 0.09) * min(h, w)
    cy, cx = _uniform(g, radius, h - radius), _uniform(g, radius, w - radius)
    d, angle = _disc(h, w, cy, cx)
    inside = (d <= radius).float()
    pleats = 1 - 0.12 * (torch.sin(angle * 14) > 0).float()
    shade = (0.6 + 0.4 * (1 - (d / radius) ** 2)).clamp(0, 1) * pleats
    glow = 0.2 * torch.exp(-((d - radius).clamp(min=0) / (1.5 * radius)) ** 2) * (1 - inside)
    c = torch.tensor(colour).view(1, 3, 1, 1)
    return linear * (1 - inside) + c * (shade * inside + glow)


def add_window(linear: torch.Tensor, g: torch.Generator, colour: tuple[float, float, float]) -> torch.Tensor:
    """A lit window of ``colour`` with a mullion cross and a top-to-bottom falloff."""
    h, w = linear.shape[-2:]
    wh, ww = round(_uniform(g, 0.05, 0.11) * h), round(_uniform(g, 0.04, 0.08) * w)
    y0, x0 = round(_uniform(g, 0, h - wh)), round(_uniform(g, 0, w - ww))
    pane = torch.linspace(1.0, 0.55, wh)[:, None].expand(wh, ww).clone() * _uniform(g, 0.7, 1.0)
    pane[wh // 2 - 1: wh // 2 + 1, :] *= 0.15
    pane[:, ww // 2 - 1: ww // 2 + 1] *= 0.15
    out = linear.clone()
    out[..., y0:y0 + wh, x0:x0 + ww] = torch.tensor(colour).view(1, 3, 1, 1) * pane
    return out


def add_street_light(linear: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    h, w = linear.shape[-2:]
    d, _ = _disc(h, w, _uniform(g, 0, h), _uniform(g, 0, w))
    r = _uniform(g, 2.0, 4.0)
    light = torch.exp(-(d / r) ** 2) + 0.05 * torch.exp(-(d / (6 * r)) ** 2)
    return (linear + torch.tensor((1.0, 0.6, 0.25)).view(1, 3, 1, 1) * light).clamp(max=1)


def make_scene(photo: torch.Tensor, situation: str, seed: int, darkness: float = 1.0) -> torch.Tensor:
    """The dark scene ``situation`` made from ``photo`` (1x3xHxW sRGB in [0, 1]); the same
    (photo, situation, seed) gives the same pixels. ``darkness`` raises each darkening factor
    to that power (0.35: 10-30 times darker becomes 2.2-3.3 times), the same draws otherwise."""
    g = torch.Generator().manual_seed(seed)
    linear = srgb_to_linear(photo)
    h, w = photo.shape[-2:]
    if situation == "plain":
        linear = linear / _uniform(g, 10, 30) ** darkness
    elif situation == "backlit":
        sky = sky_mask(photo)
        linear = linear * (sky + (1 - sky) / _uniform(g, 15, 50) ** darkness)
    elif situation == "lamps":
        linear = linear / _uniform(g, 20, 50) ** darkness
        for _ in range(1 + int(torch.randint(3, (), generator=g))):
            linear = add_lamp(linear, g, LAMP_COLOURS[int(torch.randint(len(LAMP_COLOURS), (), generator=g))])
    elif situation == "night":
        linear = linear / _uniform(g, 70, 200) ** darkness
        for _ in range(4 + int(torch.randint(8, (), generator=g))):
            linear = add_window(linear, g, WINDOW_COLOURS[int(torch.randint(len(WINDOW_COLOURS), (), generator=g))])
        for _ in range(3 + int(torch.randint(5, (), generator=g))):
            linear = add_street_light(linear, g)
    elif situation == "stars":
        sky = sky_mask(photo)
        stars = (torch.rand(1, 1, h, w, generator=g) < 0.002).float() * torch.rand(1, 1, h, w, generator=g)
        night_sky = 0.002 + _blur(stars, 0.6) * 3
        d, _ = _disc(h, w, _uniform(g, 0.1, 0.3) * h, _uniform(g, 0.15, 0.85) * w)
        radius = 0.06 * min(h, w)
        disc = (d <= radius).float()
        moon = disc * (0.5 + 0.3 * _blur(torch.rand(1, 1, h, w, generator=g), 2.0) * 2)
        tint = torch.tensor((1.0, 0.93, 0.78)).view(1, 3, 1, 1)  # white stars, a yellowish moon
        sky_light = night_sky * (1 - disc) + moon * tint
        linear = sky * sky_light.clamp(0, 1) + (1 - sky) * linear / _uniform(g, 20, 50) ** darkness
    else:
        raise ValueError(f"unknown situation {situation!r}; allowed: {', '.join(SITUATIONS)}")
    gain, read = math.exp(_uniform(g, math.log(2.5e-4), math.log(1e-3))), _uniform(g, 5e-4, 2e-3)
    return add_sensor_noise(linear_to_srgb(linear.clamp(0, 1)), gain, read, generator=g)


# --- the check set ----------------------------------------------------------------------------


class Scene(NamedTuple):
    name: str
    situation: str
    image: torch.Tensor  # 1x3xHxW sRGB in [0, 1]


def _read(path: Path) -> torch.Tensor:
    from lldiff_cli.images import read_image

    return read_image(path).rgb


def source_photos(photos: str) -> list[tuple[str, torch.Tensor]]:
    """(name, 1x3xHxW) for every source photo: scikit-image's publishable photos for 'skimage',
    else every image under the folder ``photos``, sorted by relative path."""
    if photos == "skimage":
        import skimage.data

        out = []
        for name in SKIMAGE:
            array = np.asarray(getattr(skimage.data, name)())[..., :3]
            t = torch.from_numpy(array.astype(np.float32) / 255).permute(2, 0, 1)[None]
            scale = min(1.0, 480 / max(t.shape[-2:]))
            if scale < 1:
                size = (round(t.shape[-2] * scale), round(t.shape[-1] * scale))
                t = F.interpolate(t, size=size, mode="area")
            out.append((name, t))
        return out
    from lldiff_cli.images import list_images

    root = Path(photos)
    return [(rel.with_suffix("").as_posix(), _read(root / rel)) for rel in sorted(list_images(root, recursive=True))]


def check_set(photos: str, per_situation: int, seed: int = 0, darkness: float = 1.0) -> list[Scene]:
    """``per_situation`` scenes of each situation. Photos are taken in an order shuffled by
    ``seed``; backlit and stars take only photos with a sky (sky_mask covering 15 % to 60 %),
    and no photo serves twice while others are left."""
    sources = source_photos(photos)
    order = torch.randperm(len(sources), generator=torch.Generator().manual_seed(seed)).tolist()
    used: set[int] = set()
    scenes = []
    for situation in SITUATIONS:
        taken = 0
        for pass_ in (0, 1):  # first photos not used yet, then any
            for i in order:
                if taken == per_situation or (pass_ == 0 and i in used):
                    continue
                name, photo = sources[i]
                if situation in ("backlit", "stars") and not 0.15 <= float(sky_mask(photo).mean()) <= 0.6:
                    continue
                if pass_ == 1 and any(s.name.startswith(f"{situation}/{name}") for s in scenes):
                    continue
                used.add(i)
                taken += 1
                scenes.append(Scene(f"{situation}/{name}", situation,
                                    make_scene(photo, situation, seed_for(seed, f"{situation}/{name}"), darkness)))
    return scenes


# --- scoring ----------------------------------------------------------------------------------


def figures(image: torch.Tensor, out: torch.Tensor) -> dict[str, float | None]:
    return {"contrast": tone.contrast_kept(image, out), "chroma": tone.chroma_kept(image, out),
            "lift": tone.shadow_lift(image, out)}


def summary(rows: list[dict[str, float | None]]) -> dict[str, tuple[float, float, int] | None]:
    """figure -> (median, worst, count) over the scenes that have it; worst is the lowest."""
    out = {}
    for key in ("contrast", "chroma", "lift"):
        values = [r[key] for r in rows if r[key] is not None]
        out[key] = (statistics.median(values), min(values), len(values)) if values else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(BSDS), help="a folder of normal-light photos, or 'skimage'")
    parser.add_argument("--per-situation", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--darkness", type=float, default=1.0,
                        help="each darkening factor to this power; 0.35 mirrors the real sets of issue 20 "
                             "(gamma 0.6 and CLAHE lift their shadows 2.64x and 1.76x here, 2.71x and 1.73x there)")
    parser.add_argument("--model", default=None, help="a shipped model's name or a model file (default: the default)")
    parser.add_argument("--sheet", type=Path, help="write input | default without | default with (JPEG or PNG)")
    parser.add_argument("--sheet-width", type=int, default=240)
    parser.add_argument("--save", type=Path, help="also write every scene and output here as PNG")
    args = parser.parse_args()

    from lldiff_cli.baselines import make_method
    from lldiff_cli.checkpoints import load_model
    from lldiff_cli.device import pick_precision
    from lldiff_cli.enhance import EnhanceSettings, enhance_image
    from lldiff_cli.evaluate import comparison_sheet
    from lldiff_cli.images import write_image

    scenes = check_set(args.photos, args.per_situation, args.seed, args.darkness)
    device = torch.device("cpu")
    model = load_model(args.model, map_location=device)
    precision = pick_precision("auto", device)
    methods = {
        "default, no fusion": lambda x: enhance_image(model, x, EnhanceSettings(precision=precision,
                                                                                keep_highlights=False), device),
        "default": lambda x: enhance_image(model, x, EnhanceSettings(precision=precision), device),
        "gamma:0.6": make_method("gamma:0.6"),
        "clahe": make_method("clahe"),
    }
    rows: dict[str, list[dict]] = {name: [] for name in methods}
    sheet_rows = []
    print(f"{len(scenes)} scenes from {args.photos} (precision {precision})")
    for scene in scenes:
        outs = {name: fn(scene.image).float().clamp(0, 1) for name, fn in methods.items()}
        line = []
        for name, out in outs.items():
            f = figures(scene.image, out)
            rows[name].append(f)
            line.append(" ".join("-" if v is None else f"{v:.2f}" for v in f.values()))
        print(f"{scene.name:28s} grey {float(tone.grey(scene.image).mean()):.3f}  " + " | ".join(line), flush=True)
        if args.save:
            write_image(args.save / f"{scene.name}.png", scene.image)
            for name, out in outs.items():
                write_image(args.save / f"{scene.name}.{name.replace(' ', '').replace(',', '_')}.png", out)
        if args.sheet and scene.situation not in {s for s, _ in sheet_rows}:
            sheet_rows.append((scene.situation, (scene.name, [scene.image, outs["default, no fusion"], outs["default"]])))
    print("\nper scene above: contrast kept, chroma kept, shadow lift per method, in the order below")
    print(f"{'method':20s} {'contrast kept med/worst':>24s} {'chroma kept med/worst':>22s} {'shadow lift med':>16s}")
    for name, figs in rows.items():
        s = summary(figs)
        cells = []
        for key in ("contrast", "chroma"):
            cells.append("-" if s[key] is None else f"{s[key][0]:.2f} / {s[key][1]:.2f} (n={s[key][2]})")
        lift = "-" if s["lift"] is None else f"{s['lift'][0]:.2f} (n={s['lift'][2]})"
        print(f"{name:20s} {cells[0]:>24s} {cells[1]:>22s} {lift:>16s}")
    if args.sheet:
        sheet = comparison_sheet([row for _, row in sheet_rows], ["input", "default, no fusion", "default"],
                                 cell_width=args.sheet_width)
        from lldiff_cli.images import to_uint8
        from PIL import Image as PILImage

        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(to_uint8(sheet)).save(args.sheet, quality=85, optimize=True)
        print(f"sheet: {args.sheet} ({args.sheet.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    run_script(main)
