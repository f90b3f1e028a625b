"""WaveletDiffusion: the one model core shared by enhance, train and eval.

Data path of ``enhance`` (DiffLL, Jiang et al. 2023, with AnlightenDiff's anchoring):

    dark image [0, 1] -> [-1, 1] -> K-level Haar DWT
      lowest band (scaled by 2**-K, so it stays in [-1, 1])
        -> AnchorNet: deterministic estimate of the enhanced band (the DRDA anchor), and the
           exposure estimate when none is given
        -> conditional UNet, few-step DDIM started at the anchor (DRDS), conditioned on the
           dark band, the anchor and the target exposure
      detail bands of each level, coarse to fine
        -> HFRM, guided by the restored and the dark low band of that level
    -> inverse DWT -> [0, 1]
    (once per self-ensemble copy: mirrored, and with ``exposure_spread`` at its own brightness
     around the target; the copies are averaged)
    -> Refiner (optional): a small full-resolution network's correction of the finished image,
       run once after the self-ensemble's average

``levels: 0`` is plain pixel-space conditional diffusion (SR3 / Palette) from the same class.

The constructor takes plain values only, so a checkpoint's ``config`` rebuilds the model
(checkpoints.py: the checkpoint and card formats, load_model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lldiff_cli import schedule as S
from lldiff_cli.errors import LldiffError
from lldiff_cli.losses import ssim_torch, total_variation
from lldiff_cli.networks import HFRM, AnchorNet, Refiner, UNet, exposure_estimator
from lldiff_cli.tiling import shrink
from lldiff_cli.wavelet import dwt2, idwt2, waverec2

PREDICTIONS = ("eps", "x0")
ENSEMBLES = (1, 2, 4)


def check_ensemble(n: int, name: str = "ensemble") -> int:
    """``n`` if it is a self-ensemble size lldiff runs (1, 2 or 4 mirrored copies), else LldiffError."""
    if n not in ENSEMBLES:
        raise LldiffError(f"{name} must be one of {', '.join(map(str, ENSEMBLES))}, got {n}")
    return n


@dataclass
class ModelConfig:
    """Every constructor argument of :class:`WaveletDiffusion`, as plain values."""

    levels: int = 2
    unet: dict = field(default_factory=lambda: {"width": 32, "channel_mults": [1, 2, 2],
                                                "blocks_per_level": 1, "attention_levels": [2],
                                                "dropout": 0.0})
    hfrm: dict = field(default_factory=lambda: {"width": 24, "dilations": [1, 2, 4, 2, 1], "heads": 2})
    anchor: Optional[dict] = field(default_factory=lambda: {"width": 16, "channel_mults": [1, 2, 4]})
    exposure: dict = field(default_factory=lambda: {"width": 16})
    refiner: Optional[dict] = None  # e.g. {"width": 32, "blocks": 2}; None: no output refiner
    # --exposure auto = prior + shrink * (estimate - prior): where the brightness of the ground
    # truth cannot be told from the dark image (LOL), pulling the estimate towards the typical
    # exposure scores better. None: the estimate as it is.
    exposure_prior: Optional[float] = None
    exposure_shrink: float = 1.0
    # The self-ensemble's copies render around the target brightness, copy k of n at
    # exposure * (1 + spread * (2k - (n - 1)) / (n - 1)); their mean hedges a brightness the
    # dark image does not reveal, and averages out errors that differ with the brightness.
    # 0: every copy at the target.
    exposure_spread: float = 0.0
    schedule: dict = field(default_factory=lambda: {"kind": "linear", "timesteps": 1000,
                                                    "beta_start": 1e-4, "beta_end": 0.02})
    prediction: str = "x0"
    # Sampler defaults, used when enhance() is not told otherwise.
    steps: int = 4
    eta: float = 0.0
    spacing: str = "trailing"
    start_noise: float = 1.0
    clip: Optional[float] = 1.0
    # Self-ensemble: the mean of the outputs for 1, 2 (plus a left-right flip) or 4 (plus the
    # up-down flips) mirrored copies of the input; each copy costs a whole sampling run.
    ensemble: int = 1
    # After the model, put the input's well-exposed parts back (tone.keep_highlights, in
    # enhance.enhance_image): right for users' photos; LOL's long-exposure ground truths clip
    # the windows and lamps it keeps, so off unless a model (its card) turns it on.
    keep_highlights: bool = False

    def validate(self) -> "ModelConfig":
        if not 0 <= self.levels <= 4:
            raise LldiffError(f"levels must be 0..4, got {self.levels}")
        if self.exposure_prior is not None and not 0 < self.exposure_prior < 1:
            raise LldiffError(f"exposure_prior must be in (0, 1), got {self.exposure_prior}")
        if not 0 <= self.exposure_shrink <= 1:
            raise LldiffError(f"exposure_shrink must be in [0, 1], got {self.exposure_shrink}")
        if not 0 <= self.exposure_spread < 1:
            raise LldiffError(f"exposure_spread must be in [0, 1), got {self.exposure_spread}")
        check_ensemble(self.ensemble)
        if self.prediction not in PREDICTIONS:
            raise LldiffError(f"unknown prediction {self.prediction!r}; allowed: {', '.join(PREDICTIONS)}")
        S.ddim_timesteps(self.schedule.get("timesteps", 1000), self.steps, self.spacing)
        return self


def decompose(image: torch.Tensor, levels: int):
    """[0, 1] image -> (lowest band scaled to [-1, 1], [LL_k / 2**k for k < levels], [high_1..high_levels]):
    the ``levels``-level Haar pyramid of 2 * image - 1 that the model works on."""
    x = image * 2 - 1
    lls, highs = [x], []
    for _ in range(levels):
        ll, high = dwt2(lls[-1])
        lls.append(ll)
        highs.append(high)
    scaled = [ll / (2 ** k) for k, ll in enumerate(lls)]
    return scaled[-1], scaled, highs


class WaveletDiffusion(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config.validate()
        c = 3
        use_anchor = config.anchor is not None
        unet_args = {k: tuple(v) if isinstance(v, list) else v for k, v in config.unet.items()}
        # Inputs: the noisy band, the dark band, and the anchor when there is one.
        self.unet = UNet(in_channels=c * (3 if use_anchor else 2), out_channels=c, num_scalars=1, **unet_args)
        self.anchor_net = (AnchorNet(channels=c, **{k: tuple(v) if isinstance(v, list) else v
                                                    for k, v in config.anchor.items()})
                           if use_anchor else None)
        hfrm_args = {k: tuple(v) if isinstance(v, list) else v for k, v in config.hfrm.items()}
        self.hfrms = nn.ModuleList([HFRM(image_channels=c, guide_channels=2 * c, **hfrm_args)
                                    for _ in range(config.levels)])
        self.exposure_net = exposure_estimator(channels=c, **config.exposure)
        self.refiner = Refiner(channels=c, **config.refiner) if config.refiner is not None else None
        self.schedule = S.make_schedule(**config.schedule)

    # --- shapes -------------------------------------------------------------------

    @property
    def levels(self) -> int:
        return self.config.levels

    @property
    def multiple(self) -> int:
        """Input height and width must be divisible by this (tiling pads to it)."""
        inner = self.unet.multiple
        if self.anchor_net is not None:
            inner = max(inner, self.anchor_net.multiple)
        return (2 ** self.config.levels) * inner

    def decompose(self, image: torch.Tensor):
        """[0, 1] image -> (lowest band scaled to [-1, 1], [LL_k / 2**k for k < K], [high_1..high_K])."""
        return decompose(image, self.config.levels)

    def reconstruct(self, band: torch.Tensor, highs: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of decompose with the given detail bands: -> [0, 1] image (not clamped)."""
        return (waverec2(band * (2 ** self.config.levels), highs) + 1) / 2

    # --- pieces -------------------------------------------------------------------

    def estimate_exposure(self, dark_band: torch.Tensor) -> torch.Tensor:
        """N estimates of the target mean grey level in (0, 1) (``--exposure auto``).

        Never below the input's own mean grey: auto exposure brightens dark images and leaves
        an image that is already brighter than the target at its own brightness, not dimmed.
        ``dark_band``: the scaled low band, whose mean is that of 2 * image - 1.
        """
        estimate = self.exposure_net(dark_band)
        prior = self.config.exposure_prior
        if prior is not None:
            estimate = prior + self.config.exposure_shrink * (estimate - prior)
        return torch.maximum(estimate, (dark_band.mean(dim=(1, 2, 3)) + 1) / 2)

    @torch.no_grad()
    def auto_exposure(self, image: torch.Tensor, max_side: int = 600) -> torch.Tensor:
        """The exposure estimate for a whole image (Nx3xHxW, [0, 1], any size), from a copy
        shrunk to at most ``max_side`` pixels a side: tiles of one photo share it."""
        small = shrink(image, max_side, 2 ** self.config.levels)
        return self.estimate_exposure(self.decompose(small)[0])

    def make_anchor(self, dark_band: torch.Tensor, exposure: torch.Tensor) -> Optional[torch.Tensor]:
        return None if self.anchor_net is None else self.anchor_net(dark_band, exposure)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, dark_band: torch.Tensor,
                anchor: Optional[torch.Tensor], exposure: torch.Tensor) -> torch.Tensor:
        """The UNet's raw output for x_t: eps* or x_0, as ``config.prediction`` says. It sees x_t,
        the dark band and the anchor (when there is one) stacked, and the exposure as a condition."""
        inputs = [x_t, dark_band] + ([anchor] if anchor is not None else [])
        return self.unet(torch.cat(inputs, dim=1), t, exposure[:, None])

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, dark_band: torch.Tensor,
                anchor: Optional[torch.Tensor], exposure: torch.Tensor) -> torch.Tensor:
        """The network's eps* for x_t (converted from an x_0 prediction when prediction == 'x0')."""
        out = self.predict(x_t, t, dark_band, anchor, exposure)
        if self.config.prediction == "eps":
            return out
        return S.eps_from_x0(self.schedule, x_t, t, out)

    def restore_details(self, band: torch.Tensor, dark_lls: list[torch.Tensor],
                        dark_highs: list[torch.Tensor], guide_lls: Optional[list[torch.Tensor]] = None):
        """Restore the detail bands coarse to fine. ``band``: the restored lowest band ([-1, 1]).

        Returns the restored [high_1..high_K]. In training, ``guide_lls`` (the true low bands,
        scaled) replace the reconstruction as the guide (teacher forcing).
        """
        levels = self.config.levels
        restored = [None] * levels
        ll = band
        for k in reversed(range(levels)):  # k = K-1 .. 0; level k+1's bands are dark_highs[k]
            guide = guide_lls[k + 1] if guide_lls is not None else ll
            gain = detail_gain(guide, dark_lls[k + 1]) if self.hfrms[k].gain else None
            high = self.hfrms[k](dark_highs[k], torch.cat([guide, dark_lls[k + 1]], dim=1), gain)
            restored[k] = high
            ll = idwt2(guide * (2 ** (k + 1)), high) / (2 ** k)
        return restored

    def refine(self, image: torch.Tensor, dark: torch.Tensor) -> torch.Tensor:
        """The refiner's correction of a finished image (Nx3xHxW, not clamped) given its dark
        input; the image as it is when the model has no refiner."""
        return image if self.refiner is None else self.refiner(image, dark)

    # --- inference ----------------------------------------------------------------

    @torch.no_grad()
    def enhance(self, dark: torch.Tensor, *, steps: Optional[int] = None, eta: Optional[float] = None,
                seed: int = 0, exposure: Optional[float | torch.Tensor] = None,
                generator: S.Generators = None, ensemble: Optional[int] = None) -> torch.Tensor:
        """dark: Nx3xHxW in [0, 1] (H, W divisible by ``multiple``) -> enhanced, same shape, [0, 1].

        ``exposure``: the target mean grey level in (0, 1), or None for :meth:`auto_exposure`.
        ``ensemble``: 1, 2 or 4 mirrored copies averaged (default: the model's), each rendered
        at its own brightness around ``exposure`` when the model has an ``exposure_spread``.
        The output is a function of (input, steps, eta, seed, exposure, ensemble), image by image:
        each image draws its noise from its own generator seeded with ``seed``, so batching changes
        nothing; ``generator`` (one, or one per image) replaces them.
        """
        cfg = self.config
        steps = cfg.steps if steps is None else steps
        eta = cfg.eta if eta is None else eta
        ensemble = cfg.ensemble if ensemble is None else check_ensemble(ensemble)
        h, w = dark.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise LldiffError(f"input {h}x{w} must be divisible by {self.multiple}; pad it first (tiling.pad)")
        n = dark.shape[0]
        if generator is None:  # one per image: an image's output does not depend on its batch
            generator = [torch.Generator(device=dark.device).manual_seed(int(seed)) for _ in range(n)]
        if exposure is None:
            e = self.auto_exposure(dark)
        else:
            e = torch.as_tensor(exposure, dtype=dark.dtype, device=dark.device).reshape(-1).expand(n)
            if not ((e > 0) & (e < 1)).all():
                raise LldiffError(f"exposure must be in (0, 1), got {exposure}")
        # Near white the spread narrows, so that the copies stay at most 1 and centred on e.
        spread = torch.clamp(1 / e - 1, max=cfg.exposure_spread)
        # The copies share all but the diffusion: their restored low bands (the Haar low band of
        # a mirrored image is the mirrored low band) are averaged, and the details are restored
        # once, from the average. On 40 held-out LOL pairs (4 copies) this gave 21.25 dB / 0.830
        # against 21.26 / 0.830 for restoring each copy's details, in 0.51 s instead of 0.72.
        band, lls, highs = self.decompose(dark)
        total = 0
        for k in range(ensemble):  # one copy at a time: memory stays that of a single run
            offset = (2 * k - (ensemble - 1)) / (ensemble - 1) if ensemble > 1 else 0.0
            e_k = e * (1 + spread * offset)
            total = total + mirror(self.restore_band(mirror(band, k), e_k, steps=steps, eta=eta,
                                                     generator=generator), k)
        restored = total / ensemble
        image = self.reconstruct(restored, self.restore_details(restored, lls, highs))
        return self.refine(image, dark).clamp(0, 1)

    def sample(self, dark: torch.Tensor, exposure: torch.Tensor, *, steps: int, eta: float,
               generator: S.Generators) -> torch.Tensor:
        """One copy of :meth:`enhance`'s sampling path, differentiable and without checks (training
        runs it with gradients): dark Nx3xHxW [0, 1], exposure (N,) -> image, not clamped."""
        band, lls, highs = self.decompose(dark)
        restored = self.restore_band(band, exposure, steps=steps, eta=eta, generator=generator)
        return self.reconstruct(restored, self.restore_details(restored, lls, highs))

    def restore_band(self, band: torch.Tensor, exposure: torch.Tensor, *, steps: int, eta: float,
                     generator: S.Generators) -> torch.Tensor:
        """The diffusion half of :meth:`sample`: dark lowest band -> restored lowest band (anchor, DDIM)."""
        anchor = self.make_anchor(band, exposure)
        timesteps = S.ddim_timesteps(self.schedule.num_timesteps, steps, self.config.spacing)
        x = S.start_state(self.schedule, timesteps[0], band.shape, anchor=anchor, noise_scale=self.config.start_noise,
                          generator=generator, device=band.device, dtype=band.dtype)
        return S.ddim_sample(self.schedule, lambda x_t, t: self.denoise(x_t, t, band, anchor, exposure),
                             x, timesteps, eta=eta, generator=generator, anchor=anchor, clip=self.config.clip)

    # --- training -----------------------------------------------------------------

    def loss(self, dark: torch.Tensor, bright: torch.Tensor, *, generator: Optional[torch.Generator] = None):
        """Named loss terms (unweighted) for one batch of pairs, Nx3xHxW in [0, 1].

        noise     MSE between predicted and true eps* (DDPM's simple loss)
        x0        L1 of the x_0 estimate of the low band (DiffLL's low-frequency consistency)
        anchor    L1 of the anchor against the true low band
        exposure  L1 of the exposure estimate against the true mean grey level
        detail    L1 of the restored detail bands (HFRM)
        tv        total variation of the restored detail bands' error
        content   L1 + (1 - SSIM) of the image rebuilt from the x_0 estimate and restored details
        dfpl      AnlightenDiff's image-level loss: L1 between images rebuilt from x_t made with
                  the true and with the predicted noise
        """
        band_d, lls_d, highs_d = self.decompose(dark)
        band_b, lls_b, highs_b = self.decompose(bright)
        n = dark.shape[0]
        exposure = bright.mean(dim=(1, 2, 3))
        terms = {"exposure": F.l1_loss(self.estimate_exposure(band_d), exposure)}
        anchor = self.make_anchor(band_d, exposure)
        if anchor is not None:
            terms["anchor"] = F.l1_loss(anchor, band_b)
            anchor = anchor.detach()
        t = torch.randint(0, self.schedule.num_timesteps, (n,), generator=generator, device=dark.device)
        noise = torch.randn(band_b.shape, generator=generator, device=dark.device)
        x_t = S.q_sample(self.schedule, band_b, t, noise, anchor)
        target = S.target_noise(self.schedule, t, noise, anchor)
        out = self.predict(x_t, t, band_d, anchor, exposure)
        if self.config.prediction == "eps":
            eps = out
            x0 = S.predict_x0(self.schedule, x_t, t, eps).clamp(-1, 1)
        else:
            x0 = out
            eps = S.eps_from_x0(self.schedule, x_t, t, x0)
        terms["noise"] = F.mse_loss(eps, target) if self.config.prediction == "eps" else \
            F.mse_loss(eps.clamp(-10, 10), target)
        terms["x0"] = F.l1_loss(x0, band_b)
        details = self.restore_details(band_b, lls_d, highs_d, guide_lls=lls_b)
        if details:
            terms["detail"] = sum(F.l1_loss(d, h) for d, h in zip(details, highs_b)) / len(details)
            terms["tv"] = sum(total_variation(d - h) for d, h in zip(details, highs_b)) / len(details)
        image = self.reconstruct(x0, details)
        terms["content"] = F.l1_loss(image, bright) + (1 - ssim_torch(image.clamp(0, 1), bright))
        # DFPL: x_t rebuilt from the predicted noise vs the true one, compared as images.
        eps_plain_pred = eps - (target - noise)
        x_t_pred = S.q_sample(self.schedule, band_b, t, eps_plain_pred, anchor)
        terms["dfpl"] = F.l1_loss(self.reconstruct(x_t_pred, highs_b), self.reconstruct(x_t, highs_b))
        return terms


def mirror(x: torch.Tensor, k: int) -> torch.Tensor:
    """Copy ``k`` of the self-ensemble: 0 as is, 1 flipped left-right, 2 up-down, 3 both (its own inverse)."""
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    return x


def detail_gain(restored_ll: torch.Tensor, dark_ll: torch.Tensor, *, window: int = 5, eps: float = 0.02,
                cap: float = 50.0) -> torch.Tensor:
    """How much brighter the restored image is than the dark one, locally: Nx1xHxW.

    Both bands are scaled low bands ([-1, 1] means of 2 * image - 1); a pure brightness gain g
    scales the detail bands by g exactly, so dark details times this map are the details at the
    output's brightness (noise amplified with them). Grey, averaged over ``window`` pixels, with
    ``eps`` against division by black and at most ``cap``.
    """
    restored = ((restored_ll + 1) / 2).mean(dim=1, keepdim=True)
    dark = ((dark_ll + 1) / 2).mean(dim=1, keepdim=True)
    pool = dict(kernel_size=window, stride=1, padding=window // 2, count_include_pad=False)
    ratio = (F.avg_pool2d(restored, **pool) + eps) / (F.avg_pool2d(dark, **pool) + eps)
    return ratio.clamp(min=0.0, max=cap)


def build_model(config: ModelConfig, where: str = "model") -> WaveletDiffusion:
    """``WaveletDiffusion(config)``, with an argument the networks do not take (e.g.
    ``unet.depth``) or a value they refuse as one LldiffError naming ``where``."""
    try:
        return WaveletDiffusion(config)
    except (TypeError, ValueError) as exc:
        raise LldiffError(f"{where}: {exc}") from None
