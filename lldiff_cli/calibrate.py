"""Fitting the exposure estimator (``--exposure auto``) on whole images.

Training sees crops; the estimator is asked, at inference, for the brightness of a whole image
(shrunk to at most 600 pixels a side, :meth:`WaveletDiffusion.auto_exposure`). So once the rest
of a model is trained, its estimator is refitted here on whole training images: the low band of
each dark image in, the ground truth's mean grey out (squared error of the log, so that a miss
by a factor counts the same at every brightness); an ExposureMap member is fitted to the ground
truth's band pixel by pixel (:func:`fit_exposure_map`). Pure: tensors in, the network's weights
updated in place; the caller picks the images (scripts/default_model.py calibrate).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lldiff_cli.networks.exposure import ExposureMap


def fit_exposure(net: nn.Module, bands: list[torch.Tensor], targets: torch.Tensor, *, iterations: int = 300,
                 batch: int = 32, lr: float = 1e-3, jitter: float = 0.0, seed: int = 0) -> list[float]:
    """Fit ``net`` (band Nx3xhxw in [-1, 1] -> N values in (0, 1)) to ``targets`` (len(bands),).

    ``bands``: 1x3xhxw each, any sizes (a batch takes images of one size together). ``jitter``:
    each draw sees a random crop keeping at least 1 - jitter of each side, and every other
    iteration a left-right mirror, so that a scene is recognised from a shifted view too.
    Returns the loss of each iteration.
    """
    if not bands or len(bands) != len(targets):
        raise ValueError(f"need one target per band, got {len(bands)} bands and {len(targets)} targets")
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def loss(group, views):
        return ((net(views[0]).log() - targets[group].log()) ** 2).sum()

    return _fit(net, opt, None, [bands], loss, iterations=iterations, batch=batch, jitter=jitter, seed=seed)


def fit_exposure_map(net: ExposureMap, bands: list[torch.Tensor], truths: list[torch.Tensor], *,
                     iterations: int = 3000, batch: int = 16, lr: float = 1e-3, jitter: float = 0.1,
                     seed: int = 0) -> list[float]:
    """Fit an ExposureMap pixel by pixel: each dark band (1x3xhxw in [-1, 1]) to the ground truth's
    band of the same size in [0, 1] (``truths``), by the mean absolute error of the log levels
    (the truth averaged down to the map's resolution, floored at 1/255) plus the squared error of
    the log of the mean, the number the estimate is. AdamW with a one-cycle learning rate peaking
    at ``lr``, gradients clipped at norm 1; crops and mirrors as :func:`fit_exposure`."""
    if not bands or len(bands) != len(truths):
        raise ValueError(f"need one truth per band, got {len(bands)} bands and {len(truths)} truths")
    for band, truth in zip(bands, truths):
        if band.shape != truth.shape:
            raise ValueError(f"a truth must be its band's size, got {tuple(truth.shape)} for {tuple(band.shape)}")
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=iterations, pct_start=0.1)

    def loss(group, views):
        dark, truth = views
        predicted = net.log_map(dark)
        truth = F.adaptive_avg_pool2d(truth, predicted.shape[-2:])
        pixels = (predicted - truth.clamp(min=1 / 255).log()).abs().mean(dim=(1, 2, 3))
        mean = predicted.exp().mean(dim=(1, 2, 3)).log() - truth.mean(dim=(1, 2, 3)).log()
        return (pixels + mean ** 2).sum()

    return _fit(net, opt, schedule, [bands, truths], loss, iterations=iterations, batch=batch, jitter=jitter,
                seed=seed, clip=1.0)


def _fit(net: nn.Module, opt, schedule, images: list[list[torch.Tensor]], loss, *, iterations: int, batch: int,
         jitter: float, seed: int, clip: float | None = None) -> list[float]:
    """The loop both fits share: ``batch`` random images a draw (index lists into ``images``, the
    aligned tensors of each image), cropped alike (one crop size a draw, keeping at least
    1 - ``jitter`` of each side; each image its own corner, shared by its aligned tensors), every
    other draw mirrored; ``loss(group, views)`` sums over a group of one size. Returns each
    iteration's mean loss."""
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    gen = torch.Generator().manual_seed(seed)
    first = images[0]
    net.train()
    losses = []
    for it in range(iterations):
        idx = torch.randint(len(first), (batch,), generator=gen).tolist()
        keep = 1 - jitter * float(torch.rand((), generator=gen))
        same: dict[tuple, list[int]] = {}
        for i in idx:
            same.setdefault(tuple(first[i].shape), []).append(i)
        total = torch.zeros(())
        for shape, group in same.items():
            h, w = shape[-2:]
            ch, cw = max(1, round(h * keep)), max(1, round(w * keep))
            corners = [(int(torch.randint(h - ch + 1, (), generator=gen)), int(torch.randint(w - cw + 1, (), generator=gen)))
                       for _ in group]
            views = [torch.cat([kind[i][..., y:y + ch, x:x + cw] for i, (y, x) in zip(group, corners)])
                     for kind in images]
            views = [v.flip(-1) if it % 2 else v for v in views]
            total = total + loss(group, views) / len(idx)
        opt.zero_grad()
        total.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        if schedule is not None:
            schedule.step()
        losses.append(float(total.detach()))
    net.eval()
    return losses
