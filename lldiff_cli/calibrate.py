"""Fitting the exposure estimator (``--exposure auto``) on whole images.

Training sees crops; the estimator is asked, at inference, for the brightness of a whole image
(shrunk to at most 600 pixels a side, :meth:`WaveletDiffusion.auto_exposure`). So once the rest
of a model is trained, its estimator is refitted here on whole training images: the low band of
each dark image in, the ground truth's mean grey out (squared error of the log, so that a miss
by a factor counts the same at every brightness). Pure: tensors in, the network's weights
updated in place; the caller picks the images (scripts/default_model.py calibrate).
"""

from __future__ import annotations

import torch
from torch import nn


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
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    losses = []
    for it in range(iterations):
        idx = torch.randint(len(bands), (batch,), generator=gen).tolist()
        keep = 1 - jitter * float(torch.rand((), generator=gen))
        same: dict[tuple, list[int]] = {}
        for i in idx:
            same.setdefault(tuple(bands[i].shape), []).append(i)
        loss = torch.zeros(())
        for shape, group in same.items():
            h, w = shape[-2:]
            ch, cw = max(1, round(h * keep)), max(1, round(w * keep))
            views = []
            for i in group:
                y = int(torch.randint(h - ch + 1, (), generator=gen))
                x = int(torch.randint(w - cw + 1, (), generator=gen))
                views.append(bands[i][..., y:y + ch, x:x + cw])
            x = torch.cat(views)
            x = x.flip(-1) if it % 2 else x
            loss = loss + ((net(x).log() - targets[group].log()) ** 2).sum() / len(idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    net.eval()
    return losses
