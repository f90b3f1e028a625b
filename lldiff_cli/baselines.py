"""Enhancement methods behind one interface: classical baselines, and the model when installed.

A method is anything with a ``name`` and ``__call__(low) -> enhanced``, both tensors
1x3xHxW in [0, 1] (on any device; baselines compute on the CPU and return the
result on the input's device). :func:`make_method` builds one from its ``--method``
spelling:

=============  ===============================================================
``identity``   the input itself (the score of doing nothing)
``gamma:G``    out = in ** G per channel, G > 0 (``gamma:0.25`` brightens)
``clahe``      OpenCV CLAHE (clip 2.0, 8x8 tiles) on L of CIE Lab
``he``         histogram equalisation of Y in YCrCb (luminance only)
``msrcr``      multi-scale Retinex with colour restoration (Jobson et al. 1997)
``default``    the shipped diffusion model; ``lol`` (any shipped model's short name) likewise
PATH           a model checkpoint (``.pt``/``.pth``) or its card (``.yaml``)
=============  ===============================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lldiff_cli.checkpoints import MODEL_SUFFIXES, shipped_models
from lldiff_cli.errors import LldiffError

BASELINES = ("identity", "gamma:G", "clahe", "he", "msrcr")

@dataclass
class Method:
    """A named enhancement: ``method(low) -> enhanced``, both 1x3xHxW in [0, 1]."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, low: torch.Tensor) -> torch.Tensor:
        return self.fn(low)


def _numpy_method(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap ``fn``: HxWx3 uint8 RGB -> HxWx3 uint8 RGB, as a tensor method."""
    from lldiff_cli.images import to_uint8

    def run(low: torch.Tensor) -> torch.Tensor:
        out = fn(to_uint8(low))
        return torch.from_numpy(out.astype(np.float32) / 255.0).permute(2, 0, 1)[None].to(low.device)

    return run


def identity(low: torch.Tensor) -> torch.Tensor:
    return low


def gamma(g: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """out = in ** g on [0, 1] floats."""
    def run(low: torch.Tensor) -> torch.Tensor:
        return low.clamp(0, 1) ** g
    return run


def clahe(rgb: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of L in CIE Lab (uint8 RGB in and out)."""
    import cv2

    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    op = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles))
    lab[:, :, 0] = op.apply(np.ascontiguousarray(lab[:, :, 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def histogram_equalisation(rgb: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of the luminance Y in YCrCb (uint8 RGB in and out)."""
    import cv2

    ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    ycc[:, :, 0] = cv2.equalizeHist(np.ascontiguousarray(ycc[:, :, 0]))
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)


def msrcr(rgb: np.ndarray, sigmas: tuple[float, ...] = (15.0, 80.0, 250.0), gain: float = 5.0,
          offset: float = 25.0, alpha: float = 125.0, beta: float = 46.0,
          clip: float = 0.01) -> np.ndarray:
    """Multi-scale Retinex with colour restoration (Jobson, Rahman, Woodell 1997).

    MSR = mean over sigmas of log I - log(G_sigma * I) (eq. 3, equal weights); colour
    restoration C = beta * (log(alpha I) - log(sum_c I)) (eq. 6); out = gain (C MSR + offset),
    then each channel stretched to 0..255 between its ``clip`` and ``1 - clip`` quantiles
    (the "simplest colour balance"). The parameters are the common ones of the
    literature's reference implementations. uint8 RGB in and out.
    """
    import cv2

    img = rgb.astype(np.float32) + 1.0
    log_img = np.log(img)
    retinex = np.zeros_like(img)
    for s in sigmas:
        retinex += log_img - np.log(cv2.GaussianBlur(img, (0, 0), s))
    retinex /= len(sigmas)
    colour = beta * (np.log(alpha * img) - np.log(img.sum(axis=2, keepdims=True)))
    out = gain * (retinex * colour + offset)
    result = np.empty(rgb.shape, dtype=np.uint8)
    for c in range(3):
        lo, hi = np.quantile(out[:, :, c], [clip, 1.0 - clip])
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        result[:, :, c] = np.clip(np.round((out[:, :, c] - lo) * scale), 0, 255).astype(np.uint8)
    return result


def _parse_gamma(spec: str) -> float:
    text = spec.split(":", 1)[1]
    try:
        g = float(text)
    except ValueError:
        raise LldiffError(f"bad method {spec!r}: gamma needs a number, e.g. gamma:0.25") from None
    if not (g > 0 and np.isfinite(g)):
        raise LldiffError(f"bad method {spec!r}: the gamma must be a positive number, e.g. gamma:0.25")
    return g


def make_method(spec: str, device: torch.device | str = "cpu", precision: str = "auto") -> Method:
    """The method a ``--method`` value names (see the module doc); a clear error otherwise.
    ``precision`` (see device.pick_precision) applies to model methods only."""
    key = spec.strip()
    low = key.lower()
    if low == "identity":
        return Method("identity", identity)
    if low.startswith("gamma:"):
        g = _parse_gamma(key)
        return Method(f"gamma:{g:g}", gamma(g))
    if low == "clahe":
        return Method("clahe", _numpy_method(clahe))
    if low == "he":
        return Method("he", _numpy_method(histogram_equalisation))
    if low == "msrcr":
        return Method("msrcr", _numpy_method(msrcr))
    if Path(key).suffix.lower() in MODEL_SUFFIXES or key in shipped_models() or low == "default":
        return _model_method(key, device, precision)
    if low == "gamma":
        raise LldiffError("bad method 'gamma': give the exponent, e.g. gamma:0.25")
    names = ", ".join(sorted(shipped_models())) or "default"
    raise LldiffError(f"unknown method {spec!r}; allowed: a shipped model ({names}), a checkpoint path "
                      f"(.pt, .pth, .yaml), {', '.join(BASELINES)}")


def _model_method(spec: str, device: torch.device | str, precision: str) -> Method:
    """The diffusion model (``lldiff_cli.checkpoints.load_model``), run as ``lldiff enhance`` runs it:
    padded or tiled by ``enhance.enhance_image``, the model's own steps, eta, exposure
    estimate and keep_highlights (its card's), seed 0, so a score is reproducible."""
    shipped = spec in shipped_models() or spec.lower() == "default"
    if not shipped and not Path(spec).is_file():
        raise LldiffError(f"method {spec!r}: no such checkpoint file")
    from lldiff_cli.checkpoints import load_model
    from lldiff_cli.enhance import EnhanceSettings, enhance_image, in_precision

    device = torch.device(device)
    source = None if spec.lower() == "default" else spec if shipped else Path(spec)
    net = load_model(source, map_location=device).to(device)
    settings = EnhanceSettings(precision=precision).resolve(net, device)
    net = in_precision(net, settings.precision)
    name = spec.lower() if shipped else Path(spec).stem
    return Method(name, lambda low: enhance_image(net, low, settings, device))
