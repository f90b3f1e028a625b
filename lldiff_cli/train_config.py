"""The typed training configuration (the sections of a train config YAML) and its checks.

:func:`check_config` checks every value the training loop relies on, and names the first bad one
with the values it allows, before any data is read.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from lldiff_cli.config import to_dict
from lldiff_cli.darken import MODES as DARKEN_MODES, LvRanges, NoiseRanges
from lldiff_cli.errors import LldiffError
from lldiff_cli.model import ModelConfig, build_model

NO_PAIRS = "none"  # data.layout for photos-only training


@dataclass
class DarkenConfig:
    """How data.photos are darkened into training inputs (see darken.py); ranges are [MIN, MAX]."""

    mode: str = "lv"               # lv: beta * (alpha * x) ** gamma (Lv et al.); scale: factor * x
    # Defaults come from darken.py's ranges (the papers' values), so they live in one place.
    alpha: list[float] = field(default_factory=lambda: list(LvRanges().alpha))
    beta: list[float] = field(default_factory=lambda: list(LvRanges().beta))
    gamma: list[float] = field(default_factory=lambda: list(LvRanges().gamma))
    factor: float = 0.5            # scale mode
    noise: bool = True             # Poisson shot + Gaussian read noise in linear light
    gain: list[float] = field(default_factory=lambda: list(NoiseRanges().gain))
    read_noise: list[float] = field(default_factory=lambda: list(NoiseRanges().read_noise))

    def lv_ranges(self) -> LvRanges:
        return LvRanges(alpha=_pair(self.alpha, "alpha"), beta=_pair(self.beta, "beta"),
                        gamma=_pair(self.gamma, "gamma"))

    def noise_ranges(self) -> Optional[NoiseRanges]:
        if not self.noise:
            return None
        return NoiseRanges(gain=_pair(self.gain, "gain"), read_noise=_pair(self.read_noise, "read_noise"))


def _pair(values: list[float], name: str) -> tuple[float, float]:
    if len(values) != 2:
        raise LldiffError(f"data.darken.{name} must be [MIN, MAX], got {values}")
    return float(values[0]), float(values[1])


@dataclass
class DataConfig:
    layout: str = "LOL"            # paired data: LOL, LOLv2-real, LOLv2-syn, VE-LOL (under root), paired
                                   # (the folders low and high), or none (photos only)
    root: str = "data"             # data root for named layouts
    split: str = "train"
    low: Optional[str] = None      # paired folders (layout: paired), matched by name as in lldiff eval
    high: Optional[str] = None
    photos: Optional[str] = None   # a folder of normal-light photos (searched recursively), darkened on the fly
    synthetic_ratio: float = 0.5   # share of each batch made from photos when there are pairs too
    darken: DarkenConfig = field(default_factory=DarkenConfig)
    max_side: int = 0              # images whose longer side exceeds this are shrunk to it when decoded; 0: never
    val_fraction: float = 0.1      # held out, in blocks of consecutive names (whole scenes)
    val_block: int = 10
    val_singles: int = 0           # and this many single pairs spread over the rest, their neighbours
                                   # kept in training (LOL's own test protocol: scenes seen in training)
    crop: int = 128
    batch_size: int = 8
    workers: int = 0               # threads that build batches ahead of the step (and decode at start); 0: none
    cache_dir: str = "cache"       # unused; kept so that older config.yaml files still load


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.0
    warmup: int = 200
    max_steps: int = 20000
    grad_clip: float = 1.0
    ema_decay: float = 0.999


@dataclass
class LossWeights:
    noise: float = 1.0
    x0: float = 1.0
    anchor: float = 1.0
    exposure: float = 1.0
    detail: float = 1.0
    tv: float = 0.05
    content: float = 1.0
    dfpl: float = 0.1
    sampled: float = 1.0           # content loss on the sampler's output (train_sampler_every > 0)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    out_dir: str = "runs/default"
    seed: int = 0
    log_every: int = 50
    val_every: int = 1000
    val_images: int = 0            # 0: the whole held-out split
    ckpt_every: int = 500
    train_sampler_every: int = 0   # DiffLL's strategy: every k-th step also run the sampler; 0: never
    bf16: bool = False             # CPU autocast to bfloat16
    amp: bool = True               # CUDA autocast to float16 with a GradScaler
    compile: bool = False          # torch.compile the UNet (in place: checkpoints keep their keys)
    threads: int = 0               # torch threads on the CPU; 0 leaves PyTorch's choice
    init: str = ""                 # a checkpoint (.pt) whose weights (EMA) start a new run where names and shapes match
    train_only: list[str] = field(default_factory=list)  # parameter name prefixes to train, e.g. [hfrms]; []: all


def check_config(cfg: TrainConfig, resume: bool = False) -> None:
    """Raise LldiffError naming the first bad value; everything the loop relies on is checked here.
    A resumed run does not need its ``init`` checkpoint any more (its weights are in last.pt)."""
    from lldiff_cli.data import LAYOUTS

    for key, value in _numbers(to_dict(cfg)):
        if isinstance(value, float) and not math.isfinite(value):
            raise LldiffError(f"{key} must be a finite number, got {value}")
    o = cfg.optim
    if o.lr <= 0:
        raise LldiffError(f"optim.lr must be more than 0, got {o.lr}")
    if not 0 <= o.min_lr <= o.lr:  # the cosine decays from lr to min_lr (get_lr)
        raise LldiffError(f"optim.min_lr must be in [0, optim.lr] = [0, {o.lr}], got {o.min_lr}")
    if o.weight_decay < 0:
        raise LldiffError(f"optim.weight_decay must be 0 or more, got {o.weight_decay}")
    if o.grad_clip <= 0:
        raise LldiffError(f"optim.grad_clip must be more than 0, got {o.grad_clip}")
    if not 0 <= o.ema_decay < 1:
        raise LldiffError(f"optim.ema_decay must be in [0, 1), got {o.ema_decay}")
    for name, weight in asdict(cfg.loss).items():
        if weight < 0:
            raise LldiffError(f"loss.{name} must be 0 or more, got {weight}")
    if cfg.threads < 0:
        raise LldiffError(f"threads must be 0 (PyTorch's choice) or more, got {cfg.threads}")
    if cfg.val_images < 0:
        raise LldiffError(f"val_images must be 0 (all) or more, got {cfg.val_images}")
    d = cfg.data
    layouts = [*LAYOUTS, "paired", NO_PAIRS]
    if d.layout.lower() not in [name.lower() for name in layouts]:
        raise LldiffError(f"unknown data.layout {d.layout!r}; allowed: {', '.join(layouts)}")
    if d.layout.lower() == "paired" and (not d.low or not d.high):
        raise LldiffError("data.layout 'paired' needs data.low and data.high folders")
    if d.layout.lower() == NO_PAIRS and not d.photos:
        raise LldiffError(f"no training data: data.layout is {NO_PAIRS!r} and data.photos is not set")
    if d.split not in ("train", "test"):
        raise LldiffError(f"unknown data.split {d.split!r}; allowed: train, test")
    if not 0 <= d.synthetic_ratio <= 1:
        raise LldiffError(f"data.synthetic_ratio must be in [0, 1], got {d.synthetic_ratio}")
    if d.darken.mode not in DARKEN_MODES:
        raise LldiffError(f"unknown data.darken.mode {d.darken.mode!r}; allowed: {', '.join(DARKEN_MODES)}")
    if not 0 < d.darken.factor <= 1:
        raise LldiffError(f"data.darken.factor must be in (0, 1], got {d.darken.factor}")
    try:
        d.darken.lv_ranges(), d.darken.noise_ranges()  # their constructors check the ranges
    except LldiffError as exc:
        raise LldiffError(f"data.darken: {exc}") from None
    if not 0 <= d.val_fraction < 1:
        raise LldiffError(f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
    if d.val_singles < 0:
        raise LldiffError(f"data.val_singles must be 0 or more, got {d.val_singles}")
    for name in ("crop", "batch_size", "val_block"):
        if getattr(d, name) < 1:
            raise LldiffError(f"data.{name} must be at least 1, got {getattr(d, name)}")
    if d.workers < 0:
        raise LldiffError(f"data.workers must be 0 or more, got {d.workers}")
    if d.max_side and d.max_side < d.crop:
        raise LldiffError(f"data.max_side ({d.max_side}) must be 0 or at least data.crop ({d.crop})")
    for name in ("log_every", "val_every", "ckpt_every"):
        if getattr(cfg, name) < 1:
            raise LldiffError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.optim.max_steps < 1 or cfg.optim.warmup < 0:
        raise LldiffError(f"optim.max_steps must be at least 1 and optim.warmup at least 0, "
                          f"got {cfg.optim.max_steps} and {cfg.optim.warmup}")
    if cfg.train_sampler_every < 0:
        raise LldiffError(f"train_sampler_every must be 0 (off) or more, got {cfg.train_sampler_every}")
    if cfg.init and not resume and not Path(cfg.init).is_file():
        raise LldiffError(f"init checkpoint not found: {cfg.init}")
    model = build_model(cfg.model)
    names = [name for name, _ in model.named_parameters()]
    for prefix in cfg.train_only:
        if not any(_under(name, prefix) for name in names):
            modules = sorted({name.split(".")[0] for name in names})
            raise LldiffError(f"train_only: no parameters under {prefix!r}; the model has {', '.join(modules)}")
    trains_refiner = any(_under(name, "refiner") and trains(name, cfg.train_only) for name in names)
    if trains_refiner and cfg.train_sampler_every == 0:
        raise LldiffError("model.refiner learns only from the sampled term (the loss on the sampler's output): "
                          "set train_sampler_every to 1 or more, or leave the refiner out of train_only")
    only_refiner = all(_under(name, "refiner") for name in names if trains(name, cfg.train_only))
    if trains_refiner and only_refiner and cfg.train_sampler_every > 1:
        raise LldiffError(f"train_only=[refiner] trains nothing on the steps that do not sample "
                          f"(train_sampler_every={cfg.train_sampler_every}): set train_sampler_every=1")
    multiple = model.multiple
    if d.crop % multiple:
        raise LldiffError(f"data.crop ({d.crop}) must be a multiple of {multiple} for this model")
    # The exposure net takes bands of 8x8 or more (networks/exposure.py); on smaller ones its last
    # convolution sees 1x1 inputs, where oneDNN's bfloat16 backward reads uninitialised memory.
    smallest = 8 * 2 ** cfg.model.levels
    if d.crop < smallest:
        raise LldiffError(f"data.crop ({d.crop}) must be at least {smallest} for this model "
                          f"(the exposure net needs a band of 8x8: crop / 2**levels)")


def _numbers(value, key: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, value) of every leaf of a config as plain dicts and lists: a.b[1]."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{key}[{i}]")
    else:
        yield key, value


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def trains(name: str, train_only: list[str]) -> bool:
    """Whether parameter ``name`` learns under ``train_only`` (its prefixes; empty: everything)."""
    return not train_only or any(_under(name, prefix) for prefix in train_only)


