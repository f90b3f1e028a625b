"""Any image size through a model that needs multiples of 2**k: padding and overlapping tiles.

``enhance_tensor`` is the single entry from an image tensor to ``model.enhance``: it pads to
the model's multiple (reflecting the border) and crops back; above ``max_pixels`` it cuts
the image into overlapping tiles, enhances each, and blends the overlaps with linear ramps,
so memory stays bounded whatever the photo's size. It is geometry: the whole image's target
exposure comes from its caller (enhance.enhance_image). The model renders whatever it is given
at the mean grey it is asked for, so each tile is asked for its share of that target
(:func:`tile_exposure`): a dark corner stays darker than a lit one, as in the whole image.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

# The network's cost and memory grow with the pixels of the band it denoises, 4**levels times
# fewer than the image's, and faster than linearly above a size: the UNet's self-attention is
# quadratic in them, and big activations fall out of the caches. Above this many band pixels an
# image is tiled, in tiles of at most this many band pixels a side: at the default model (levels
# 2) that is 0.6 megapixels (a LOL image, 600x400, is not tiled) and 768-pixel tiles; for
# pixel-space diffusion (levels 0) 36,864 pixels and 192-pixel tiles. Seconds per megapixel of
# one model.enhance call (default model, bfloat16, channels-last, 2 CPU cores, quiet):
# 384x384 3.15, 608x400 2.84, 512x512 2.67, 640x640 2.64, 768x768 2.63, 1024x1024 3.15.
MAX_BAND_PIXELS = 192 * 192
BAND_TILE = 192
DEFAULT_OVERLAP = 64
# A tile's target brightness: exposure * (tile mean / image mean) ** TILE_EXPOSURE_POWER. The
# model's output brightness grows more slowly than its input's (noise floor, tone curve), so
# the power is below 1. On 10 held-out LOL images cut into 256-pixel tiles (2 steps, 1 copy;
# benchmarks/tiling.py --size 600x400 --tile 256 --every 4), PSNR to the untiled output was
# 24.4 dB with one exposure for every tile, 29.9 / 31.4 / 32.5 / 32.9 / 32.2 dB with powers
# 1 / 0.5 / 0.6 / 0.7 / 0.8.
TILE_EXPOSURE_POWER = 0.7


def default_max_pixels(levels: int) -> int:
    return MAX_BAND_PIXELS * 4 ** levels


def default_tile(levels: int) -> int:
    return BAND_TILE * 2 ** levels


def tile_exposure(exposure: float, tile: torch.Tensor, image_mean: float) -> float:
    """The target mean grey for one tile of an image whose target is ``exposure``."""
    if image_mean <= 1e-6:
        return exposure
    share = (float(tile.mean()) / image_mean) ** TILE_EXPOSURE_POWER
    return min(0.99, max(0.01, exposure * share))


def shrink(image: torch.Tensor, max_side: int, multiple: int = 1) -> torch.Tensor:
    """NxCxHxW -> an area-averaged copy at most ``max_side`` pixels a side (a side rounded to a
    multiple of ``multiple``, at least one), on the image's device; an image that fits comes back at
    its own size (rounded to the multiple), as a copy."""
    h, w = image.shape[-2:]
    scale = min(1.0, max_side / max(h, w))
    size = (max(multiple, round(h * scale / multiple) * multiple), max(multiple, round(w * scale / multiple) * multiple))
    # MPS pools only to sizes that divide the input (pytorch#96056): shrink on the CPU there.
    source = image.cpu() if image.device.type == "mps" else image
    return F.interpolate(source, size=size, mode="area").to(image.device)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad NxCxHxW at the bottom and right to multiples of ``multiple``; returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def unpad(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x[..., : size[0], : size[1]]


def tile_span(length: int, tile: int, overlap: int, multiple: int = 1) -> tuple[int, list[int]]:
    """Tiles along one side of ``length`` pixels: (their size, their start offsets).

    As few tiles as ``tile``-pixel tiles sharing ``overlap`` pixels need, then each made as small
    as covering the side allows (a multiple of ``multiple``), so neighbours share about
    ``overlap`` pixels and no more: the pixels enhanced twice are the overlaps, not whole
    slack (1000 pixels in 640-pixel tiles sharing 64: two of 532, not two of 640 sharing 280).
    """
    if length <= tile:
        return length, [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    size = min(tile, math.ceil((length + (count - 1) * overlap) / count / multiple) * multiple)
    stride = (length - size) / (count - 1)
    return size, [round(i * stride) for i in range(count)]


class Grid(NamedTuple):
    """Tiles of ``height`` x ``width`` pixels at rows ``ys`` and columns ``xs``, whose
    neighbours share at least ``overlap`` pixels, blended over that many."""
    height: int
    width: int
    ys: list[int]
    xs: list[int]
    overlap: int

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


def tile_grid(model, height: int, width: int, *, tile: Optional[int] = None, overlap: int = DEFAULT_OVERLAP,
              max_pixels: Optional[int] = None) -> Optional[Grid]:
    """How :func:`enhance_tensor` cuts a ``height`` x ``width`` image for ``model``: None when it
    goes through whole (at most ``max_pixels``, default :func:`default_max_pixels`, and no
    ``tile`` asked for), else its tiles of at most ``tile`` (default :func:`default_tile`)."""
    max_pixels = default_max_pixels(model.levels) if max_pixels is None else max_pixels
    if tile is None and height * width <= max_pixels:
        return None
    m = model.multiple
    tile = max(m, math.ceil((tile or default_tile(model.levels)) / m) * m)
    overlap = min(overlap, tile // 2)
    (th, ys), (tw, xs) = tile_span(height, tile, overlap, m), tile_span(width, tile, overlap, m)
    return Grid(th, tw, ys, xs, overlap)


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    w = torch.ones(length)
    if overlap > 0:
        ramp = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
        if not at_start:
            w[:overlap] = ramp
        if not at_end:
            w[-overlap:] = ramp.flip(0)
    return w


def enhance_tensor(model, image: torch.Tensor, *, tile: Optional[int] = None, overlap: int = DEFAULT_OVERLAP,
                   max_pixels: Optional[int] = None, exposure: Optional[float] = None, batch_size: int = 1,
                   on_tile: Optional[Callable[[int, int], None]] = None, **kwargs) -> torch.Tensor:
    """image: 1x3xHxW in [0, 1] on the model's device -> enhanced 1x3xHxW in [0, 1].

    ``model`` needs ``multiple``, ``levels`` and ``enhance(x, exposure=..., **kwargs)``;
    ``tile`` forces tiling with tiles of at most that size (rounded up to the model's multiple);
    ``max_pixels`` (default: :func:`default_max_pixels`) is the size above which tiling starts.
    ``batch_size`` tiles go through the model together (every tile of an image has the same size).
    ``on_tile(done, total)`` is called after each model call (total 1 when untiled): progress.
    ``exposure`` is the whole image's target (enhance.enhance_image decides it); each tile is
    asked for its share (:func:`tile_exposure`). None leaves each call to the model's estimate.
    """
    h, w = image.shape[-2:]
    grid = tile_grid(model, h, w, tile=tile, overlap=overlap, max_pixels=max_pixels)
    if grid is None:
        padded, size = pad_to_multiple(image, model.multiple)
        out = unpad(model.enhance(padded, exposure=exposure, **kwargs), size)
        if on_tile is not None:
            on_tile(1, 1)
        return out
    th, tw, ys, xs, overlap = grid
    image_mean = float(image.mean())
    out = torch.zeros(image.shape[0], 3, h, w)
    weight = torch.zeros(1, 1, h, w)
    cells = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    calls = math.ceil(grid.count / batch_size)
    for call, first in enumerate(range(0, len(cells), batch_size), start=1):
        chunk = cells[first:first + batch_size]
        pieces = [image[..., ys[i]:ys[i] + th, xs[j]:xs[j] + tw] for i, j in chunk]
        padded, size = pad_to_multiple(torch.cat(pieces), model.multiple)
        targets = None if exposure is None else torch.tensor(
            [tile_exposure(exposure, piece, image_mean) for piece in pieces], device=image.device)
        results = unpad(model.enhance(padded, exposure=targets, **kwargs), size).float().cpu()
        rh, rw = size
        for (i, j), result in zip(chunk, results):
            y, x = ys[i], xs[j]
            # Ramps only where a neighbouring tile overlaps; their true overlap may exceed `overlap`.
            wy = _ramp(rh, min(overlap, rh), i == 0, i == len(ys) - 1)
            wx = _ramp(rw, min(overlap, rw), j == 0, j == len(xs) - 1)
            wgt = (wy[:, None] * wx[None, :])[None, None]
            out[..., y:y + rh, x:x + rw] += result * wgt
            weight[..., y:y + rh, x:x + rw] += wgt
        if on_tile is not None:
            on_tile(call, calls)
    return (out / weight).to(image.device)
