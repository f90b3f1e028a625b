"""Orthonormal 2-D Haar wavelet transform in torch (pywavelets ``dwt2(x, 'haar')`` is the oracle).

For each 2x2 block ``[[a, b], [c, d]]`` (a top-left, d bottom-right) one level gives

    LL = (a + b + c + d) / 2      pywt cA: the local mean, scaled by 2
    LH = (a + b - c - d) / 2      pywt cH: top minus bottom  -> horizontal edges
    HL = (a - b + c - d) / 2      pywt cV: left minus right  -> vertical edges
    HH = (a - b - c + d) / 2      pywt cD: diagonal

The transform is orthonormal, so the inverse is its transpose and the round trip is
exact to float precision; every operation is differentiable. Heights and widths must
be divisible by ``2 ** levels`` (``tiling.pad_to_multiple`` does that for images).
"""

from __future__ import annotations

import torch


def dwt2(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One level. x: Nx C x H x W (H, W even) -> (LL: NxCxH/2xW/2, high: Nx3CxH/2xW/2).

    ``high`` stacks the bands as [LH, HL, HH], each C channels: ``high[:, :C]`` is LH.
    """
    n, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"Haar DWT needs even height and width, got {h}x{w}")
    a = x[..., 0::2, 0::2]
    b = x[..., 0::2, 1::2]
    cc = x[..., 1::2, 0::2]
    d = x[..., 1::2, 1::2]
    ll = (a + b + cc + d) * 0.5
    lh = (a + b - cc - d) * 0.5
    hl = (a - b + cc - d) * 0.5
    hh = (a - b - cc + d) * 0.5
    return ll, torch.cat([lh, hl, hh], dim=1)


def idwt2(ll: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dwt2`: (NxCxhxw, Nx3Cxhxw) -> NxCx2hx2w."""
    c = ll.shape[1]
    if high.shape[1] != 3 * c or high.shape[-2:] != ll.shape[-2:]:
        raise ValueError(f"band shapes disagree: LL {tuple(ll.shape)}, high {tuple(high.shape)}")
    lh, hl, hh = high[:, :c], high[:, c:2 * c], high[:, 2 * c:]
    a = (ll + lh + hl + hh) * 0.5
    b = (ll + lh - hl - hh) * 0.5
    cc = (ll - lh + hl - hh) * 0.5
    d = (ll - lh - hl + hh) * 0.5
    n, _, h, w = ll.shape
    top = torch.stack([a, b], dim=-1).reshape(n, c, h, 2 * w)
    bottom = torch.stack([cc, d], dim=-1).reshape(n, c, h, 2 * w)
    return torch.stack([top, bottom], dim=-2).reshape(n, c, 2 * h, 2 * w)


def wavedec2(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """K levels. Returns (LL_K, [high_1, ..., high_K]); high_1 is the finest (H/2 x W/2)."""
    highs = []
    ll = x
    for _ in range(levels):
        ll, high = dwt2(ll)
        highs.append(high)
    return ll, highs


def waverec2(ll: torch.Tensor, highs: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`wavedec2`."""
    for high in reversed(highs):
        ll = idwt2(ll, high)
    return ll
