"""The diffusion process as stateless functions of tensors: no network, no hidden state.

Notation (Ho et al. 2020, "DDPM"): betas ``beta_t`` for t = 0..T-1, ``alpha_t = 1 - beta_t``,
``abar_t = prod_{s<=t} alpha_s``. Every function takes the schedule (a :class:`Schedule`
of precomputed float64 tensors) and integer timesteps; the network enters the samplers
only as a callable.

Anchoring (AnlightenDiff, Chan et al., IEEE TIP 2024):

* DRDA (the anchored forward process) shifts the mean of the forward noise by a
  timestep-dependent multiple of an anchor ``a`` (the network's illumination-corrected
  estimate):  ``eps* ~ N(m_t a, I)`` with ``m_t = (1 - sqrt(abar_t)) / sqrt(1 - abar_t)``, so

      x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps*
          = sqrt(abar_t) x_0 + (1 - sqrt(abar_t)) a + sqrt(1 - abar_t) eps,   eps ~ N(0, I).

  The mean slides from x_0 (t = 0) to the anchor (abar_T ~ 0): sampling can start at ``a``.
* DRDS (the anchored sampler) adds the matching term to the DDPM posterior mean,

      mu~_t = c1_t x_0 + c2_t x_t + k_t a,   k_t = (1 - sqrt(abar_{t-1})) - c2_t (1 - sqrt(abar_t))

  Both follow from one change of variables: ``y_t = x_t - (1 - sqrt(abar_t)) a`` is a plain
  DDPM chain started at ``y_0 ~ x_0``. The DDIM step below uses the same substitution, and a
  zero anchor gives back the plain process exactly (tested).

The network predicts ``eps*`` (the shifted noise, AnlightenDiff's training target); with a
zero anchor that is the ordinary epsilon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

from lldiff_cli.errors import LldiffError

BETA_SCHEDULES = ("linear", "cosine")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")
SPACINGS = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class Schedule:
    """Precomputed float64 tensors of length T (index = timestep)."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    def abar_prev(self, t: torch.Tensor) -> torch.Tensor:
        """abar_{t-1}, with abar_{-1} = 1."""
        prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        return prev[t]


def make_schedule(kind: str = "linear", timesteps: int = 1000, beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> Schedule:
    """Linear (DDPM: ``beta_start``..``beta_end`` over T steps) or cosine (Nichol & Dhariwal 2021, eq. 17)."""
    if kind not in BETA_SCHEDULES:
        raise LldiffError(f"unknown beta schedule {kind!r}; allowed: {', '.join(BETA_SCHEDULES)}")
    if timesteps < 1:
        raise LldiffError(f"timesteps must be >= 1, got {timesteps}")
    if kind == "linear":
        if not 0 < beta_start <= beta_end < 1:
            raise LldiffError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    else:
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return Schedule(betas=betas, alphas_cumprod=torch.cumprod(1 - betas, dim=0))


def _bcast(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] (the float64 table on the CPU) shaped Nx1x1x1 on ``like``'s device, in float32
    or wider: in float16, abar = 0.9999 near t = 0 rounds to 1 and 1 - abar to 0. Indexed and
    cast on the CPU, since MPS has no float64."""
    v = values[t.cpu() if torch.is_tensor(t) else t]
    v = v.to(torch.promote_types(like.dtype, torch.float32)).to(like.device)
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def _as_t(t, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.long)
    return t.expand(like.shape[0]) if t.dim() == 0 else t


# --- anchoring (AnlightenDiff) --------------------------------------------------------


def drda_mean_coef(schedule: Schedule, t) -> torch.Tensor:
    """m_t = (1 - sqrt(abar_t)) / sqrt(1 - abar_t): eps* ~ N(m_t * anchor, I) (DRDA)."""
    abar = schedule.alphas_cumprod[t]
    return (1 - abar.sqrt()) / (1 - abar).sqrt()


def drds_coef(schedule: Schedule, t) -> torch.Tensor:
    """k_t, the anchor's weight in the DRDS posterior mean:

    k_t = [(1 - sqrt(abar_{t-1})) (1 - alpha_t) - sqrt(alpha_t) (1 - sqrt(alpha_t)) (1 - abar_{t-1})] / (1 - abar_t)
        = (1 - sqrt(abar_{t-1})) - c2_t (1 - sqrt(abar_t)),   c2_t the posterior weight of x_t.
    """
    t = torch.as_tensor(t, dtype=torch.long)
    abar, prev = schedule.alphas_cumprod[t], schedule.abar_prev(t)
    alpha = schedule.alphas[t]
    return ((1 - prev.sqrt()) * (1 - alpha) - alpha.sqrt() * (1 - alpha.sqrt()) * (1 - prev)) / (1 - abar)


def _shift(abar: torch.Tensor | float, anchor: Optional[torch.Tensor]):
    """(1 - sqrt(abar)) * anchor, the DRDA mean shift of x_t (0 without an anchor); ``abar`` a
    tensor on the anchor's device or a float."""
    return 0.0 if anchor is None else (1 - abar ** 0.5) * anchor


# One generator for the batch, or one per batch item (then each item's noise depends on its own
# generator alone, and an image gets the same noise whatever it is batched with).
Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def randn(shape, generator: Generators, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape`` (N first) from ``generator`` (see :data:`Generators`),
    drawn in float32 and then cast, so a seed gives the same noise in every precision."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        z = torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=device) for g in generator])
    else:
        z = torch.randn(shape, generator=generator, device=device)
    return z.to(dtype)


# --- forward process ------------------------------------------------------------------


def q_sample(schedule: Schedule, x0: torch.Tensor, t, noise: torch.Tensor,
             anchor: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) (DDPM eq. 4), DRDA-shifted when an anchor is given.

    x0, noise, anchor: NxCxHxW; t: int or N longs. ``noise`` is the unshifted eps ~ N(0, I);
    the network's target is ``target_noise(...)``.
    """
    t = _as_t(t, x0)
    abar = _bcast(schedule.alphas_cumprod, t, x0)
    return (abar.sqrt() * x0 + (1 - abar).sqrt() * noise + _shift(abar, anchor)).to(x0.dtype)


def target_noise(schedule: Schedule, t, noise: torch.Tensor,
                 anchor: Optional[torch.Tensor] = None) -> torch.Tensor:
    """eps* = eps + m_t * anchor: what the network learns to predict (AnlightenDiff DRDA)."""
    if anchor is None:
        return noise
    t = _as_t(t, noise).cpu()  # the table lives on the CPU
    m = drda_mean_coef(schedule, t).to(noise.dtype).to(noise.device).reshape(-1, 1, 1, 1)
    return noise + m * anchor


def predict_x0(schedule: Schedule, x_t: torch.Tensor, t, eps_star: torch.Tensor) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - abar_t) eps*) / sqrt(abar_t) (DDPM eq. 15, with eps* for eps)."""
    t = _as_t(t, x_t)
    abar = _bcast(schedule.alphas_cumprod, t, x_t)
    return ((x_t - (1 - abar).sqrt() * eps_star) / abar.sqrt()).to(x_t.dtype)


def eps_from_x0(schedule: Schedule, x_t: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
    """The eps* that :func:`predict_x0` maps to ``x0``: for networks that predict x_0."""
    t = _as_t(t, x_t)
    abar = _bcast(schedule.alphas_cumprod, t, x_t)
    return ((x_t - abar.sqrt() * x0) / (1 - abar).sqrt()).to(x_t.dtype)


# --- DDPM reverse step ----------------------------------------------------------------


def posterior_std(schedule: Schedule, t: int, variance_type: str = "fixed_small") -> float:
    """Standard deviation of p(x_{t-1} | x_t) for the four variance types (diffusers' meanings):

    fixed_small      beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t  (DDPM's posterior variance)
    fixed_small_log  the same, computed as exp(0.5 log max(beta~_t, 1e-20))
    fixed_large      beta_t (DDPM's upper bound)
    fixed_large_log  beta_t, computed as exp(0.5 log beta_t) (GLIDE's "max_log"); diffusers'
                     DDPMScheduler takes a square root of the log here, which is not a std.
    """
    if variance_type not in VARIANCE_TYPES:
        raise LldiffError(f"unknown variance type {variance_type!r}; allowed: {', '.join(VARIANCE_TYPES)}")
    beta = schedule.betas[t]
    small = ((1 - schedule.abar_prev(torch.tensor(t))) / (1 - schedule.alphas_cumprod[t]) * beta).clamp(min=1e-20)
    if variance_type == "fixed_small":
        return float(small.sqrt())
    if variance_type == "fixed_small_log":
        return float(torch.exp(0.5 * torch.log(small)))
    if variance_type == "fixed_large":
        return float(beta.sqrt())
    return float(torch.exp(0.5 * torch.log(beta)))


def ddpm_step(schedule: Schedule, eps_star: torch.Tensor, t: int, x_t: torch.Tensor, *,
              variance_type: str = "fixed_small", generator: Generators = None,
              anchor: Optional[torch.Tensor] = None, clip: Optional[float] = None):
    """One ancestral step x_t -> x_{t-1} (DDPM eq. 7 and Alg. 2), with the DRDS anchor term.

    Returns (x_{t-1}, predicted x_0). ``clip`` clamps the x_0 estimate to [-clip, clip].
    """
    x0 = predict_x0(schedule, x_t, t, eps_star)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    abar, prev = schedule.alphas_cumprod[t], schedule.abar_prev(torch.tensor(t))
    beta, alpha = schedule.betas[t], schedule.alphas[t]
    c1 = float(beta * prev.sqrt() / (1 - abar))
    c2 = float((1 - prev) * alpha.sqrt() / (1 - abar))
    mean = c1 * x0 + c2 * x_t
    if anchor is not None:
        mean = mean + float(drds_coef(schedule, t)) * anchor
    if t > 0:
        z = randn(x_t.shape, generator, x_t.device, x_t.dtype)
        mean = mean + posterior_std(schedule, t, variance_type) * z
    return mean, x0


# --- DDIM -----------------------------------------------------------------------------


def ddim_timesteps(num_train: int, steps: int, spacing: str = "leading") -> list[int]:
    """The S timesteps a DDIM run visits, highest first.

    leading  (DDIM paper, diffusers' default): 0, T/S, 2T/S ... reversed (T=1000, S=5: 800 ... 0)
    trailing (Lin et al. 2024, table 2): T-1, T-1-T/S, ... (starts at the last, noisiest step)
    linspace: round(linspace(0, T-1, S)) reversed.
    """
    if spacing not in SPACINGS:
        raise LldiffError(f"unknown timestep spacing {spacing!r}; allowed: {', '.join(SPACINGS)}")
    if not 1 <= steps <= num_train:
        raise LldiffError(f"steps must be in 1..{num_train}, got {steps}")
    if spacing == "leading":
        ts = [i * (num_train // steps) for i in range(steps)]
    elif spacing == "trailing":
        ts = [round(num_train - i * num_train / steps) - 1 for i in range(steps)][::-1]
    else:
        ts = [round(v) for v in torch.linspace(0, num_train - 1, steps).tolist()]
    return sorted(set(ts), reverse=True)


def ddim_variance(schedule: Schedule, t: int, t_prev: int) -> float:
    """sigma_t^2 / eta^2 = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev) (DDIM eq. 16);
    abar_prev = 1 when t_prev < 0 (the final step)."""
    abar = schedule.alphas_cumprod[t]
    prev = schedule.alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
    return float((1 - prev) / (1 - abar) * (1 - abar / prev))


def ddim_step(schedule: Schedule, eps_star: torch.Tensor, t: int, t_prev: int, x_t: torch.Tensor, *,
              eta: float = 0.0, generator: Generators = None,
              anchor: Optional[torch.Tensor] = None, clip: Optional[float] = None):
    """x_t -> x_{t_prev} (DDIM eq. 12), anchored by the substitution y = x - (1 - sqrt(abar)) a.

    Returns (x_{t_prev}, predicted x_0). ``t_prev = -1`` ends the chain at x_0.
    """
    x0 = predict_x0(schedule, x_t, t, eps_star)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    abar = schedule.alphas_cumprod[t]
    prev = schedule.alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
    # The unshifted eps consistent with x_t and the (clipped) x0 estimate.
    eps = (x_t - abar.sqrt().item() * x0 - _shift(abar.item(), anchor)) / (1 - abar).sqrt().item()
    sigma = eta * math.sqrt(ddim_variance(schedule, t, t_prev))
    x_prev = prev.sqrt().item() * x0 + math.sqrt(max(1 - prev.item() - sigma ** 2, 0.0)) * eps
    x_prev = x_prev + _shift(prev.item(), anchor)
    if sigma > 0:
        x_prev = x_prev + sigma * randn(x_t.shape, generator, x_t.device, x_t.dtype)
    return x_prev, x0


Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_sample(schedule: Schedule, denoise: Denoiser, x_start: torch.Tensor, timesteps: list[int], *,
                eta: float = 0.0, generator: Generators = None,
                anchor: Optional[torch.Tensor] = None, clip: Optional[float] = None) -> torch.Tensor:
    """Run DDIM from ``x_start`` (the state at ``timesteps[0]``) down to x_0.

    ``denoise(x_t, t)`` returns eps* for a batch; ``t`` is a tensor of N longs.
    """
    x = x_start
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        eps = denoise(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        x, _ = ddim_step(schedule, eps, t, t_prev, x, eta=eta, generator=generator, anchor=anchor, clip=clip)
    return x


def ddpm_sample(schedule: Schedule, denoise: Denoiser, x_start: torch.Tensor, *,
                variance_type: str = "fixed_small", generator: Generators = None,
                anchor: Optional[torch.Tensor] = None, clip: Optional[float] = None) -> torch.Tensor:
    """Full ancestral sampling over all T steps (slow; for studies of the variance types)."""
    x = x_start
    for t in reversed(range(schedule.num_timesteps)):
        eps = denoise(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        x, _ = ddpm_step(schedule, eps, t, x, variance_type=variance_type, generator=generator,
                         anchor=anchor, clip=clip)
    return x


def start_state(schedule: Schedule, t: int, shape, *, anchor: Optional[torch.Tensor] = None,
                noise_scale: float = 1.0, generator: Generators = None,
                device=None, dtype=torch.float32) -> torch.Tensor:
    """x at the first sampled timestep: ``shift + sqrt(1 - abar_t) * noise_scale * z``.

    Without an anchor this is pure noise; with one, q(x_t | x_0 = anchor) (DRDS starts at the
    anchor; AnlightenDiff takes noise_scale = 0, the anchor itself).
    """
    z = randn(shape, generator, device, dtype)
    abar = schedule.alphas_cumprod[t]
    x = math.sqrt(1 - abar.item()) * noise_scale * z
    if anchor is not None:
        x = x + anchor
    return x
