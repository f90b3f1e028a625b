"""The exposure estimator behind ``--exposure auto``.

It predicts the mean grey level in (0, 1) that a well-lit version of a dark image would
have, from a few strided convolutions pooled over the whole image (mean and spread of each
feature, so the estimate does not depend on the image's size) plus the band's own colour
statistics. In training its target is the ground truth's mean; the rest of the model is
conditioned on the true value there and on this estimate (or the user's number) at inference.
"""

from __future__ import annotations

import torch
from torch import nn


class ExposureNet(nn.Module):
    """dark: NxCxHxW in [-1, 1] (any size >= 8x8) -> N estimates in (0, 1)."""

    def __init__(self, *, channels: int = 3, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
        )
        self.head = nn.Sequential(nn.Linear(4 * width + 2 * channels, 64), nn.SiLU(), nn.Linear(64, 1))

    def forward(self, dark: torch.Tensor) -> torch.Tensor:
        f = self.features(dark).flatten(2)
        stats = [f.mean(dim=2), f.std(dim=2, unbiased=False),
                 dark.mean(dim=(2, 3)), dark.flatten(2).std(dim=2, unbiased=False)]
        return torch.sigmoid(self.head(torch.cat(stats, dim=1))).squeeze(1)
