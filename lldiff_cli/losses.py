"""The training losses beyond the model's own terms (model.loss), and the loss of one step as a module.

``ssim_torch`` and ``total_variation`` are the differentiable image losses that the loss terms
use; :class:`LossStep` is ``model.loss`` plus the sampled term (DiffLL's training strategy) as
one forward pass, which DistributedDataParallel can wrap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from lldiff_cli.model import WaveletDiffusion


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def ssim_torch(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Differentiable SSIM (Gaussian window) of Nx3xHxW images in [0, 1], for the training loss.

    The scoring SSIM lives in metrics.py; this one only needs to be a good gradient. It runs
    in float32 even under autocast: the variances are small differences of squares.
    """
    with torch.autocast(a.device.type, enabled=False):
        return _ssim_fp32(a.float(), b.float(), window, sigma)


def _ssim_fp32(a: torch.Tensor, b: torch.Tensor, window: int, sigma: float) -> torch.Tensor:
    c = a.shape[1]
    coords = torch.arange(window, dtype=a.dtype, device=a.device) - window // 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = (g / g.sum())
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()
    if min(a.shape[-2:]) < window:
        return torch.ones((), device=a.device)

    def filt(x):
        return F.conv2d(x, kernel, groups=c)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a ** 2
    var_b = filt(b * b) - mu_b ** 2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean()



class LossStep(nn.Module):
    """The training loss as a module: ``forward`` returns the named, unweighted terms.

    DistributedDataParallel synchronises the gradients of what runs inside ``forward``, so
    ``model.loss`` (a method, not the model's forward) and the sampled term go through here.
    """

    def __init__(self, model: WaveletDiffusion):
        super().__init__()
        self.model = model

    def forward(self, low: torch.Tensor, high: torch.Tensor, generator: torch.Generator,
                sample: bool = False) -> dict[str, torch.Tensor]:
        terms = self.model.loss(low, high, generator=generator)
        if sample:
            # DiffLL's training strategy: the content loss sees what inference produces.
            image = sampled_image(self.model, low, high.mean(dim=(1, 2, 3)), generator)
            terms["sampled"] = F.l1_loss(image, high) + (1 - ssim_torch(image.clamp(0, 1), high))
        return terms


def sampled_image(model: WaveletDiffusion, dark: torch.Tensor, exposure: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """``model.enhance`` with gradients: Nx3xHxW dark in [0, 1] -> the enhanced image (not clamped).

    WaveletDiffusion.sample then .refine, the path enhance() takes (the model's sampler settings, DRDS
    start at the anchor, DDIM, HFRM details, the refiner if any); ``exposure`` (N,) is the target
    brightness, in training the ground truth's. tests/test_train.py checks that it matches enhance() exactly.
    """
    image = model.sample(dark, exposure, steps=model.config.steps, eta=model.config.eta, generator=generator)
    return model.refine(image, dark)
