"""The exposure estimator behind ``--exposure auto``.

It predicts the mean grey level in (0, 1) that a well-lit version of a dark image would
have, from a few strided convolutions pooled over the whole image (mean and spread of each
feature, so the estimate does not depend on the image's size) plus the band's own colour
statistics. In training its target is the ground truth's mean; the rest of the model is
conditioned on the true value there and on this estimate (or the user's number) at inference.

With a ``grid`` the features are also pooled to a coarse grid of cells (``grid`` = rows, columns,
whatever the image's size) that the head reads in place: the layout of a scene, not only its
statistics. On LOL, where the ground truth's brightness is a property of the scene, this lets
the estimator recognise scenes it was trained on (see scripts/default_model.py calibrate).
The grid estimator's convolutions read the image's log grey levels less their mean, so that
a scene looks the same however dark its shot (its brightness still reaches the head through
the band's own statistics).

:class:`ExposureEnsemble` is several such estimators, fitted from different seeds, whose
estimate is the geometric mean of theirs: one grid estimator's miss on a scene it was fitted on
varies from seed to seed, and four of them averaged missed 7% less on held-out LOL shots of seen
scenes (benchmarks/brightness.py --seeds; docs/lol-model.md).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ExposureNet(nn.Module):
    """dark: NxCxHxW in [-1, 1] (any size >= 8x8) -> N estimates in (0, 1)."""

    def __init__(self, *, channels: int = 3, width: int = 16, grid: tuple[int, int] | None = None,
                 grid_channels: int = 8):
        super().__init__()
        if grid is not None and (len(grid) != 2 or min(grid) < 1):
            raise ValueError(f"grid must be (rows, columns) of at least 1, got {grid}")
        self.grid = tuple(grid) if grid is not None else None
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
        )
        cells = 0
        if self.grid is not None:
            self.squeeze = nn.Conv2d(2 * width, grid_channels, 1)
            cells = grid_channels * self.grid[0] * self.grid[1]
        self.head = nn.Sequential(nn.Linear(4 * width + 2 * channels + cells, 64), nn.SiLU(), nn.Linear(64, 1))

    def forward(self, dark: torch.Tensor) -> torch.Tensor:
        maps = self.features(self.normalise(dark) if self.grid is not None else dark)
        f = maps.flatten(2)
        stats = [f.mean(dim=2), f.std(dim=2, unbiased=False),
                 dark.mean(dim=(2, 3)), dark.flatten(2).std(dim=2, unbiased=False)]
        if self.grid is not None:
            stats.append(F.adaptive_avg_pool2d(self.squeeze(maps), self.grid).flatten(1))
        return torch.sigmoid(self.head(torch.cat(stats, dim=1))).squeeze(1)

    @staticmethod
    def normalise(dark: torch.Tensor) -> torch.Tensor:
        """Band in [-1, 1] -> log of its [0, 1] levels (floored at 1/255) less each image's mean log."""
        log = torch.log(((dark + 1) / 2).clamp(min=1 / 255))
        return log - log.mean(dim=(1, 2, 3), keepdim=True)


class ExposureEnsemble(nn.Module):
    """``members`` ExposureNets with the same arguments; their estimates' geometric mean."""

    def __init__(self, *, members: int, **kwargs):
        super().__init__()
        if members < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {members}")
        self.members = nn.ModuleList([ExposureNet(**kwargs) for _ in range(members)])

    @property
    def grid(self) -> tuple[int, int] | None:
        return self.members[0].grid

    def forward(self, dark: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(dark).log() for m in self.members]).mean(dim=0).exp()


def exposure_estimator(*, members: int = 1, **kwargs) -> nn.Module:
    """The estimator a model's ``exposure`` config describes: one ExposureNet (``members`` 1) or
    an ExposureEnsemble of ``members``."""
    if members < 1:
        raise ValueError(f"exposure members must be at least 1, got {members}")
    return ExposureNet(**kwargs) if members == 1 else ExposureEnsemble(members=members, **kwargs)


def estimators(net: nn.Module) -> list[ExposureNet]:
    """The single estimators inside ``net`` (itself, or an ensemble's members), to fit one by one."""
    return list(net.members) if isinstance(net, ExposureEnsemble) else [net]
