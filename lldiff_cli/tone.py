"""Tone that keeps what a photo already got right: three figures, and the highlight-keeping fusion.

The figures compare an enhanced image with its own input, pixel by pixel, with no ground truth:
how much of the local contrast (:func:`contrast_kept`) and of the colour (:func:`chroma_kept`) of
the already well-exposed parts survives, and how far the shadows are lifted (:func:`shadow_lift`).
``benchmarks/tone.py`` takes their median and worst over a check set of backlit, night and lamp
scenes.

The model renders a whole photo at one target brightness, highlights included, so what was
already exposed well comes out flatter and paler. :func:`keep_highlights` puts it back: once per
image, at full resolution, after the model and after tiling (so no tile edge can show in it),

    out = w * input + (1 - w) * r * model_output,

where ``w`` rises smoothly from 0 to 1 as an edge-preserving smoothing of the input's grey rises
through [KEEP_FROM, KEEP_TO]: the well-exposed parts keep their own contrast and colour, the
model's lift and denoising land in the shadows. As in exposure fusion (Mertens et al. 2007) or
LIME's illumination map (Guo et al. 2017), the blend weight follows the input's exposure. The
model lifts a whole image by one target, so next to a kept lamp its glow, lifted, would outshine
the lamp; ``r`` <= 1 (:func:`order_gain`) holds the lifted parts under the kept ones, which also
keeps a night with lit windows darker than the model alone would.

Images are Nx3xHxW float tensors in [0, 1] (sRGB-encoded), as everywhere in lldiff; "grey" is
BT.601 luma of the encoded values (0.299 R + 0.587 G + 0.114 B, as metrics.GREY_WEIGHTS).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from lldiff_cli.darken import srgb_to_linear
from lldiff_cli.metrics import GREY_WEIGHTS
from lldiff_cli.tiling import TILE_EXPOSURE_POWER, shrink

# The figures' bands (issue 20): pixels already well exposed, and the shadows.
WELL_EXPOSED = (0.6, 0.98)
SHADOWS = 0.15
BLOCK = 16
# Below this mean chroma (CIE Lab C*ab) the well-exposed pixels are about grey (white clouds, a
# white lamp) and a ratio of chroma would be a ratio of noise: chroma_kept gives None.
MIN_CHROMA = 2.0

# The fusion: w is 0 where the smoothed input grey is below KEEP_FROM, 1 above KEEP_TO, a
# smoothstep between. The smoothing is a guided filter (He et al. 2013) of the grey by itself,
# a box of radius KEEP_RADIUS times the image's longer side (at least 2 pixels), and eps = KEEP_EPS
# (grey squared): edges with a contrast well above sqrt(eps) stay sharp in w (no halo around a
# backlit subject), finer texture is averaged (neighbouring pixels are not split between
# input and model).
KEEP_FROM, KEEP_TO = 0.35, 0.65
KEEP_RADIUS = 0.01
KEEP_EPS = 0.01
# Lifted shadows must not outshine kept highlights (order_gain): bins of the smoothed input grey,
# the least log-log slope of the tone curve below a kept highlight, the share of the pixels at
# which a kept highlight binds fully. The slope trades night against LOL: the median mean grey
# of benchmarks/tone.py's 10 night and star scenes was 0.44 with no bound, 0.39 / 0.31 / 0.24
# at 0.2 / 0.3 / 0.4; on the 25 our485 pairs with a kept window or lamp (whose ground truths
# clip it), PSNR was 18.85 dB with no bound, 18.7 at 0.2 or 0.3, 18.4 at 0.4 (19.55 without
# the fusion).
ORDER_BINS = 64
ORDER_GRID = 1024  # the bound's samples in s
ORDER_SLOPE = 0.3
ORDER_SHARE = 0.001
# The target the model is asked for, when the fusion will put the input's well-exposed parts
# back (shown_exposure): the model renders the whole image at one mean grey, and a region of
# it at about that times (region mean / image mean) ** TILE_EXPOSURE_POWER (the law tiling
# measured), so kept highlights, bright in the input, hold the shown part's lift down. The
# target is raised so that the shown part gets the lift it would get alone, up to SHOWN_CAP
# (LOL's ground truths, what the model learned to render, reach mean grey 0.75). Measured on
# benchmarks/tone.py's 25 scenes at realistic darkness (--darkness 0.35, where gamma 0.6 and
# CLAHE lift shadows 2.64x and 1.76x, the real sets' 2.71x and 1.73x): shadow lift 2.53 -> 3.81,
# contrast and chroma kept unchanged (0.97 / 0.83, 0.99 / 0.85), night and star scenes' mean
# grey 0.39 -> 0.40; at the full darkness 6.11 -> 6.94, 0.31 -> 0.31.
SHOWN_CAP = 0.75
SHOWN_SIDE = 600  # the shown part's mean is read on a copy at most this many pixels a side


def grey(rgb: torch.Tensor) -> torch.Tensor:
    """Nx3xHxW in [0, 1] -> Nx1xHxW BT.601 luma, in [0, 1]."""
    w = torch.tensor(GREY_WEIGHTS, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * w).sum(dim=1, keepdim=True)


# sRGB primaries to CIE XYZ, D65 white (IEC 61966-2-1), and the D65 white point.
_RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
               (0.2126729, 0.7151522, 0.0721750),
               (0.0193339, 0.1191920, 0.9503041))
_WHITE = (0.95047, 1.0, 1.08883)


def lab(rgb: torch.Tensor) -> torch.Tensor:
    """Nx3xHxW sRGB in [0, 1] -> Nx3xHxW CIE L*a*b* (D65): L* in [0, 100], a*, b* about [-128, 128].

    sRGB decoding (darken.srgb_to_linear), then XYZ, then CIE 1976 L*a*b*:
    f(t) = t ** (1/3) above (6/29) ** 3, else t / (3 (6/29) ** 2) + 4/29.
    """
    linear = srgb_to_linear(rgb.double())
    m = torch.tensor(_RGB_TO_XYZ, dtype=linear.dtype, device=linear.device)
    xyz = torch.einsum("ij,njhw->nihw", m, linear)
    xyz = xyz / torch.tensor(_WHITE, dtype=xyz.dtype, device=xyz.device).view(1, 3, 1, 1)
    delta = 6 / 29
    f = torch.where(xyz > delta ** 3, xyz.clamp(min=0) ** (1 / 3), xyz / (3 * delta ** 2) + 4 / 29)
    fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    return torch.cat([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1).to(rgb.dtype)


def chroma(rgb: torch.Tensor) -> torch.Tensor:
    """Nx3xHxW sRGB in [0, 1] -> Nx1xHxW CIE C*ab = sqrt(a*^2 + b*^2)."""
    ab = lab(rgb)[:, 1:]
    return ab.square().sum(dim=1, keepdim=True).sqrt()


def _check_pair(image: torch.Tensor, enhanced: torch.Tensor) -> None:
    if image.shape != enhanced.shape or image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"expected an input and its output, both 1x3xHxW; got {tuple(image.shape)} "
                         f"and {tuple(enhanced.shape)}")


def contrast_kept(image: torch.Tensor, enhanced: torch.Tensor, *, band: tuple[float, float] = WELL_EXPOSED,
                  block: int = BLOCK) -> Optional[float]:
    """The local contrast of the well-exposed parts that the output keeps (1: all of it).

    ``image`` and ``enhanced``: 1x3xHxW in [0, 1]. The image is cut into ``block`` x ``block``
    blocks (a remainder at the right and bottom is left out); in each block, the pixels whose
    input grey is in ``band`` are "well exposed", and a block counts when at least half of its
    pixels are. The figure is sum over those blocks of std(output grey) / the same sum of
    std(input grey), both std over the block's well-exposed pixels: a ratio of sums, so flat
    blocks (a clear sky, whose std is noise) weigh little. None when no block counts or their
    input is flat (sum of std below 1e-3 per block).
    """
    _check_pair(image, enhanced)
    h, w = image.shape[-2:]
    h, w = h - h % block, w - w % block
    if h == 0 or w == 0:
        return None

    def blocks(x: torch.Tensor) -> torch.Tensor:  # 1x1xHxW -> (H/b * W/b) x (b * b)
        x = x[0, 0, :h, :w].double().reshape(h // block, block, w // block, block)
        return x.permute(0, 2, 1, 3).reshape(-1, block * block)

    y_in, y_out = blocks(grey(image)), blocks(grey(enhanced))
    mask = ((y_in >= band[0]) & (y_in <= band[1])).double()
    count = mask.sum(dim=1)
    counted = count >= block * block / 2
    if not counted.any():
        return None
    mask, count = mask[counted], count[counted]

    def std(y: torch.Tensor) -> torch.Tensor:
        mean = (y * mask).sum(dim=1) / count
        return (((y - mean[:, None]) ** 2 * mask).sum(dim=1) / count).sqrt()

    before, after = std(y_in[counted]).sum(), std(y_out[counted]).sum()
    if before < 1e-3 * len(count):
        return None
    return float(after / before)


def chroma_kept(image: torch.Tensor, enhanced: torch.Tensor, *,
                band: tuple[float, float] = WELL_EXPOSED) -> Optional[float]:
    """The colour of the well-exposed parts that the output keeps (1: as saturated as the input).

    Over the pixels whose input grey is in ``band``: mean C*ab (CIE Lab chroma, :func:`chroma`)
    of the output / the same mean of the input. None when no pixel is in the band or their mean
    input chroma is under MIN_CHROMA (about grey: a ratio of noise).
    """
    _check_pair(image, enhanced)
    y = grey(image)
    mask = (y >= band[0]) & (y <= band[1])
    if not mask.any():
        return None
    before = chroma(image)[mask].double().mean()
    if before < MIN_CHROMA:
        return None
    return float(chroma(enhanced)[mask].double().mean() / before)


def shadow_lift(image: torch.Tensor, enhanced: torch.Tensor, *, below: float = SHADOWS) -> Optional[float]:
    """How far the shadows are brightened: over the pixels whose input grey is under ``below``,
    mean output grey / mean input grey. None when there are none, or they are all black."""
    _check_pair(image, enhanced)
    y = grey(image)
    mask = y < below
    if not mask.any():
        return None
    before = y[mask].double().mean()
    if before <= 1e-6:
        return None
    return float(grey(enhanced)[mask].double().mean() / before)


# --- the fusion ----------------------------------------------------------------------------


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """The mean of NxCxHxW ``x`` over a (2 radius + 1)^2 box around each pixel, the box cut at
    the image's border (so a border pixel averages fewer). Running sums, so the cost does not
    grow with the radius; in float32 they err by about 1e-5 of a grey level along an 8,000-pixel
    side, far below the guided filter's eps (and MPS has no float64)."""
    out = x.float()
    for dim in (2, 3):
        n = out.shape[dim]
        sums = torch.cumsum(out, dim=dim)
        sums = torch.cat([torch.zeros_like(sums.narrow(dim, 0, 1)), sums], dim=dim)
        idx = torch.arange(n, device=x.device)
        lo, hi = (idx - radius).clamp(min=0), (idx + radius).clamp(max=n - 1) + 1
        shape = [1, 1, 1, 1]
        shape[dim] = n
        count = (hi - lo).to(out.dtype).view(shape)
        out = (sums.index_select(dim, hi) - sums.index_select(dim, lo)) / count
    return out.to(x.dtype)


def guided_filter(guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float, step: int = 1) -> torch.Tensor:
    """He, Sun, Tang, "Guided Image Filtering" (TPAMI 2013), Algorithm 1, for one-channel guide
    and source (Nx1xHxW): a = cov(I, p) / (var(I) + eps), b = mean(p) - a mean(I) per box of
    ``radius`` (eqs. 5-6), q = mean(a) I + mean(b) (eq. 8). With ``step`` > 1, the fast guided
    filter (He and Sun 2015, arXiv:1505.00996): a and b on copies shrunk ``step`` times (box
    radius / step), their means enlarged bilinearly, and q formed with the full-size guide, so
    edges stay as sharp at a cost step**2 times smaller."""
    h, w = guide.shape[-2:]
    small_i, small_p = guide, source
    if step > 1:
        size = (math.ceil(h / step), math.ceil(w / step))
        small_i, small_p = (F.interpolate(x, size=size, mode="area") for x in (guide, source))
        radius = max(1, round(radius / step))
    mean_i, mean_p = box_mean(small_i, radius), box_mean(small_p, radius)
    cov = box_mean(small_i * small_p, radius) - mean_i * mean_p
    var = box_mean(small_i * small_i, radius) - mean_i * mean_i
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    mean_a, mean_b = box_mean(a, radius), box_mean(b, radius)
    if step > 1:
        mean_a, mean_b = (F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False) for x in (mean_a, mean_b))
    return mean_a * guide + mean_b


def smoothstep(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """0 below ``lo``, 1 above ``hi``, 3t^2 - 2t^3 between (t = (x - lo) / (hi - lo)): no step."""
    t = ((x - lo) / (hi - lo)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def _smooth(guide: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``source``'s local level (Nx1xHxW) as the fusion sees it: the guided filter of KEEP_RADIUS
    and KEEP_EPS with the input's grey ``guide``; a and b on a grid of radius / 4 pixels (He and
    Sun's choice for the fast guided filter)."""
    radius = max(2, round(KEEP_RADIUS * max(guide.shape[-2:])))
    return guided_filter(guide, source, radius, KEEP_EPS, step=max(1, radius // 4))


def highlight_weight(image: torch.Tensor) -> torch.Tensor:
    """Nx3xHxW in [0, 1] -> Nx1xHxW in [0, 1]: how much of the input :func:`keep_highlights`
    keeps at each pixel (the module doc, and KEEP_* for the constants)."""
    y = grey(image.float())
    return smoothstep(_smooth(y, y), KEEP_FROM, KEEP_TO)


def order_gain(level: torch.Tensor, weight: torch.Tensor, lifted: torch.Tensor) -> torch.Tensor:
    """The factor (Nx1xHxW in [0, 1]) on the model's part of the fusion that keeps lifted
    shadows from outshining kept highlights.

    ``level``: the input's smoothed grey s, ``weight``: w, ``lifted``: the model output's smoothed
    grey m, each Nx1xHxW. Per image, the pixels are binned by s (ORDER_BINS bins); a bin whose
    mean w is at least 1/2 holds kept highlights: an anchor a, at mean s_a and fused level
    T_a = mean(w s + (1 - w) m). A pixel below it must stay under T_a (s / s_a) ** ORDER_SLOPE: as
    a tone curve, at least ORDER_SLOPE steep in log-log up to each anchor, so order and some
    contrast survive (an anchor of fewer than ORDER_SHARE of the pixels binds less: its bound is
    divided by its share / ORDER_SHARE). The bound U(s), the least over the anchors above s, is
    a non-decreasing function of s; a pixel whose fused level w s + (1 - w) m is above it gets
    the factor (U(s) - w s) / ((1 - w) m), others 1. Images without kept highlights (LOL's)
    get 1 everywhere.
    """
    out = torch.ones_like(level)
    # float32 throughout (MPS has no float64): a bin's mean is off by far less than a grey level.
    grid = torch.linspace(0, 1, ORDER_GRID + 1, device=level.device)
    for i in range(level.shape[0]):
        s, w, m = (x[i].float() for x in (level, weight, lifted))
        k = (s * ORDER_BINS).long().clamp(0, ORDER_BINS - 1).flatten()
        count = torch.bincount(k, minlength=ORDER_BINS).float()

        def mean_of(x: torch.Tensor) -> torch.Tensor:  # per bin
            sums = torch.zeros(ORDER_BINS, device=x.device).index_add_(0, k, x.flatten())
            return sums / count.clamp(min=1)

        mean_s, mean_w, fused = mean_of(s), mean_of(w), mean_of(w * s + (1 - w) * m)
        anchors = ((count > 0) & (mean_w >= 0.5)).nonzero().flatten().tolist()
        if not anchors:
            continue
        strength = (count / (ORDER_SHARE * s.numel())).clamp(max=1)
        bound = torch.full_like(grid, math.inf)
        for a in anchors:
            limit = fused[a] * (grid.clamp(min=1e-4) / mean_s[a]) ** ORDER_SLOPE / strength[a]
            bound = torch.where(grid < mean_s[a], torch.minimum(bound, limit), bound)
        bound = bound.clamp(max=2.0)  # above every level: no anchor above (2 keeps the interpolation finite)
        # U(s), linear between the grid's points (a non-decreasing function stays one).
        x = s.clamp(0, 1) * ORDER_GRID
        j = x.floor().long().clamp(max=ORDER_GRID - 1)
        t = x - j
        u = bound[j] * (1 - t) + bound[j + 1] * t
        model_part = (1 - w) * m
        factor = ((u - w * s) / model_part.clamp(min=1e-6)).clamp(0, 1)
        out[i] = torch.where(w * s + model_part > u, factor, torch.ones_like(factor)).to(out.dtype)
    return out


def shown_exposure(image: torch.Tensor, exposure: float) -> float:
    """The target mean grey to ask the model for, given the target ``exposure`` decided for the
    whole image (1x3xHxW in [0, 1]), when :func:`keep_highlights` will follow: ``exposure *
    (m / m_shown) ** TILE_EXPOSURE_POWER``, m the image's mean grey and m_shown that of the part
    the fusion shows of the model (weights 1 - w), at most SHOWN_CAP and never below
    ``exposure``. An image with nothing kept (LOL's) keeps ``exposure``."""
    small = shrink(image.float(), SHOWN_SIDE)
    y = grey(small)
    shown = 1 - highlight_weight(small)
    m, m_shown = float(y.mean()), float((y * shown).sum() / shown.sum().clamp(min=1e-6))
    if float(shown.mean()) < 1e-3 or m_shown <= 1e-4 or m_shown >= m:
        return exposure
    return max(exposure, min(SHOWN_CAP, exposure * (m / m_shown) ** TILE_EXPOSURE_POWER))


def keep_highlights(image: torch.Tensor, enhanced: torch.Tensor) -> torch.Tensor:
    """The model's output with the input's well-exposed parts put back (module doc).

    ``image``: the input, ``enhanced``: the model's output, both Nx3xHxW in [0, 1] on one
    device. Returns w * image + (1 - w) * r * enhanced, w = :func:`highlight_weight` (image) and
    r = :func:`order_gain`, in ``enhanced``'s dtype.
    """
    if image.shape != enhanced.shape:
        raise ValueError(f"input {tuple(image.shape)} and output {tuple(enhanced.shape)} differ in shape")
    image, model = image.float(), enhanced.float()
    y = grey(image)
    level = _smooth(y, y)
    w = smoothstep(level, KEEP_FROM, KEEP_TO)
    r = order_gain(level, w, _smooth(y, grey(model)))
    return (w * image + (1 - w) * r * model).clamp(0, 1).to(enhanced.dtype)
