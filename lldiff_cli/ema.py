"""The exponential moving average of a model's weights, the weights that are validated and shipped."""

from __future__ import annotations

import torch


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        # Warm-up of the decay (as in improved-diffusion / timm): early weights are forgotten fast.
        decay = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
            else:
                self.state[k].copy_(v)
