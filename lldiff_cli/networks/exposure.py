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

:class:`ExposureMap` predicts the ground truth's brightness where it is, not only its mean: a
small encoder-decoder maps the dark band to the log grey levels of the ground truth's band at
half its resolution (fitted pixel by pixel, lldiff_cli.calibrate.fit_exposure_map, so that every
pixel of a training pair is a target, not one number per image), and its estimate is that map's
mean. On LOL four of them knew held-out shots of seen scenes better than four grid estimators and
new scenes worse; joined to those (``maps`` in an ExposureEnsemble) they cost 0.31 dB over a
4-fold cross-validation of seen scenes for +0.002 SSIM, so the shipped `lol` model does without
them (docs/lol-model.md, sessions 16 and 17).
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


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.SiLU(), nn.Conv2d(cout, cout, 3, 1, 1), nn.SiLU())


class ExposureMap(nn.Module):
    """dark: NxCxHxW in [-1, 1] -> N estimates in (0, 1), the mean of :meth:`log_map`'s levels.

    It reads the band's log levels both as they are and less the image's mean log (how dark the
    shot is, and what is in it), down four stride-2 stages with the deepest one's global mean
    added back everywhere (the whole scene's context), and up again with skip connections."""

    def __init__(self, *, channels: int = 3, width: int = 16):
        super().__init__()
        w = width
        self.down = nn.ModuleList([_block(2 * channels, w, 2), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 2),
                                   _block(2 * w, 4 * w, 2)])
        self.context = nn.Linear(4 * w, 4 * w)
        self.up = nn.ModuleList([_block(8 * w + 2 * w, 2 * w), _block(2 * w + 2 * w, 2 * w), _block(2 * w + w, w)])
        self.out = nn.Conv2d(w, channels, 1)

    def log_map(self, dark: torch.Tensor) -> torch.Tensor:
        """Nx C x ceil(H/2) x ceil(W/2): the log of the ground truth's predicted levels in (0, 1)."""
        log = torch.log(((dark + 1) / 2).clamp(min=1 / 255))
        skips, x = [], torch.cat([log, log - log.mean(dim=(1, 2, 3), keepdim=True)], dim=1)
        for stage in self.down:
            x = stage(x)
            skips.append(x)
        x = torch.cat([x, self.context(x.mean(dim=(2, 3)))[:, :, None, None].expand_as(x)], dim=1)
        for stage, skip in zip(self.up, reversed(skips[:-1])):
            x = stage(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear"), skip], dim=1))
        return F.logsigmoid(self.out(x) + 1)  # levels below 1; +1 starts them near 0.5

    def forward(self, dark: torch.Tensor) -> torch.Tensor:
        return self.log_map(dark).exp().mean(dim=(1, 2, 3))


class ExposureEnsemble(nn.Module):
    """``members`` ExposureNets with the same arguments (at least one: the first one's ``grid`` is
    the ensemble's) and ``maps`` ExposureMaps of ``map_width``; their estimates' geometric mean."""

    def __init__(self, *, members: int, maps: int = 0, map_width: int = 16, channels: int = 3, **kwargs):
        super().__init__()
        if members < 1:
            raise ValueError(f"exposure members must be at least 1, got {members}")
        if maps < 0:
            raise ValueError(f"exposure maps must be at least 0, got {maps}")
        if members + maps < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {members + maps}")
        self.members = nn.ModuleList([ExposureNet(channels=channels, **kwargs) for _ in range(members)]
                                     + [ExposureMap(channels=channels, width=map_width) for _ in range(maps)])

    @property
    def grid(self) -> tuple[int, int] | None:
        return self.members[0].grid

    def forward(self, dark: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(dark).log() for m in self.members]).mean(dim=0).exp()


def exposure_estimator(*, members: int = 1, maps: int = 0, map_width: int = 16, **kwargs) -> nn.Module:
    """The estimator a model's ``exposure`` config describes: one ExposureNet (``members`` 1, no
    ``maps``) or an ExposureEnsemble of ``members`` ExposureNets and ``maps`` ExposureMaps."""
    if members == 1 and maps == 0:
        return ExposureNet(**kwargs)
    return ExposureEnsemble(members=members, maps=maps, map_width=map_width, **kwargs)


def estimators(net: nn.Module) -> list[nn.Module]:
    """The single estimators inside ``net`` (itself, or an ensemble's members), to fit one by one."""
    return list(net.members) if isinstance(net, ExposureEnsemble) else [net]
