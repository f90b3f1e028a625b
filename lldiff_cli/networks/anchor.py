"""The anchor network: a fast, deterministic estimate of the enhanced low band.

Its output is the DRDA anchor (AnlightenDiff): the forward process slides towards it and
sampling starts from it, so the diffusion only has to add what a regression misses. It is
told the target exposure (mean grey level in (0, 1)), so the anchor follows the knob.
"""

from __future__ import annotations

import torch
from torch import nn

from lldiff_cli.networks.unet import UNet


class AnchorNet(nn.Module):
    """dark: NxCxHxW in [-1, 1], exposure: N in (0, 1) -> anchor NxCxHxW in [-1, 1]."""

    def __init__(self, *, channels: int = 3, width: int = 16, channel_mults: tuple[int, ...] = (1, 2, 4),
                 blocks_per_level: int = 1):
        super().__init__()
        self.net = UNet(in_channels=channels, out_channels=channels, width=width, channel_mults=channel_mults,
                        blocks_per_level=blocks_per_level, num_scalars=1)
        self.multiple = self.net.multiple

    def forward(self, dark: torch.Tensor, exposure: torch.Tensor) -> torch.Tensor:
        t = torch.zeros(dark.shape[0], device=dark.device, dtype=torch.long)
        return dark + self.net(dark, t, exposure[:, None])
