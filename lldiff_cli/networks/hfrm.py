"""HFRM, the high-frequency restoration module of DiffLL (Jiang et al., TOG 2023, sec. 3.3).

It restores the three detail bands of one wavelet level of a dark image. Our version:

* depthwise-separable convolutions throughout (cheap at full band resolution);
* cross-attention that lets the vertical and horizontal bands complement the diagonal one:
  queries from the diagonal (HH) features, keys and values from the LH + HL features. The
  attention runs across channels (a CxC map, Restormer-style), so its cost is linear in
  the number of pixels;
* a body of residual blocks whose dilations rise and fall (1, 2, 4, 2, 1 by default), so
  the receptive field grows without the gridding artefacts of stacked equal dilations;
* optionally (``scales`` > 0) a coarse-to-fine context path before that body: stride-2
  convolutions down to 1/2, 1/4, ... of the band with plain 3x3 residual blocks at twice
  the width per scale. Dark images' detail bands are mostly noise; telling edge from noise
  needs more context than the dilated body sees (alone, ``scales: 2`` lifted held-out SSIM a
  little, 0.795 to 0.799; with ``gain`` below it is part of the shipped model, see
  models/lldiff-default.yaml).

A guide (for example the restored low band at this level and the dark one) tells it how
much to amplify: the detail of a dark image is dark too.

With ``gain`` (``hfrm.gain: true``) the caller passes that amplification as a map (the ratio of
the restored to the dark local brightness, model.detail_gain): the module then sees the dark
bands scaled to the output's brightness and returns ``gate * amplified + residual``, a learned
shrinkage with ``gate`` in (0, 1) per coefficient. Where the dark image is clean the gate opens
and its detail passes through sharp; where it is noise the gate closes and the residual fills
in. Without it the module must learn the amplification itself, and regresses to blur.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DSConv(nn.Module):
    """Depthwise 3x3 (optionally dilated) then pointwise 1x1."""

    def __init__(self, *, in_ch: int, out_ch: int, dilation: int = 1):
        super().__init__()
        self.depth = nn.Conv2d(in_ch, in_ch, 3, padding=dilation, dilation=dilation, groups=in_ch)
        self.point = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point(self.depth(x))


class DSResBlock(nn.Module):
    def __init__(self, *, channels: int, dilation: int):
        super().__init__()
        self.conv1 = DSConv(in_ch=channels, out_ch=channels, dilation=dilation)
        self.conv2 = DSConv(in_ch=channels, out_ch=channels, dilation=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.conv1(x)))


class ChannelCrossAttention(nn.Module):
    """Queries from ``x`` attend over the channels of ``context`` (transposed attention)."""

    def __init__(self, *, channels: int, heads: int = 2):
        super().__init__()
        self.heads = heads if channels % heads == 0 else 1
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Conv2d(channels, 2 * channels, 1)
        self.temperature = nn.Parameter(torch.ones(self.heads, 1, 1))
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self.q(x).reshape(n, self.heads, c // self.heads, h * w)
        k, v = self.kv(context).reshape(n, 2, self.heads, c // self.heads, h * w).unbind(1)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-1, -2) * self.temperature).softmax(dim=-1)
        return x + self.proj((attn @ v).reshape(n, c, h, w))


class ConvResBlock(nn.Module):
    """Two plain 3x3 convolutions with a residual connection (the coarse scales can afford them)."""

    def __init__(self, *, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.conv1(x)))


class CoarseContext(nn.Module):
    """x + (down 2x -> residual blocks -> [the next coarser scale] -> residual block -> up 2x)."""

    def __init__(self, *, channels: int, scales: int, blocks: int = 2):
        super().__init__()
        inner = 2 * channels
        self.down = nn.Conv2d(channels, inner, 3, stride=2, padding=1)
        self.encode = nn.Sequential(*[ConvResBlock(channels=inner) for _ in range(blocks)])
        self.coarser = CoarseContext(channels=inner, scales=scales - 1, blocks=blocks) if scales > 1 else None
        self.decode = ConvResBlock(channels=inner)
        self.up = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.encode(self.down(x))
        if self.coarser is not None:
            y = self.coarser(y)
        y = self.up(self.decode(y))
        return x + F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class HFRM(nn.Module):
    """high: Nx3CxHxW bands [LH, HL, HH] (C channels each), guide: NxGxHxW -> restored Nx3CxHxW."""

    def __init__(self, *, image_channels: int = 3, guide_channels: int = 6, width: int = 32,
                 dilations: tuple[int, ...] = (1, 2, 4, 2, 1), heads: int = 2, scales: int = 0,
                 gain: bool = False):
        super().__init__()
        c = image_channels
        self.c = c
        self.embed_hv = DSConv(in_ch=2 * c + guide_channels, out_ch=width)
        self.embed_d = DSConv(in_ch=c + guide_channels, out_ch=width)
        self.cross = ChannelCrossAttention(channels=width, heads=heads)
        self.fuse = nn.Conv2d(2 * width, width, 1)
        if scales < 0:
            raise ValueError(f"hfrm scales must be 0 or more, got {scales}")
        self.context = CoarseContext(channels=width, scales=scales) if scales else None
        self.body = nn.Sequential(*[DSResBlock(channels=width, dilation=d) for d in dilations])
        self.gain = gain
        # Gated: residual and gate logits; the gate starts nearly shut (sigmoid(-4) = 0.018).
        self.out = nn.Conv2d(width, (6 if gain else 3) * c, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        if gain:
            nn.init.constant_(self.out.bias[3 * c:], -4.0)

    def forward(self, high: torch.Tensor, guide: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
        """``gain`` (Nx1xHxW) is required when the module was built with ``gain=True``."""
        c = self.c
        if self.gain:
            if gain is None:
                raise ValueError("this HFRM amplifies by a gain map: pass gain")
            high = high * gain
        hv = self.embed_hv(torch.cat([high[:, :2 * c], guide], dim=1))
        d = self.embed_d(torch.cat([high[:, 2 * c:], guide], dim=1))
        d = self.cross(d, hv)
        feats = self.fuse(torch.cat([hv, d], dim=1))
        if self.context is not None:
            feats = self.context(feats)
        feats = self.body(feats)
        out = self.out(feats)
        if self.gain:
            return torch.sigmoid(out[:, 3 * c:]) * high + out[:, :3 * c]
        return high + out
