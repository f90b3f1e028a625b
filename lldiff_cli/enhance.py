"""Enhancing a folder: stream the files, run each through the model, write atomically.

cli.enhance -> enhance_folder -> enhance_image: tiling.enhance_tensor (pad / tile) -> model.enhance,
then tone.keep_highlights -> images.write_like
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from lldiff_cli import schedule as S
from lldiff_cli.batch import BatchReport, list_inputs, prepare_output_dir, refuse_shared_outputs, run_batch
from lldiff_cli.device import pick_precision
from lldiff_cli.images import Image, check_format, output_path, write_like
from lldiff_cli.tiling import DEFAULT_OVERLAP, enhance_tensor
from lldiff_cli.tone import keep_highlights


@dataclass
class EnhanceSettings:
    steps: Optional[int] = None        # None: the model's default
    eta: Optional[float] = None
    seed: int = 0
    exposure: Optional[float] = None   # None: the model's own estimate ("auto")
    tile: Optional[int] = None
    overlap: int = DEFAULT_OVERLAP
    max_pixels: Optional[int] = None   # None: the model's default bound (tiling.default_max_pixels)
    precision: str = "auto"            # see device.pick_precision; float16 needs in_precision(model)
    batch_size: int = 1                # tiles per forward pass
    ensemble: Optional[int] = None     # mirrored copies averaged; None: the model's default
    keep_highlights: Optional[bool] = None  # tone.keep_highlights after the model; None: the model's


def in_precision(model, precision: str):
    """The model as ``precision`` (a :func:`device.pick_precision` result) runs it: float16 casts
    the weights; bfloat16 keeps float32 weights and autocasts in :func:`enhance_image`. On the
    CPU and CUDA its weights are also laid out channels-last, which its convolutions then keep
    (oneDNN's and cuDNN's own layout): on 2 CPU cores in bfloat16, one 640x640 image took 1.19 s
    instead of 2.06 s, most of the rest being layout copies; outputs differ by rounding only."""
    model = model.half() if precision == "float16" else model
    weight = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    if weight is not None and weight.device.type in ("cpu", "cuda"):  # MPS lacks some channels-last kernels
        model = model.to(memory_format=torch.channels_last)
    return model


def enhance_image(model, image: torch.Tensor, settings: EnhanceSettings, device: torch.device,
                  on_tile: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """1x3xHxW [0, 1] (any device) -> enhanced 1x3xHxW [0, 1] on the CPU: the model's output
    (padded or tiled by tiling.enhance_tensor), then, with ``settings.keep_highlights`` (None:
    the model's config), the input's well-exposed parts put back (tone.keep_highlights).

    The target exposure is decided here, once per image, by one rule whatever its size:
    ``settings.exposure``, else ``model.auto_exposure`` (on a copy at most 600 pixels a side,
    what calibrate.fit_exposure fits); tiles then get their shares of it. ``on_tile(done,
    total)`` reports progress (see tiling.enhance_tensor)."""
    precision = pick_precision(settings.precision, device)
    x = image.to(device)
    if precision == "float16":
        x = x.half()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
        exposure = settings.exposure
        if exposure is None and hasattr(model, "auto_exposure"):
            exposure = float(model.auto_exposure(x))
        out = enhance_tensor(model, x, tile=settings.tile, overlap=settings.overlap,
                             max_pixels=settings.max_pixels, exposure=exposure, batch_size=settings.batch_size,
                             steps=settings.steps, eta=settings.eta, seed=settings.seed, ensemble=settings.ensemble,
                             on_tile=on_tile)
    out = out.float()
    keep = settings.keep_highlights
    if keep is None:
        keep = getattr(getattr(model, "config", None), "keep_highlights", False)
    if keep:  # on the whole image, after tiling: no tile edge can show in it
        with torch.no_grad():
            out = keep_highlights(image.to(device).float(), out)
    return out.cpu()


def check_settings(model, settings: EnhanceSettings, fmt: Optional[str] = None) -> None:
    """Refuse, once and before any image, settings every image would fail on (LldiffError):
    a step count the model's schedule does not have, an unknown output format."""
    check_format(fmt)
    S.ddim_timesteps(model.schedule.num_timesteps, settings.steps or model.config.steps, model.config.spacing)


def enhance_folder(model, in_dir: Path, out_dir: Path, *, device: torch.device, settings: EnhanceSettings,
                   recursive: bool = False, fmt: Optional[str] = None, overwrite: bool = False,
                   on_item: Optional[Callable[[Path, str], None]] = None,
                   files: Optional[list[Path]] = None) -> BatchReport:
    """Enhance every image of ``in_dir`` into ``out_dir`` (same relative paths); see batch.run_batch."""
    check_settings(model, settings, fmt)
    files = list_inputs(in_dir, out_dir, recursive) if files is None else files
    refuse_shared_outputs(files, lambda rel: output_path(out_dir, rel, fmt))
    prepare_output_dir(in_dir, out_dir)

    def process(rel: Path, image: Image) -> None:
        out = enhance_image(model, image.rgb, settings, device)
        write_like(output_path(out_dir, rel, fmt), out, image)

    return run_batch(in_dir, files, outputs=lambda rel: [output_path(out_dir, rel, fmt)],
                     process=process, overwrite=overwrite, on_item=on_item)
