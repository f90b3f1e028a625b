"""The training loop of lldiff, flat and top to bottom (after nanoGPT's train.py).

get_lr(step) -> batch -> weighted loss terms -> backward -> clip -> AdamW -> EMA ->
log -> validate (EMA weights, PSNR on a held-out split) -> checkpoint. A checkpoint holds
everything needed to continue exactly: model, EMA, optimiser, step and RNG states.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from lldiff_cli.errors import LldiffError
from lldiff_cli.model import ModelConfig, WaveletDiffusion, load_checkpoint, model_from_checkpoint, save_checkpoint


@dataclass
class DataConfig:
    layout: str = "LOL"            # a dataset layout of data.py, or "paired" (low / high folders)
    root: str = "data"             # data root for named layouts
    split: str = "train"
    low: Optional[str] = None      # paired folders (layout: paired)
    high: Optional[str] = None
    val_fraction: float = 0.1      # held out, in blocks of consecutive names (whole scenes)
    val_block: int = 10
    crop: int = 128
    batch_size: int = 8
    cache_dir: str = "cache"


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
    bf16: bool = False             # CPU autocast to bfloat16 (AMP float16 on CUDA is always on)
    threads: int = 0               # torch threads on the CPU; 0 leaves PyTorch's choice


def get_lr(step: int, cfg: OptimConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr at max_steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.max_steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def random_batch(pairs: list[tuple[torch.Tensor, torch.Tensor]], batch_size: int, crop: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops with flips and transposes from uint8 3xHxW pairs -> two float Nx3xcropxcrop in [0, 1]."""
    lows, highs = [], []
    for _ in range(batch_size):
        i = int(torch.randint(len(pairs), (1,), generator=generator))
        low, high = pairs[i]
        h, w = low.shape[-2:]
        size = min(crop, h, w)
        y = int(torch.randint(h - size + 1, (1,), generator=generator))
        x = int(torch.randint(w - size + 1, (1,), generator=generator))
        lo, hi = low[:, y:y + size, x:x + size], high[:, y:y + size, x:x + size]
        flips = torch.randint(2, (3,), generator=generator).tolist()
        if flips[0]:
            lo, hi = lo.flip(-1), hi.flip(-1)
        if flips[1]:
            lo, hi = lo.flip(-2), hi.flip(-2)
        if flips[2]:
            lo, hi = lo.transpose(-1, -2), hi.transpose(-1, -2)
        lows.append(lo)
        highs.append(hi)
    return torch.stack(lows).float() / 255, torch.stack(highs).float() / 255


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


def train(cfg: TrainConfig, *, train_pairs, val_pairs, device: torch.device, resume: bool = False,
          on_log: Optional[Callable[[dict], None]] = None, stop: Optional[Callable[[], bool]] = None) -> dict:
    """Train until ``cfg.optim.max_steps`` (or until ``stop()`` says so) and return the last log record.

    train_pairs / val_pairs: lists of (low, high) uint8 3xHxW tensors.
    """
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = WaveletDiffusion(cfg.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    ema = EMA(model, cfg.optim.ema_decay)
    step, best_psnr, history = 0, -1.0, []
    if resume:
        state = load_checkpoint(out / "last.pt", map_location=device)
        model.load_state_dict(state["state_dict"], strict=True)
        ema.state = {k: v.to(device) for k, v in state["ema_state_dict"].items()}
        opt.load_state_dict(state["optimizer"])
        step, best_psnr, history = state["step"], state["best_psnr"], state["history"]
        gen.set_state(state["rng"]["data"])
        torch.set_rng_state(state["rng"]["torch"])
    weights = asdict(cfg.loss)
    use_bf16 = cfg.bf16 and device.type == "cpu"
    last, t0, seen = {}, time.perf_counter(), 0
    model.train()

    def checkpoint(name: str) -> None:
        extra = {"ema_state_dict": ema.state, "optimizer": opt.state_dict(), "step": step,
                 "best_psnr": best_psnr, "history": history, "train_config": _plain(asdict(cfg)),
                 "rng": {"data": gen.get_state(), "torch": torch.get_rng_state()}}
        save_checkpoint(model, out / name, extra)

    while step < cfg.optim.max_steps:
        if stop is not None and stop():
            break
        lr = get_lr(step, cfg.optim)
        for group in opt.param_groups:
            group["lr"] = lr
        low, high = random_batch(train_pairs, cfg.data.batch_size, cfg.data.crop, gen)
        low, high = low.to(device), high.to(device)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            terms = model.loss(low, high, generator=gen)
        loss = sum(weights[k] * v.float() for k, v in terms.items())
        if not torch.isfinite(loss):
            bad = {k: float(v) for k, v in terms.items() if not torch.isfinite(v)}
            raise LldiffError(f"loss became non-finite at step {step} ({bad}); lower optim.lr or check the data")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        ema.update(model, step)
        step += 1
        seen += 1
        if step % cfg.log_every == 0 or step == cfg.optim.max_steps:
            rate = seen / (time.perf_counter() - t0)
            last = {"step": step, "lr": lr, "loss": float(loss), "it_s": rate,
                    **{k: float(v) for k, v in terms.items()}}
            history.append({"step": step, "loss": float(loss)})
            if on_log:
                on_log(last)
        if val_pairs and (step % cfg.val_every == 0 or step == cfg.optim.max_steps):
            psnr = validate(cfg.model, ema.state, val_pairs, device, limit=cfg.val_images)
            history.append({"step": step, "val_psnr": psnr})
            last = {**last, "step": step, "val_psnr": psnr}
            if psnr > best_psnr:
                best_psnr = psnr
                checkpoint("best.pt")
            if on_log:
                on_log({"step": step, "val_psnr": psnr, "best_psnr": best_psnr})
        if step % cfg.ckpt_every == 0:
            checkpoint("last.pt")
    checkpoint("last.pt")
    return {**last, "step": step, "best_psnr": best_psnr}


@torch.no_grad()
def validate(model_cfg: ModelConfig, state: dict, pairs, device: torch.device, limit: int = 0) -> float:
    """Mean PSNR (8-bit RGB) of the EMA model, default sampler settings, over held-out pairs."""
    from lldiff_cli.metrics import psnr
    from lldiff_cli.tiling import enhance_tensor

    model = WaveletDiffusion(model_cfg).to(device)
    model.load_state_dict(state, strict=True)
    model.eval()
    scores = []
    for low, high in pairs[: limit or None]:
        out = enhance_tensor(model, low[None].float().div(255).to(device), seed=0)
        scores.append(psnr(out.cpu(), high[None].float().div(255)))
    return float(sum(scores) / len(scores))


def _plain(obj):
    """Dataclass dict with tuples as lists: storable in a weights_only checkpoint and in YAML."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def split_by_blocks(names: list[str], val_fraction: float, block: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): names sorted naturally are cut into blocks of ``block`` consecutive
    names and every k-th block is held out, so near-duplicate neighbours stay on one side."""
    import re

    def key(i):
        return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", names[i])]

    order = sorted(range(len(names)), key=key)
    if val_fraction <= 0:
        return order, []
    every = max(2, round(1 / val_fraction))
    train_idx, val_idx = [], []
    for b in range(0, len(order), block):
        (val_idx if (b // block) % every == every - 1 else train_idx).extend(order[b:b + block])
    return train_idx, val_idx


def load_pairs_uint8(pairs: list[tuple[Path, Path]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Decode (low, high) files once into uint8 3xHxW tensors; sizes must match."""
    from lldiff_cli.images import read_image

    loaded = []
    for low_path, high_path in pairs:
        low, high = read_image(low_path).rgb[0], read_image(high_path).rgb[0]
        if low.shape != high.shape:
            raise LldiffError(f"{low_path} and {high_path} differ in size: "
                              f"{tuple(low.shape[1:])} vs {tuple(high.shape[1:])}")
        loaded.append(((low * 255).round().to(torch.uint8), (high * 255).round().to(torch.uint8)))
    return loaded


def training_files(data: DataConfig) -> list[tuple[str, Path, Path]]:
    """(name, low, high) files of the configured paired data."""
    from lldiff_cli.images import list_images

    if data.layout == "paired":
        if not data.low or not data.high:
            raise LldiffError("data.layout 'paired' needs data.low and data.high folders")
        low_dir, high_dir = Path(data.low), Path(data.high)
    elif data.layout == "LOL":
        sub = {"train": "our485", "test": "eval15"}[data.split]
        low_dir, high_dir = Path(data.root) / "LOL" / sub / "low", Path(data.root) / "LOL" / sub / "high"
    else:
        raise LldiffError(f"unknown data.layout {data.layout!r}; allowed: LOL, paired")
    highs = {p.stem: p for p in list_images(high_dir)}
    files = [(p.stem, low_dir / p, high_dir / highs[p.stem]) for p in list_images(low_dir) if p.stem in highs]
    if not files:
        raise LldiffError(f"no image pairs found in {low_dir} and {high_dir} (matched by name)")
    return files
