"""A conditional UNet (DDPM / SR3 style) that predicts from a noisy state and its conditions.

The conditions enter two ways: images are concatenated to the noisy input (SR3 / Palette),
and scalars (the timestep, the target exposure) are embedded sinusoidally and added to every
residual block as a scale and shift (improved-diffusion's ``use_scale_shift_norm``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """N values -> Nxdim features (Transformer / DDPM timestep embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device, dtype=torch.float32) / half)
    args = values.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    def __init__(self, *, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over spatial positions (used at coarse levels only)."""

    def __init__(self, *, channels: int, heads: int = 4):
        super().__init__()
        self.heads = heads if channels % heads == 0 else 1
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        # Contiguous tokens x channels: with the transposed views, PyTorch's CPU attention falls back
        # to its unfused math path, 7x slower at a 640-pixel tile's 1,600 tokens (2 cores).
        out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class UNet(nn.Module):
    """in: NxCinxHxW (H, W divisible by 2**(len(channel_mults)-1)), t: N, scalars: NxS -> NxCoutxHxW."""

    def __init__(self, *, in_channels: int, out_channels: int, width: int = 32,
                 channel_mults: tuple[int, ...] = (1, 2, 2), blocks_per_level: int = 1,
                 attention_levels: tuple[int, ...] = (), dropout: float = 0.0, num_scalars: int = 0):
        super().__init__()
        self.num_scalars = num_scalars
        self.multiple = 2 ** (len(channel_mults) - 1)
        emb_dim = 4 * width
        self.width = width
        self.time_mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.scalar_mlp = (nn.Sequential(nn.Linear(width * num_scalars, emb_dim), nn.SiLU(),
                                         nn.Linear(emb_dim, emb_dim)) if num_scalars else None)
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.down = nn.ModuleList()
        chans = [width]
        ch = width
        for level, mult in enumerate(channel_mults):
            for _ in range(blocks_per_level):
                block = nn.ModuleList([ResBlock(in_ch=ch, out_ch=width * mult, emb_dim=emb_dim, dropout=dropout)])
                ch = width * mult
                if level in attention_levels:
                    block.append(SelfAttention(channels=ch))
                self.down.append(block)
                chans.append(ch)
            if level < len(channel_mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                chans.append(ch)
        last = len(channel_mults) - 1
        self.mid = nn.ModuleList([ResBlock(in_ch=ch, out_ch=ch, emb_dim=emb_dim, dropout=dropout),
                                  SelfAttention(channels=ch) if last in attention_levels else nn.Identity(),
                                  ResBlock(in_ch=ch, out_ch=ch, emb_dim=emb_dim, dropout=dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for i in range(blocks_per_level + 1):
                block = nn.ModuleList([ResBlock(in_ch=ch + chans.pop(), out_ch=width * mult,
                                                emb_dim=emb_dim, dropout=dropout)])
                ch = width * mult
                if level in attention_levels:
                    block.append(SelfAttention(channels=ch))
                if level > 0 and i == blocks_per_level:
                    block.append(Upsample(channels=ch))
                self.up.append(block)
        self.out = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, scalars: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        assert h % self.multiple == 0 and w % self.multiple == 0, (
            f"UNet input size {h}x{w} must be divisible by {self.multiple}")
        # The embeddings are made in float32 and take the weights' dtype (float16 after .half()).
        emb = self.time_mlp(sinusoidal_embedding(t, self.width).to(x.dtype))
        if self.scalar_mlp is not None:
            assert scalars is not None and scalars.shape[1] == self.num_scalars, (
                f"UNet expects {self.num_scalars} scalar conditions per sample")
            # Scalars in [0, 1] are spread over the embedding's range like timesteps in [0, 1000).
            feats = torch.cat([sinusoidal_embedding(scalars[:, i] * 1000, self.width)
                               for i in range(self.num_scalars)], dim=1).to(x.dtype)
            emb = emb + self.scalar_mlp(feats)
        h = self.stem(x)
        skips = [h]
        for block in self.down:
            for layer in block:
                h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for block in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            for layer in block:
                h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return self.out(h)


class Upsample(nn.Module):
    def __init__(self, *, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
