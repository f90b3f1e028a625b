"""The training loop of lldiff, flat and top to bottom (after nanoGPT's train.py).

get_lr(step) -> batch -> weighted loss terms -> backward -> clip -> AdamW -> EMA ->
log -> validate (EMA weights, PSNR on a held-out split) -> checkpoint.

Determinism: batch ``step`` of process ``rank`` is a pure function of (seed, step, rank), and so
are the loss's draws (timesteps, noise, dropout). A pool of threads can therefore build batches
ahead of the loop, and a checkpoint needs no data-RNG state: model, EMA, optimiser, AMP scaler
and step are enough for ``--resume`` to continue bit for bit.

Data (the ``data`` section): image pairs of any layout ``lldiff eval`` knows (data.py), and/or a
folder of normal-light photos darkened on the fly by :func:`lldiff_cli.darken.random_pair`, mixed
by ``data.synthetic_ratio``. Images are decoded once into uint8 tensors and cropped per batch.

Several GPUs: launched by ``torchrun``, each process trains a DistributedDataParallel replica on
its own batches (the rank is part of the batch seed); rank 0 validates, logs and writes checkpoints.
"""

from __future__ import annotations

import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lldiff_cli.config import dump_yaml, to_dict
from lldiff_cli.darken import MODES as DARKEN_MODES, LvRanges, NoiseRanges, random_pair, seed_for
from lldiff_cli.device import distributed_env, process_device
from lldiff_cli.errors import ImageReadError, LldiffError
from lldiff_cli.model import ModelConfig, WaveletDiffusion, build_model, load_checkpoint, save_checkpoint, ssim_torch

NO_PAIRS = "none"  # data.layout for photos-only training
PHOTOS = "photos/"  # how a held-out darkened photo's name starts in TrainData.val_names


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
    trains_refiner = any(_under(name, "refiner") and _trains(name, cfg.train_only) for name in names)
    if trains_refiner and cfg.train_sampler_every == 0:
        raise LldiffError("model.refiner learns only from the sampled term (the loss on the sampler's output): "
                          "set train_sampler_every to 1 or more, or leave the refiner out of train_only")
    only_refiner = all(_under(name, "refiner") for name in names if _trains(name, cfg.train_only))
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


def _trains(name: str, train_only: list[str]) -> bool:
    """Whether parameter ``name`` learns under ``train_only`` (its prefixes; empty: everything)."""
    return not train_only or any(_under(name, prefix) for prefix in train_only)


def initialise_from(model: nn.Module, path: Path) -> tuple[int, list[str]]:
    """Copy a checkpoint's weights (EMA when it has them) into ``model`` wherever a tensor's name
    and shape match, for a new run that grows or fine-tunes a trained one. Returns (tensors
    copied, names left at their fresh initialisation)."""
    payload = load_checkpoint(path)
    source = payload.get("ema_state_dict") or payload["state_dict"]
    own = model.state_dict()
    matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise LldiffError(f"{path}: none of its weights fit this model")
    model.load_state_dict(matched, strict=False)
    return len(matched), [k for k in own if k not in matched]


RUN_FILES = ("config.yaml", "split.json", "log.jsonl", "last.pt", "best.pt", "curve.png")  # what a run writes
LOCK = "train.lock"  # in out_dir while a run holds it (lock.py): "pid N on HOST"


def check_out_dir(cfg: TrainConfig, resume: bool) -> None:
    """Refuse to start over a run (its last.pt), and to resume without one."""
    last = Path(cfg.out_dir) / "last.pt"
    if resume and not last.is_file():
        raise LldiffError(f"nothing to resume: no {last}")
    if not resume and last.exists():
        raise LldiffError(f"{cfg.out_dir} already holds a run ({last}); pass --resume to continue it, "
                          "or set out_dir=... to start another")


@dataclass
class RunDir:
    """out_dir as :func:`hold_out_dir` found it, so that a run that fails before its first step
    leaves it so: ``found`` maps the run files there to their content where :func:`start_run`
    may rewrite them (config.yaml, split.json on --resume), else None."""

    path: Path
    found: dict[str, Optional[bytes]]
    started: bool = False  # the first step is done, or last.pt saved: from then on the files stay

    def undo(self) -> None:
        """Remove the run files this run made and put back those it rewrote."""
        from lldiff_cli.atomic import atomic_write

        for name in RUN_FILES:
            path, before = self.path / name, self.found.get(name)
            if name not in self.found:
                path.unlink(missing_ok=True)
            elif before is not None and not (path.is_file() and path.read_bytes() == before):
                with atomic_write(path) as tmp:
                    tmp.write_bytes(before)


_HELD: dict[Path, RunDir] = {}  # out_dirs this process holds, by resolved path


@contextmanager
def hold_out_dir(cfg: TrainConfig, resume: bool) -> Iterator[RunDir]:
    """Hold out_dir for one run, from its start to its end: make it, lock it (another run holding
    it is an error, one killed is not: lock.py), and check under the lock that the run may write
    there: a resumed run where last.pt is, a new run only where no run file is (a config.yaml that
    already says ``cfg`` excepted: the run keeps it as its own). A run never replaces files it did
    not make: when the block fails before ``started``, :meth:`RunDir.undo` runs, and a folder made
    here and left empty goes too. In a process that already holds out_dir (the CLI around
    :func:`train`), it yields that hold and does nothing more."""
    from lldiff_cli.batch import make_folder
    from lldiff_cli.lock import LockHeld, hold

    out = Path(cfg.out_dir)
    key = out.resolve()
    if key in _HELD:
        yield _HELD[key]
        return
    with ExitStack() as stack:
        if not out.exists():
            stack.callback(_remove_if_empty, out)  # last, once the lock file is gone
        make_folder(out, f"out_dir {out}")
        try:
            stack.enter_context(hold(out / LOCK))
        except LockHeld as exc:
            raise LldiffError(f"{out} is in use by another run ({exc.holder or 'a process'}); wait for it "
                              "to end, or set out_dir=... to start another") from None
        check_out_dir(cfg, resume)  # again: no other run can change out_dir now
        theirs = [] if resume else [name for name in RUN_FILES if (out / name).exists()
                                    and not (name == "config.yaml" and _says(out / name, cfg))]
        if theirs:
            raise LldiffError(f"{out} already holds {', '.join(theirs)} (of a run that saved no checkpoint, or "
                              "your own), which this run would replace: move them away, or set out_dir=... "
                              "to start another run")
        rewritten = [out / "config.yaml", out / "split.json"]
        run = RunDir(out, {path.name: path.read_bytes() if path in rewritten and path.is_file() else None
                           for path in (out / name for name in RUN_FILES) if path.exists()})
        _HELD[key] = run
        stack.callback(_HELD.pop, key)
        try:
            yield run
        except BaseException:
            if not run.started:
                run.undo()
            raise


def _says(path: Path, cfg: TrainConfig) -> bool:
    """Whether the config file at ``path`` loads to ``cfg`` (so a run need not write it)."""
    from lldiff_cli.config import load_config

    try:
        return load_config(TrainConfig, path) == cfg
    except LldiffError:
        return False


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (or gone): it holds a run, or files of others
        pass


def start_run(cfg: TrainConfig, data: TrainData) -> None:
    """Write the run's record in out_dir (held: :func:`hold_out_dir`): config.yaml, unless it
    says ``cfg`` already (a config kept there, or a resumed run's own: then it stays as it is,
    comments and all), and split.json (the held-out names)."""
    import json

    from lldiff_cli.atomic import atomic_write

    out_dir = Path(cfg.out_dir)
    if not _says(out_dir / "config.yaml", cfg):
        dump_yaml(to_dict(cfg), out_dir / "config.yaml")
    with atomic_write(out_dir / "split.json") as tmp:
        tmp.write_text(json.dumps({"val": data.val_names, "singles": data.val_singles}, indent=1) + "\n")


def get_lr(step: int, cfg: OptimConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr at max_steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.max_steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


# --- data ---------------------------------------------------------------------------


@dataclass
class TrainData:
    """Decoded training data: uint8 3xHxW tensors, each at least data.crop on both sides.

    pairs: (low, high) for training; photos: normal-light images, darkened per batch;
    val_pairs / val_names: the held-out split (real pairs, then photos darkened with a fixed seed);
    val_singles: the names of val_names held out as single images (data.val_singles), not blocks;
    skipped: (file, reason) of every file left out.
    """

    pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    photos: list[torch.Tensor] = field(default_factory=list)
    val_pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    val_names: list[str] = field(default_factory=list)
    val_singles: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def load_training_data(cfg: TrainConfig) -> TrainData:
    """Find, split and decode the configured data (data.py resolves every paired layout)."""
    from lldiff_cli.data import load_dataset, split_by_blocks, split_singles
    from lldiff_cli.images import list_images

    d, out = cfg.data, TrainData()
    if d.layout.lower() != NO_PAIRS:
        if d.layout.lower() == "paired":
            for folder, key in ((d.low, "data.low"), (d.high, "data.high")):
                if not Path(folder).is_dir():
                    raise LldiffError(f"{key} folder not found: {folder}")
            dataset = load_dataset(low=Path(d.low), high=Path(d.high))
        else:
            try:
                dataset = load_dataset(d.layout, root=Path(d.root), split=d.split)
            except LldiffError as exc:
                hint = "; to train on data.photos alone, set data.layout=none" if d.photos else ""
                raise LldiffError(f"{exc}{hint}") from None
        out.skipped += dataset.problems
        if not dataset.pairs:
            raise LldiffError(f"no image pairs in {dataset.description}")
        names = [p.name for p in dataset.pairs]
        train_idx, val_idx = split_by_blocks(names, d.val_fraction, d.val_block)
        train_idx, singles = split_singles(names, train_idx, d.val_singles)
        out.val_singles = [names[i] for i in singles]
        val_idx += singles
        held = set(val_idx)
        decoded = _map(lambda p: _read_training_pair(p, d.max_side), dataset.pairs, d.workers)
        for i in train_idx + val_idx:
            name, item = dataset.pairs[i].name, decoded[i]
            if isinstance(item, str):
                out.skipped.append((name, item))
            elif i in held:
                out.val_pairs.append(item)
                out.val_names.append(name)
            elif min(item[0].shape[-2:]) < d.crop:
                out.skipped.append((name, _too_small(item[0], d.crop)))
            else:
                out.pairs.append(item)
    if d.photos:
        root = Path(d.photos)
        rels = list_images(root, recursive=True)
        if not rels:
            raise LldiffError(f"no images in data.photos folder {root}")
        names = [rel.with_suffix("").as_posix() for rel in rels]
        train_idx, val_idx = split_by_blocks(names, d.val_fraction, d.val_block)
        held = set(val_idx)
        decoded = _map(lambda rel: _read_uint8(root / rel, d.max_side), rels, d.workers)
        for i in train_idx + val_idx:
            name, item = names[i], decoded[i]
            if isinstance(item, str):
                out.skipped.append((str(root / rels[i]), item))
            elif i in held:
                # The held-out photos get a fixed darkening: the same validation pairs at every validation.
                high = item[None].float() / 255
                gen = torch.Generator().manual_seed(seed_for(cfg.seed, f"val/{name}"))
                low = _quantize(random_pair(high, gen, mode=d.darken.mode, ranges=d.darken.lv_ranges(),
                                            factor=d.darken.factor, noise=d.darken.noise_ranges()))
                out.val_pairs.append(((low[0] * 255).round().to(torch.uint8), item))
                out.val_names.append(f"{PHOTOS}{name}")
            elif min(item.shape[-2:]) < d.crop:
                out.skipped.append((str(root / rels[i]), _too_small(item, d.crop)))
            else:
                out.photos.append(item)
    if not out.pairs and not out.photos:
        raise LldiffError(f"no training images left (each needs at least data.crop = {d.crop} pixels a side); "
                          f"{len(out.skipped)} file(s) skipped")
    return out


def _map(fn, items, workers: int) -> list:
    """fn over items, in order; in a thread pool when workers > 0 (decoding releases the GIL)."""
    if workers == 0:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _too_small(image: torch.Tensor, crop: int) -> str:
    h, w = image.shape[-2:]
    return f"{w}x{h} is smaller than data.crop ({crop})"


def _as_uint8(rgb: torch.Tensor, max_side: int = 0) -> torch.Tensor:
    """1x3xHxW [0, 1] -> uint8 3xHxW, shrunk (area average) to ``max_side`` when larger."""
    h, w = rgb.shape[-2:]
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        rgb = F.interpolate(rgb, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    return (rgb[0] * 255).round().to(torch.uint8)


def _read_uint8(path: Path, max_side: int = 0) -> torch.Tensor | str:
    """A photo as uint8 3xHxW (see _as_uint8); the reason as a string when unreadable."""
    from lldiff_cli.images import read_image

    try:
        return _as_uint8(read_image(path).rgb, max_side)
    except ImageReadError as exc:
        return exc.reason


def _read_training_pair(pair, max_side: int = 0):
    """(low, high) as uint8 3xHxW, or 'path: reason' when the pair cannot be used."""
    from lldiff_cli.data import read_pair

    try:
        low, high = read_pair(pair)
    except ImageReadError as exc:
        return str(exc)
    except LldiffError as exc:  # the sizes differ
        return f"{pair.low}: {exc}"
    return _as_uint8(low, max_side), _as_uint8(high, max_side)


def _quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels: a synthetic input then looks like one read from a file at inference."""
    return (x.clamp(0, 1) * 255).round() / 255


def random_batch(items: list[tuple[torch.Tensor, ...]], batch_size: int, crop: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random crops with flips and transposes of aligned uint8 3xHxW images (a pair, or a photo
    alone) -> one float Nx3xcropxcrop batch in [0, 1] per member of the tuples."""
    columns: list[list[torch.Tensor]] = [[] for _ in items[0]]
    for _ in range(batch_size):
        group = items[int(torch.randint(len(items), (1,), generator=generator))]
        h, w = group[0].shape[-2:]
        size = min(crop, h, w)
        y = int(torch.randint(h - size + 1, (1,), generator=generator))
        x = int(torch.randint(w - size + 1, (1,), generator=generator))
        views = [image[:, y:y + size, x:x + size] for image in group]
        flips = torch.randint(2, (3,), generator=generator).tolist()
        if flips[0]:
            views = [v.flip(-1) for v in views]
        if flips[1]:
            views = [v.flip(-2) for v in views]
        if flips[2]:
            views = [v.transpose(-1, -2) for v in views]
        for column, view in zip(columns, views):
            column.append(view)
    return tuple(torch.stack(column).float() / 255 for column in columns)


def make_batch(data: TrainData, cfg: DataConfig, seed: int, step: int, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``step`` of process ``rank``: (low, high), float Nx3xcropxcrop in [0, 1], on the CPU.

    A pure function of its arguments (its generator is seeded from them), so batches can be
    built ahead, in threads, and a resumed run sees the very batches it would have seen.
    """
    gen = torch.Generator().manual_seed(seed_for(seed, f"batch/{rank}/{step}"))
    n = cfg.batch_size
    if not data.photos:
        n_photos = 0
    elif not data.pairs:
        n_photos = n
    else:  # round synthetic_ratio * n up or down at random, so the mean share is exact
        share = cfg.synthetic_ratio * n
        n_photos = int(share) + int(float(torch.rand((), generator=gen, dtype=torch.float64)) < share - int(share))
    lows, highs = [], []
    if n - n_photos:
        low, high = random_batch(data.pairs, n - n_photos, cfg.crop, gen)
        lows.append(low)
        highs.append(high)
    if n_photos:
        (high,) = random_batch([(p,) for p in data.photos], n_photos, cfg.crop, gen)
        dk = cfg.darken
        low = random_pair(high, gen, mode=dk.mode, ranges=dk.lv_ranges(), factor=dk.factor, noise=dk.noise_ranges())
        lows.append(_quantize(low))
        highs.append(high)
    return torch.cat(lows), torch.cat(highs)


def prefetch(fn: Callable[[int], object], steps: Iterable[int], workers: int) -> Iterator:
    """fn(step) for each step, in order; ``workers`` threads compute up to 2 * workers ahead."""
    if workers == 0:
        yield from map(fn, steps)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="lldiff-batch")
    pending: deque = deque()
    todo = iter(steps)
    try:
        for s in todo:
            pending.append(pool.submit(fn, s))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --- the loss as one forward pass ----------------------------------------------------


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


# --- several processes (torchrun) ----------------------------------------------------


@contextmanager
def process_group(device: torch.device):
    """Join torchrun's process group when there is one (NCCL on CUDA, gloo on the CPU) and leave it
    at the end; yields (rank, world_size, device), the device being this process's GPU on CUDA."""
    rank, world, _ = distributed_env()
    if world == 1:
        yield 0, 1, device
        return
    if device.type == "mps":
        raise LldiffError("several processes (torchrun) need CUDA or the CPU; the device is mps")
    device = process_device(device)
    owner = not dist.is_initialized()
    if owner:
        # Rank 0 validates alone while the others wait in the next collective: allow it an hour.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=1))
    try:
        yield rank, world, device
    finally:
        if owner:
            dist.destroy_process_group()


def _any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (a Ctrl-C seen by one process stops all)."""
    if world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _check_replicas(model: nn.Module, ema: EMA, world: int, device: torch.device) -> None:
    """Raise when the ranks' weights or EMA weights differ (they must stay bit-identical)."""
    tensors = [*model.state_dict().values(), *ema.state.values()]
    mine = torch.stack([t.detach().double().sum() for t in tensors if t.dtype.is_floating_point]).to(device)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    if not all(torch.equal(every[0], other) for other in every[1:]):
        raise LldiffError("the processes' weights diverged; this is a bug in lldiff, please report it")


# --- the loop -------------------------------------------------------------------------


def train(cfg: TrainConfig, data: TrainData, *, device: torch.device, resume: bool = False,
          on_log: Optional[Callable[[dict], None]] = None, on_step: Optional[Callable[[int], None]] = None,
          stop: Optional[Callable[[], bool]] = None) -> dict:
    """Train until ``cfg.optim.max_steps`` (or until ``stop()`` says so) and return the last log record.

    ``data``: from :func:`load_training_data`. ``on_log(record)`` gets the loss terms (averaged
    since the last record) every ``log_every`` steps and each validation; ``on_step(step)`` is
    called after every step. Under torchrun only rank 0 calls them and writes files.
    """
    check_config(cfg, resume)
    with process_group(device) as (rank, world, process_device):
        # Rank 0 writes in out_dir: it holds it to the end (the CLI already does, from before the data loads).
        with hold_out_dir(cfg, resume) if rank == 0 else nullcontext() as run:
            return _train(cfg, data, process_device, rank, world, resume, run, on_log, on_step, stop)


def _train(cfg, data, device, rank, world, resume, run, on_log, on_step, stop) -> dict:
    out = Path(cfg.out_dir)
    main = rank == 0
    check_out_dir(cfg, resume)
    if world > 1:
        dist.barrier()  # every rank has looked at out_dir before rank 0 writes into it
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = WaveletDiffusion(cfg.model).to(device)
    init_record = None
    if cfg.init and not resume:  # a resumed run has its own weights
        copied, fresh = initialise_from(model, Path(cfg.init))
        init_record = {"step": 0, "init": cfg.init, "copied": copied, "fresh": fresh}
    for name, param in model.named_parameters():
        param.requires_grad_(_trains(name, cfg.train_only))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    ema = EMA(model, cfg.optim.ema_decay)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    step, best_psnr, history = 0, -1.0, []
    if resume:
        step, best_psnr, history = _resume(out / "last.pt", cfg.model, model, ema, opt, scaler, device)
    if init_record and main and on_log:
        on_log(init_record)
    if cfg.compile:
        model.unet.compile()  # in place: the state_dict keys stay those of the plain UNet
    trainer: nn.Module = LossStep(model)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # The refiner runs only on the sampled steps: on the others DDP must expect its parameters
        # to get no gradient (finding them costs a graph traversal per step, so only then).
        sometimes_unused = model.refiner is not None and cfg.train_sampler_every > 1
        trainer = DistributedDataParallel(trainer, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=sometimes_unused)
    weights = asdict(cfg.loss)
    autocast_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    use_autocast = use_amp or (cfg.bf16 and device.type == "cpu")
    batches = prefetch(lambda s: make_batch(data, cfg.data, cfg.seed, s, rank),
                       range(step, cfg.optim.max_steps), cfg.data.workers)
    sums, counts, bad_steps = {}, {}, 0
    last, t0, seen = {}, time.perf_counter(), 0
    model.train()

    def checkpoint(name: str) -> None:
        extra = {"ema_state_dict": ema.state, "optimizer": opt.state_dict(), "step": step,
                 "best_psnr": best_psnr, "history": history, "train_config": to_dict(cfg),
                 "scaler": scaler.state_dict(), "world_size": world,
                 # Batches and the loss's draws are seeded per step, so this is for the record only.
                 "rng": {"torch": torch.get_rng_state()}}
        save_checkpoint(model, out / name, extra)
        write_curve(history, out / "curve.png")

    try:
        while step < cfg.optim.max_steps:
            if _any_rank(stop is not None and stop(), world, device):
                break
            lr = get_lr(step, cfg.optim)
            for group in opt.param_groups:
                group["lr"] = lr
            low, high = next(batches)
            low, high = low.to(device, non_blocking=True), high.to(device, non_blocking=True)
            # The loss's timesteps and noise (gen) and dropout (the global RNG) are seeded per step too.
            torch.manual_seed(seed_for(cfg.seed, f"torch/{rank}/{step}"))
            gen = torch.Generator(device=device).manual_seed(seed_for(cfg.seed, f"loss/{rank}/{step}"))
            sample = cfg.train_sampler_every > 0 and step % cfg.train_sampler_every == 0
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=use_autocast):
                terms = trainer(low, high, gen, sample)
            loss = sum(weights[k] * v.float() for k, v in terms.items())
            # Decided together: a rank that stopped alone would leave the others waiting in all-reduce.
            if _any_rank(not torch.isfinite(loss), world, device):
                # Under float16 AMP an overflow now and then is normal: the scaler skips the step.
                bad_steps += 1
                if not use_amp or bad_steps > 20:
                    bad = {k: float(v) for k, v in terms.items() if not torch.isfinite(v)}  # {} on a sound rank
                    raise LldiffError(f"loss became non-finite at step {step} ({bad}); "
                                      "lower optim.lr or check the data")
            else:
                bad_steps = 0
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip)
            scaler.step(opt)
            scaler.update()
            ema.update(model, step)
            step += 1
            seen += 1
            if not main:
                continue  # rank 0 alone logs, validates and writes checkpoints
            run.started = True
            for k, v in {"loss": loss, **terms}.items():  # logged as means since the last record
                sums[k] = sums.get(k, 0.0) + v.detach().float()
                counts[k] = counts.get(k, 0) + 1
            if on_step:
                on_step(step)
            if step % cfg.log_every == 0 or step == cfg.optim.max_steps:
                means = {k: float(sums[k]) / counts[k] for k in sums}
                sums, counts = {}, {}
                last = {"step": step, "lr": lr, **means, "it_s": seen / (time.perf_counter() - t0)}
                history.append({"step": step, "loss": means["loss"]})
                if on_log:
                    on_log(last)
            if data.val_pairs and (step % cfg.val_every == 0 or step == cfg.optim.max_steps):
                scores = validate(cfg.model, ema.state, data.val_pairs, device, limit=cfg.val_images)
                psnr = sum(scores) / len(scores)
                history.append({"step": step, "val_psnr": psnr})
                last = {**last, "step": step, "val_psnr": psnr}
                if psnr > best_psnr:
                    best_psnr = psnr
                    checkpoint("best.pt")
                write_curve(history, out / "curve.png")
                if on_log:
                    on_log({"step": step, "val_psnr": psnr, "best_psnr": best_psnr,
                            **val_groups(data.val_names, scores, data.val_singles)})
            if step % cfg.ckpt_every == 0:
                checkpoint("last.pt")
    finally:
        batches.close()
    if main:
        run.started = True  # a run stopped before its first step keeps its last.pt (step 0) too
        checkpoint("last.pt")
    if world > 1:
        _check_replicas(model, ema, world, device)
        dist.barrier()  # the checkpoint is on disk before any process exits
    return {**last, "step": step, "best_psnr": best_psnr}


def _resume(path: Path, model_cfg: ModelConfig, model: nn.Module, ema: EMA, opt, scaler, device) -> tuple:
    """Load a run's last.pt into the model, its EMA, the optimiser and the AMP scaler, in place;
    returns (step, best_psnr, history) to continue from."""
    # On the CPU first: load_state_dict moves the weights and moments where they belong, and the
    # optimiser's step counters stay CPU tensors as Adam keeps them (on a GPU each would sync).
    state = load_checkpoint(path, map_location="cpu")
    try:
        model.load_state_dict(state["state_dict"], strict=True)
    except RuntimeError:
        differ = sorted(k for k, v in asdict(model_cfg).items() if state["config"].get(k) != v)
        raise LldiffError(f"{path} holds another model (model.{', model.'.join(differ) or '?'} "
                          "differ from the config); resume with the run's own config.yaml") from None
    ema.state = {k: v.to(device) for k, v in state["ema_state_dict"].items()}
    opt.load_state_dict(state["optimizer"])
    if state.get("scaler"):  # absent in checkpoints of CPU runs and of older versions
        scaler.load_state_dict(state["scaler"])
    return state["step"], state["best_psnr"], list(state["history"])


@torch.no_grad()
def validate(model_cfg: ModelConfig, state: dict, pairs, device: torch.device, limit: int = 0) -> list[float]:
    """PSNR (8-bit RGB) of the EMA model, default sampler settings, on each held-out pair."""
    from lldiff_cli.enhance import EnhanceSettings, enhance_image
    from lldiff_cli.metrics import psnr

    model = WaveletDiffusion(model_cfg).to(device)
    model.load_state_dict(state, strict=True)
    model.eval()
    settings = EnhanceSettings(precision="float32", keep_highlights=False)
    scores = []
    for low, high in pairs[: limit or None]:
        out = enhance_image(model, low[None].float().div(255), settings, device)
        scores.append(psnr(out.cpu(), high[None].float().div(255)))
    return scores


def val_groups(names: list[str], scores: list[float], singles: Iterable[str] = ()) -> dict:
    """Mean PSNR of each kind of held-out image when there are several (``val_psnr`` mixes them):
    real pairs held out in blocks ("pairs": new scenes), single pairs ("singles": scenes seen in
    training, LOL's protocol) and darkened photos ("photos"), as {"val_psnr_pairs": ..., ...}, else {}."""
    singles = set(singles)
    groups: dict[str, list[float]] = {}
    for name, score in zip(names, scores):
        kind = "photos" if name.startswith(PHOTOS) else "singles" if name in singles else "pairs"
        groups.setdefault(kind, []).append(score)
    if len(groups) < 2:
        return {}
    return {f"val_psnr_{k}": sum(v) / len(v) for k, v in sorted(groups.items())}


# --- the curve ------------------------------------------------------------------------


def write_curve(history: list[dict], path: Path, width: int = 720, height: int = 520) -> None:
    """Draw training loss (log scale, top) and validation PSNR (bottom) against step into a PNG.

    ``history``: records with "step" and "loss" or "val_psnr". Drawn with PIL (no plotting
    library); written atomically, so a viewer never sees half a file.
    """
    from PIL import Image, ImageDraw, ImageFont

    from lldiff_cli.atomic import atomic_write

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    losses = [(r["step"], r["loss"]) for r in history if "loss" in r and r["loss"] > 0 and math.isfinite(r["loss"])]
    psnrs = [(r["step"], r["val_psnr"]) for r in history if "val_psnr" in r and math.isfinite(r["val_psnr"])]
    steps = [s for s, _ in losses + psnrs] or [0, 1]
    x_lo, x_hi = min(steps), max(max(steps), min(steps) + 1)
    half = height // 2
    panels = [("training loss (log scale)", [(s, math.log10(v)) for s, v in losses], (0, half), "#1f77b4",
               lambda v: f"{10 ** v:.3g}"),
              ("validation PSNR (dB)", psnrs, (half, height), "#d62728", lambda v: f"{v:.2f}")]
    left, right, top_pad, bottom_pad = 64, 16, 22, 26
    for title, points, (y0, y1), colour, label in panels:
        box = (left, y0 + top_pad, width - right, y1 - bottom_pad)
        draw.rectangle(box, outline="black")
        draw.text((left, y0 + 5), title, fill="black", font=font)
        draw.text((box[0], box[3] + 4), str(x_lo), fill="black", font=font)
        draw.text((box[2] - 40, box[3] + 4), f"step {x_hi}", fill="black", font=font)
        if not points:
            draw.text((box[0] + 10, box[1] + 10), "no data yet", fill="gray", font=font)
            continue
        values = [v for _, v in points]
        v_lo, v_hi = min(values), max(values)
        draw.text((4, box[1]), label(v_hi), fill="black", font=font)
        draw.text((4, box[3] - 10), label(v_lo), fill="black", font=font)
        pad = max(v_hi - v_lo, 1e-6) * 0.05  # keep the line off the frame
        v_lo, v_hi = v_lo - pad, v_hi + pad

        def xy(s, v, box=box, v_lo=v_lo, v_hi=v_hi):
            return (box[0] + (box[2] - box[0]) * (s - x_lo) / (x_hi - x_lo),
                    box[3] - (box[3] - box[1]) * (v - v_lo) / (v_hi - v_lo))

        coords = [xy(s, v) for s, v in points]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=2)
        for cx, cy in coords if len(coords) <= 50 else coords[-1:]:  # dots while they stay apart
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=colour)
    with atomic_write(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")


