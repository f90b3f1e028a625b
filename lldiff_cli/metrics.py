"""Image quality metrics: pure functions, images in, floats out.

lldiff scores one documented way (see ``PROTOCOL``), so numbers from two runs, or
two methods, can be compared:

* full-reference: PSNR and SSIM on 8-bit RGB, their "GT-mean" variants, LPIPS (AlexNet);
* against the low-light input: LOE (lightness order error);
* no-reference: NIQE with the standard pristine model.

Inputs. Every metric takes images in either form:

* a torch tensor 1x3xHxW (or 3xHxW) in [0, 1], the lldiff convention. It is first
  rounded to 8 bits exactly as a saved image is (``images.to_uint8``), so a score
  never depends on whether the output went through a file;
* a numpy array HxWx3 on the 0..255 scale: uint8 as read from a file, or float
  (e.g. the unrounded output of :func:`gt_mean`). ``data_range`` applies to these.

All arithmetic is float64.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lldiff_cli.errors import LldiffError

# A per-image PSNR is scored at most this (dB): an identical pair's PSNR is inf (psnr() returns
# it, as BasicSR's does), and one inf makes a method's mean inf. 100 dB is beyond any real
# difference: one grey level off in one channel of one pixel of a 600x400 image is 106.7 dB.
PSNR_CAP = 100.0

# The scoring protocol, recorded in every --json output and printed in the README.
PROTOCOL = {
    "psnr": "8-bit RGB (outputs rounded to uint8 as saved), MSE over all pixels and channels "
            f"on the 0..255 scale, 10*log10(255^2/MSE), capped at {PSNR_CAP:g} dB per image (an "
            "identical pair would be inf, and so would the mean); mean of per-image values",
    "ssim": "Wang et al. 2004: 11x11 Gaussian window sigma 1.5, K1=0.01, K2=0.03, L=255, "
            "population (co)variances, per RGB channel, mean over the valid region (no padding) "
            "and over channels; equals skimage structural_similarity(gaussian_weights=True, "
            "sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=2)",
    "gtmean": "GT-mean variants: the 8-bit output is multiplied by mean_grey(gt)/mean_grey(output) "
              "(grey = 0.299R+0.587G+0.114B), clipped to 0..255, not re-rounded, then PSNR/SSIM as above",
    "lpips": "LPIPS v0.1, AlexNet, linearly calibrated layers (Zhang et al. 2018); inputs rounded "
             "to 8 bits then scaled to [-1, 1]; n/a without weights",
    "loe": "lightness order error (Wang et al. 2013) of the output against the low-light input: "
           "L = max(R,G,B), both resized (MATLAB bicubic) to 50 px on the short side, mean over "
           "pixels of the count of pixel pairs whose lightness order differs",
    "niqe": "NIQE (Mittal et al. 2013) with the standard pristine model of the MATLAB release: "
            "MATLAB rgb2gray, 96x96 blocks, 7x7 Gaussian window sigma 7/6, two scales "
            "(MATLAB bicubic /2); n/a for images under 192 px on a side",
}


# --- conversion ---------------------------------------------------------------


def as_array255(image, data_range: float = 255.0) -> np.ndarray:
    """Any accepted input -> float64 HxWxC array on the 0..255 scale (see module doc)."""
    if isinstance(image, torch.Tensor):
        from lldiff_cli.images import to_uint8

        return to_uint8(image).astype(np.float64)
    array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise LldiffError(f"expected an HxWx3 image array, got shape {array.shape}")
    array = array.astype(np.float64)
    if data_range != 255.0:
        array = array * (255.0 / data_range)
    return array


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise LldiffError(f"image sizes differ: {_size(a)} vs {_size(b)}")


def _size(a: np.ndarray) -> str:
    return f"{a.shape[1]}x{a.shape[0]}" + (f"x{a.shape[2]}" if a.ndim == 3 else "")


# --- PSNR and SSIM ------------------------------------------------------------


def psnr(output, target, *, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images.

    MSE over all pixels and channels on the 0..255 scale; 10 * log10(255^2 / MSE).
    """
    a, b = as_array255(output, data_range), as_array255(target, data_range)
    _check_pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0 ** 2 / mse)


SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim_map(output, target, *, data_range: float = 255.0) -> np.ndarray:
    """The SSIM index map (Wang et al. 2004, eq. 13), CxH'xW' over the valid region.

    11x11 Gaussian window (sigma 1.5, normalised), C1 = (0.01 L)^2, C2 = (0.03 L)^2
    with L = 255, population (biased) variances and covariance; the window never
    leaves the image, so H' = H - 10 and W' = W - 10.
    """
    a, b = as_array255(output, data_range), as_array255(target, data_range)
    _check_pair(a, b)
    if a.ndim == 2:
        a, b = a[:, :, None], b[:, :, None]
    h, w, c = a.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise LldiffError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {w}x{h}")
    import cv2

    g = _gaussian_1d(SSIM_WINDOW, SSIM_SIGMA)
    r = SSIM_WINDOW // 2

    def blur(z: np.ndarray) -> np.ndarray:
        # separable Gaussian in float64; only the valid region (window inside the image) is kept
        out = cv2.sepFilter2D(z, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)
        out = out if out.ndim == 3 else out[:, :, None]
        return out[r:h - r, r:w - r]

    x, y = a, b
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)
    return (num / den).transpose(2, 0, 1)


def ssim(output, target, *, data_range: float = 255.0) -> float:
    """Mean SSIM: per RGB channel over the valid region, then over channels. 1.0 when identical."""
    return float(ssim_map(output, target, data_range=data_range).mean(axis=(1, 2)).mean())


# --- GT-mean ------------------------------------------------------------------

GREY_WEIGHTS = np.array([0.299, 0.587, 0.114])  # BT.601, as OpenCV's RGB2GRAY


def gt_mean(output, target) -> np.ndarray:
    """The output scaled so that its mean grey equals the ground truth's.

    Returns a float64 HxWx3 array on 0..255: output * mean_grey(target) / mean_grey(output),
    clipped to [0, 255] and not re-rounded. An all-black output cannot be scaled and
    is returned unchanged.
    """
    a, b = as_array255(output), as_array255(target)
    _check_pair(a, b)
    mean_out = float((a @ GREY_WEIGHTS).mean())
    mean_gt = float((b @ GREY_WEIGHTS).mean())
    if mean_out == 0.0:
        return a
    return np.clip(a * (mean_gt / mean_out), 0.0, 255.0)


def psnr_gtmean(output, target) -> float:
    """PSNR after :func:`gt_mean`: a brightness-corrected score, never to be mixed with plain PSNR."""
    return psnr(gt_mean(output, target), target)


def ssim_gtmean(output, target) -> float:
    """SSIM after :func:`gt_mean`: a brightness-corrected score, never to be mixed with plain SSIM."""
    return ssim(gt_mean(output, target), target)


# --- MATLAB imresize (bicubic, antialiased) ----------------------------------


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic kernel with a = -0.5, as MATLAB's imresize."""
    ax = np.abs(x)
    ax2, ax3 = ax ** 2, ax ** 3
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def _resize_matrix(in_len: int, out_len: int) -> np.ndarray:
    """out_len x in_len matrix of MATLAB imresize's 1-D bicubic weights (antialiased when shrinking,
    symmetric padding at the borders), after MATLAB's ``contributions``."""
    scale = out_len / in_len
    width = 4.0
    if scale < 1:
        width = width / scale
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    p = int(math.ceil(width)) + 2
    ind = left[:, None] + np.arange(p)[None, :]
    dist = u[:, None] - ind
    weights = scale * _cubic(scale * dist) if scale < 1 else _cubic(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)
    aux = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    ind = aux[np.mod(ind.astype(np.int64) - 1, len(aux))]
    matrix = np.zeros((out_len, in_len))
    np.add.at(matrix, (np.repeat(np.arange(out_len), p), ind.ravel()), weights.ravel())
    return matrix


def imresize(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """MATLAB ``imresize(image, [out_h out_w])`` (bicubic) of a float HxW array, unrounded."""
    return _resize_matrix(image.shape[0], out_h) @ image @ _resize_matrix(image.shape[1], out_w).T


# --- LOE ----------------------------------------------------------------------


def loe(output, low) -> float:
    """Lightness order error of ``output`` against the low-light input ``low`` (lower is better).

    Wang et al. 2013 ("Naturalness preserved enhancement", eq. 22), as their MATLAB code:
    L = max(R, G, B) of each image, resized (bicubic) so the short side is 50 pixels and
    rounded to 8 bits; for every pixel, count the pixels whose order (>=) relative to it
    differs between the two images; the mean of these counts.
    """
    a, b = as_array255(output), as_array255(low)
    _check_pair(a, b)
    h, w = a.shape[:2]
    r = 50.0 / min(h, w)
    dh, dw = max(1, round(h * r)), max(1, round(w * r))
    la = np.clip(np.round(imresize(a.max(axis=2), dh, dw)), 0, 255).ravel()
    lb = np.clip(np.round(imresize(b.max(axis=2), dh, dw)), 0, 255).ravel()
    total = 0
    for start in range(0, la.size, 512):  # rows of the pair matrix in chunks, to bound memory
        oa = la[start:start + 512, None] >= la[None, :]
        ob = lb[start:start + 512, None] >= lb[None, :]
        total += int(np.count_nonzero(oa != ob))
    return total / la.size


# --- NIQE ---------------------------------------------------------------------

NIQE_BLOCK = 96
_NIQE_PARAMS = Path(__file__).parent / "data_files" / "niqe_pristine.npz"
_MATLAB_GREY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


@lru_cache(maxsize=1)
def _niqe_model() -> tuple[np.ndarray, np.ndarray]:
    with np.load(_NIQE_PARAMS) as data:
        return data["mu"].astype(np.float64), data["cov"].astype(np.float64)


@lru_cache(maxsize=1)
def _aggd_table() -> tuple[np.ndarray, np.ndarray]:
    from math import lgamma

    gam = np.arange(0.2, 10.001, 0.001)  # MATLAB 0.2:0.001:10, 9801 values
    lg = np.vectorize(lgamma)
    r_gam = np.exp(2 * lg(2 / gam) - lg(1 / gam) - lg(3 / gam))
    return gam, r_gam


def _aggd_fit(values: np.ndarray) -> tuple[float, float, float]:
    """Asymmetric generalised Gaussian fit by moment matching (Lasmar et al.), as
    ``estimateaggdparam.m``: returns (alpha, beta_left, beta_right); NaN when one side is empty."""
    gam, r_gam = _aggd_table()
    v = values.ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        left = math.sqrt(np.mean(v[v < 0] ** 2)) if np.any(v < 0) else math.nan
        right = math.sqrt(np.mean(v[v > 0] ** 2)) if np.any(v > 0) else math.nan
        gammahat = left / right
        rhat = np.mean(np.abs(v)) ** 2 / np.mean(v ** 2)
        rhatnorm = rhat * (gammahat ** 3 + 1) * (gammahat + 1) / (gammahat ** 2 + 1) ** 2
    if not math.isfinite(rhatnorm):
        return math.nan, math.nan, math.nan
    alpha = float(gam[np.argmin((r_gam - rhatnorm) ** 2)])
    ratio = math.sqrt(math.gamma(1 / alpha) / math.gamma(3 / alpha))
    return alpha, left * ratio, right * ratio


def _niqe_features(block: np.ndarray) -> list[float]:
    """The 18 features of one MSCN block (``computefeature.m``)."""
    alpha, bl, br = _aggd_fit(block)
    feat = [alpha, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):  # MATLAB circshift: np.roll
        alpha, bl, br = _aggd_fit(block * np.roll(block, shift, axis=(0, 1)))
        mean = (br - bl) * (math.gamma(2 / alpha) / math.gamma(1 / alpha)) if math.isfinite(alpha) else math.nan
        feat.extend([alpha, mean, bl, br])
    return feat


def _mscn(image: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients (eq. 1), 7x7 Gaussian sigma 7/6,
    replicated borders (MATLAB ``imfilter(..., 'replicate')``)."""
    import cv2

    g = _gaussian_1d(7, 7 / 6)
    window = np.outer(g, g)
    mu = cv2.filter2D(image, cv2.CV_64F, window, borderType=cv2.BORDER_REPLICATE)
    sq = cv2.filter2D(image * image, cv2.CV_64F, window, borderType=cv2.BORDER_REPLICATE)
    sigma = np.sqrt(np.abs(sq - mu * mu))
    return (image - mu) / (sigma + 1)


def niqe(image) -> float:
    """NIQE of one image (lower is better); NaN when it has fewer than 2x2 blocks of 96x96 pixels.

    As the MATLAB release (``computequality.m``): grey by ``rgb2gray`` (rounded to 8 bits),
    cropped to whole 96x96 blocks; 18 features per block at full and half scale (MATLAB
    bicubic), a Gaussian fitted to the 36-dimensional features (NaN rows dropped), and
    sqrt((mu_p - mu) inv((cov_p + cov) / 2) (mu_p - mu)^T) against the pristine model
    (eq. 10 of Mittal et al. 2013).
    """
    a = as_array255(image)
    grey = np.round(a @ _MATLAB_GREY) if a.ndim == 3 else a
    rows, cols = grey.shape[0] // NIQE_BLOCK, grey.shape[1] // NIQE_BLOCK
    if rows < 2 or cols < 2:
        return math.nan
    im = grey[:rows * NIQE_BLOCK, :cols * NIQE_BLOCK]
    scales = []
    for scale in (1, 2):
        mscn = _mscn(im)
        size = NIQE_BLOCK // scale
        feats = [_niqe_features(mscn[r * size:(r + 1) * size, c * size:(c + 1) * size])
                 for c in range(cols) for r in range(rows)]
        scales.append(np.array(feats))
        if scale == 1:
            im = imresize(im, im.shape[0] // 2, im.shape[1] // 2)
    dist = np.concatenate(scales, axis=1)
    mu_p, cov_p = _niqe_model()
    mu_d = np.nanmean(dist, axis=0)
    complete = dist[~np.isnan(dist).any(axis=1)]
    if len(complete) < 2:
        return math.nan
    cov_d = np.cov(complete, rowvar=False)
    diff = mu_p - mu_d
    return float(math.sqrt(diff @ np.linalg.pinv((cov_p + cov_d) / 2) @ diff))


# --- LPIPS --------------------------------------------------------------------

LPIPS_ENV = "LLDIFF_LPIPS_WEIGHTS"
# Conv layers of torchvision's ``alexnet().features`` (index: in, out, kernel, stride, padding);
# LPIPS taps the ReLU after each.
_ALEX_CONVS = {0: (3, 64, 11, 4, 2), 3: (64, 192, 5, 1, 2), 6: (192, 384, 3, 1, 1),
               8: (384, 256, 3, 1, 1), 10: (256, 256, 3, 1, 1)}
_ALEX_TAPS = (1, 4, 7, 9, 11)
_ALEX_CHANNELS = (64, 192, 384, 256, 256)


class LPIPS(nn.Module):
    """LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018, eq. 1).

    d(x, y) = sum_l mean_hw || w_l * (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|) ||^2,
    f_l the five AlexNet ReLU outputs, w_l the learned 1x1 linear layers.
    Takes two Nx3xHxW tensors in [0, 1] and returns N distances (0 for identical images).

    State dict (the single-file format of ``--lpips-weights``): ``features.{0,3,6,8,10}.{weight,bias}``
    exactly as torchvision's ``alexnet().features``, and ``lin{0..4}.weight`` of shape 1xCx1x1.
    """

    # ScalingLayer of the lpips package: inputs in [-1, 1] are standardised with these.
    shift = (-0.030, -0.088, -0.188)
    scale = (0.458, 0.448, 0.450)

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(12):
            if i in _ALEX_CONVS:
                cin, cout, k, s, p = _ALEX_CONVS[i]
                layers.append(nn.Conv2d(cin, cout, k, stride=s, padding=p))
            elif i in _ALEX_TAPS:
                layers.append(nn.ReLU())
            else:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
        self.features = nn.Sequential(*layers)
        for i, c in enumerate(_ALEX_CHANNELS):
            self.add_module(f"lin{i}", nn.Conv2d(c, 1, 1, bias=False))
        self.register_buffer("_shift", torch.tensor(self.shift).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_scale", torch.tensor(self.scale).view(1, 3, 1, 1), persistent=False)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five unit-normalised AlexNet feature maps of x (Nx3xHxW in [0, 1])."""
        x = ((x * 2 - 1) - self._shift) / self._scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _ALEX_TAPS:
                out.append(x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + 1e-10))
            if i == _ALEX_TAPS[-1]:
                break
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = 0
        for i, (fx, fy) in enumerate(zip(self.taps(x), self.taps(y))):
            total = total + getattr(self, f"lin{i}")((fx - fy) ** 2).mean(dim=(2, 3))
        return total.view(-1)


def _canonical_lpips_key(key: str) -> str | None:
    """Map the key names of torchvision, the lpips package and ours to ours; None to drop."""
    if key.startswith("module."):
        key = key[len("module."):]
    if key.startswith("classifier.") or key.startswith("scaling_layer."):
        return None
    parts = key.split(".")
    if parts[0] == "net" and len(parts) == 4 and parts[1].startswith("slice"):
        return f"features.{parts[2]}.{parts[3]}"  # lpips package: net.slice1.0.weight
    if parts[0].startswith("lin") and parts[-1] == "weight":
        return f"{parts[0]}.weight"  # lpips package: lin0.model.1.weight
    return key


def lpips_state_dict(*state_dicts: dict) -> dict:
    """Merge state dicts (torchvision alexnet, the lpips package's alex.pth, ours) into our key names."""
    merged = {}
    for sd in state_dicts:
        for key, value in sd.items():
            new = _canonical_lpips_key(key)
            if new is not None:
                merged[new] = value
    return merged


def merge_lpips_weights(alexnet_path: Path, lin_path: Path, out_path: Path) -> Path:
    """Write the single-file LPIPS weights from torchvision's AlexNet checkpoint
    (``alexnet-owt-7be5be79.pth``) and the lpips package's ``weights/v0.1/alex.pth``."""
    sd = lpips_state_dict(_torch_load(Path(alexnet_path)), _torch_load(Path(lin_path)))
    LPIPS().load_state_dict(sd, strict=True)  # refuse to write an incomplete file
    torch.save(sd, out_path)
    return Path(out_path)


def _torch_load(path: Path) -> dict:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LldiffError(f"cannot load LPIPS weights {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise LldiffError(f"LPIPS weights {path} hold no state dict")
    return sd


def find_lpips_weights(path: Path | str | None = None) -> list[Path]:
    """Where LPIPS weights are: the files to merge, or [] when none are to be had.

    In order: ``path`` (an explicit file, an error if missing), ``$LLDIFF_LPIPS_WEIGHTS``,
    then torchvision's AlexNet in the torch hub cache together with the linear layers
    of an installed ``lpips`` package. Nothing is ever downloaded.
    """
    explicit = path or os.environ.get(LPIPS_ENV)
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            source = "--lpips-weights" if path else f"${LPIPS_ENV}"
            raise LldiffError(f"LPIPS weights not found: {p} (from {source})")
        return [p]
    alexnet = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
    lin = _lpips_package_file()
    if alexnet.is_file() and lin is not None:
        return [alexnet, lin]
    return []


def _lpips_package_file() -> Path | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec("lpips")  # locates the package without importing it
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "weights" / "v0.1" / "alex.pth"
        if candidate.is_file():
            return candidate
    return None


def load_lpips(paths: list[Path], device: torch.device | str = "cpu") -> LPIPS:
    """An LPIPS network with the weights merged from ``paths``, in eval mode on ``device``.

    Loads with ``weights_only=True`` and ``strict=True``: a file that lacks a layer is an error.
    """
    model = LPIPS()
    sd = lpips_state_dict(*(_torch_load(Path(p)) for p in paths))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        names = ", ".join(str(p) for p in paths)
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise LldiffError(f"LPIPS weights {names} do not fit AlexNet-LPIPS v0.1: {first} "
                          f"(expected keys features.{{0,3,6,8,10}}.weight/bias and lin0..lin4.weight)") from None
    return model.eval().to(device)


@torch.no_grad()
def lpips(model: LPIPS, output, target) -> float:
    """LPIPS distance between two images (either input form), each rounded to 8 bits first."""
    device = next(model.parameters()).device
    x = torch.from_numpy(as_array255(output) / 255.0).permute(2, 0, 1)[None].float().to(device)
    y = torch.from_numpy(as_array255(target) / 255.0).permute(2, 0, 1)[None].float().to(device)
    if x.shape != y.shape:
        raise LldiffError(f"image sizes differ: {tuple(x.shape[2:])} vs {tuple(y.shape[2:])}")
    return float(model(x, y)[0])
