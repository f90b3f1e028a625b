"""Enhancing a folder: stream the files, run each through the model, write atomically.

cli.enhance -> enhance_folder -> enhance_image: tiling.enhance_tensor (pad / tile) -> model.enhance,
then tone.keep_highlights -> images.write_like
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import torch

from lldiff_cli import schedule as S
from lldiff_cli.batch import (BatchReport, Inputs, ItemStatus, command_inputs, prepare_output_dir,
                              refuse_shared_outputs, run_batch)
from lldiff_cli.device import pick_precision
from lldiff_cli.images import Image, check_format, output_path, write_like
from lldiff_cli.model import check_ensemble
from lldiff_cli.tiling import DEFAULT_OVERLAP, enhance_tensor
from lldiff_cli.tone import keep_highlights, shown_exposure


@dataclass
class EnhanceSettings:
    """How to enhance, as asked: None is the model's own choice. :meth:`resolve` decides every
    choice once, for one model on one device; :func:`enhance_image` takes either."""

    steps: Optional[int] = None        # None: the model's default
    eta: Optional[float] = None
    seed: int = 0
    exposure: Optional[float] = None   # None: the model's own estimate ("auto"), decided per image
    tile: Optional[int] = None
    overlap: int = DEFAULT_OVERLAP
    max_pixels: Optional[int] = None   # None: the model's default bound (tiling.default_max_pixels)
    precision: str = "auto"            # see device.pick_precision; float16 needs in_precision(model)
    batch_size: int = 1                # tiles per forward pass
    ensemble: Optional[int] = None     # mirrored copies averaged; None: the model's default
    keep_highlights: Optional[bool] = None  # tone.keep_highlights after the model; None: the model's
    resolved: bool = field(default=False, repr=False, compare=False)  # set by resolve() alone

    def __post_init__(self):
        if self.ensemble is not None:  # refused before any model loads: every image would fail on it
            check_ensemble(self.ensemble, "--ensemble")

    def resolve(self, model, device: torch.device) -> "EnhanceSettings":
        """These settings with every choice made for ``model`` on ``device``, once, before any
        image: steps, eta, ensemble and keep_highlights the model's where None (checked: a step
        count its schedule lacks is an LldiffError), the precision :func:`device.pick_precision`'s
        (checked against the device). The exposure stays as it is: None is decided per image
        (:func:`enhance_image`). A stand-in model without a config (a test's) keeps its own
        defaults. Resolved settings resolve to themselves."""
        if self.resolved:
            return self
        precision = pick_precision(self.precision, device)
        config = getattr(model, "config", None)
        if config is None:
            return replace(self, precision=precision, keep_highlights=bool(self.keep_highlights), resolved=True)
        steps = config.steps if self.steps is None else self.steps
        S.ddim_timesteps(model.schedule.num_timesteps, steps, config.spacing)
        return replace(self, steps=steps, eta=config.eta if self.eta is None else self.eta,
                       ensemble=config.ensemble if self.ensemble is None else self.ensemble,
                       keep_highlights=config.keep_highlights if self.keep_highlights is None else self.keep_highlights,
                       precision=precision, resolved=True)


def in_precision(model, precision: str):
    """The model as ``precision`` (resolved: :meth:`EnhanceSettings.resolve`) runs it: float16 casts
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
    (padded or tiled by tiling.enhance_tensor), then, with ``settings.keep_highlights``, the
    input's well-exposed parts put back (tone.keep_highlights). ``settings`` are resolved
    (:meth:`EnhanceSettings.resolve`) unless they already are.

    The target exposure is decided here, once per image, by one rule whatever its size:
    ``settings.exposure``, else ``model.auto_exposure`` (on a copy at most 600 pixels a side,
    what calibrate.fit_exposure fits), raised by tone.shown_exposure when highlights are kept;
    tiles then get their shares of it. ``on_tile(done,
    total)`` reports progress (see tiling.enhance_tensor)."""
    settings = settings.resolve(model, device)
    x = image.to(device)
    if settings.precision == "float16":
        x = x.half()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.precision == "bfloat16"):
        exposure = settings.exposure
        if exposure is None and hasattr(model, "auto_exposure"):
            exposure = float(model.auto_exposure(x))
            if settings.keep_highlights:  # the model's part is shown only where the input is dark
                exposure = shown_exposure(x, exposure)
        out = enhance_tensor(model, x, tile=settings.tile, overlap=settings.overlap,
                             max_pixels=settings.max_pixels, exposure=exposure, batch_size=settings.batch_size,
                             steps=settings.steps, eta=settings.eta, seed=settings.seed, ensemble=settings.ensemble,
                             on_tile=on_tile)
    out = out.float()
    if settings.keep_highlights:  # on the whole image, after tiling: no tile edge can show in it
        with torch.no_grad():
            out = keep_highlights(image.to(device).float(), out)
    return out.cpu()


def plan_folder(in_path: Path, out_dir: Path, *, recursive: bool = False, fmt: Optional[str] = None) -> Inputs:
    """The inputs of a batch into ``out_dir`` (batch.command_inputs: a folder's images, or one
    image), refused before any model loads (LldiffError) on what every image would fail on: an
    unknown output format, two inputs that would be written to one output (a.png and a.jpg
    with ``fmt`` png)."""
    check_format(fmt)
    inputs = command_inputs(in_path, out_dir, recursive)
    refuse_shared_outputs(inputs.files, lambda rel: output_path(out_dir, rel, fmt))
    return inputs


def enhance_folder(model, inputs: Inputs, out_dir: Path, *, device: torch.device, settings: EnhanceSettings,
                   fmt: Optional[str] = None, overwrite: bool = False,
                   on_start: Optional[Callable[[int], None]] = None,
                   on_item: Optional[Callable[[Path, ItemStatus], None]] = None) -> BatchReport:
    """Enhance ``inputs`` (:func:`plan_folder`'s, or a shard's share of them: batch.Inputs.share)
    into ``out_dir``, same relative paths, in format ``fmt``; see batch.run_batch (``on_start``,
    ``on_item``: once the settings are resolved and ``out_dir`` made). The report's ``left_out``
    are the inputs'."""
    settings = settings.resolve(model, device)
    prepare_output_dir(inputs.folder, out_dir)

    def process(rel: Path, image: Image) -> None:
        out = enhance_image(model, image.rgb, settings, device)
        write_like(output_path(out_dir, rel, fmt), out, image)

    report = run_batch(inputs.folder, inputs.files, outputs=lambda rel: [output_path(out_dir, rel, fmt)],
                       process=process, overwrite=overwrite, on_start=on_start, on_item=on_item)
    report.left_out = inputs.left_out
    return report
