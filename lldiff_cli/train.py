"""The training loop of lldiff, flat and top to bottom (after nanoGPT's train.py).

get_lr(step) -> batch -> weighted loss terms -> backward -> clip -> AdamW -> EMA ->
log -> validate (EMA weights, PSNR on a held-out split) -> checkpoint.

Determinism: batch ``step`` of process ``rank`` is a pure function of (seed, step, rank), and so
are the loss's draws (timesteps, noise, dropout). A pool of threads can therefore build batches
ahead of the loop, and a checkpoint needs no data-RNG state: model, EMA, optimiser, AMP scaler
and step are enough for ``--resume`` to continue bit for bit.

What the loop uses, each in its module: the configuration and its checks (train_config.py), the
data and its batches (train_data.py), the loss of one step (losses.py), the EMA (ema.py), the
checkpoint format (checkpoints.py), out_dir and log.jsonl (run_dir.py), several processes
(distributed.py) and curve.png (curve.py).

Several GPUs: launched by ``torchrun``, each process trains a DistributedDataParallel replica on
its own batches (the rank is part of the batch seed); rank 0 validates, logs and writes checkpoints.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
import torch.distributed as dist
from torch import nn

from lldiff_cli.checkpoints import load_checkpoint, save_checkpoint
from lldiff_cli.config import to_dict
from lldiff_cli.curve import write_curve
from lldiff_cli.darken import seed_for
from lldiff_cli.distributed import any_rank, check_replicas, process_group
from lldiff_cli.ema import EMA
from lldiff_cli.errors import LldiffError
from lldiff_cli.losses import LossStep
from lldiff_cli.model import ModelConfig, WaveletDiffusion
from lldiff_cli.run_dir import append_log, check_out_dir, hold_out_dir
from lldiff_cli.train_config import OptimConfig, TrainConfig, check_config, trains
from lldiff_cli.train_data import PHOTOS, TrainData, make_batch, prefetch


def get_lr(step: int, cfg: OptimConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr at max_steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.max_steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


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


# --- the loop -------------------------------------------------------------------------


def train(cfg: TrainConfig, data: TrainData, *, device: torch.device, resume: bool = False,
          on_log: Optional[Callable[[dict], None]] = None, on_step: Optional[Callable[[int], None]] = None,
          stop: Optional[Callable[[], bool]] = None) -> dict:
    """Train until ``cfg.optim.max_steps`` (or until ``stop()`` says so) and return the last log record.

    ``data``: from :func:`lldiff_cli.train_data.load_training_data`. Every ``log_every`` steps
    the loss terms (averaged since the last record), and each validation, go to log.jsonl as a
    record, which ``on_log(record)`` then gets; ``on_step(step)`` is called after every step.
    Under torchrun only rank 0 calls them and writes files.
    """
    check_config(cfg, resume)
    with process_group(device) as (rank, world, process_device):
        if rank != 0:
            return _train(cfg, data, process_device, rank, world, resume, None, None, on_step, stop)
        # Rank 0 writes in out_dir: it holds it to the end (the CLI already does, from before the data loads).
        with hold_out_dir(cfg, resume) as run, append_log(Path(cfg.out_dir) / "log.jsonl", on_log) as log:
            return _train(cfg, data, process_device, rank, world, resume, run, log, on_step, stop)


def _train(cfg, data, device, rank, world, resume, run, log, on_step, stop) -> dict:
    """The loop; ``run`` and ``log`` (run_dir.append_log) are rank 0's, None on the others."""
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
        param.requires_grad_(trains(name, cfg.train_only))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    ema = EMA(model, cfg.optim.ema_decay)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    step, best_psnr, history = 0, -1.0, []
    if resume:
        step, best_psnr, history = _resume(out / "last.pt", cfg.model, model, ema, opt, scaler, device)
    if init_record and main:
        log(init_record)
        if data.val_pairs:  # where the fine-tune starts from: later validations are read against it
            log(scored(cfg, data, ema.state, device, 0)[1])
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
            if any_rank(stop is not None and stop(), world, device):
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
            if any_rank(not torch.isfinite(loss), world, device):
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
                log(last)
            if data.val_pairs and (step % cfg.val_every == 0 or step == cfg.optim.max_steps):
                psnr, record = scored(cfg, data, ema.state, device, step)
                history.append({"step": step, "val_psnr": psnr})
                last = {**last, "step": step, "val_psnr": psnr}
                if psnr > best_psnr:
                    best_psnr = psnr
                    checkpoint("best.pt")
                write_curve(history, out / "curve.png")
                log({**record, "best_psnr": best_psnr})
            if step % cfg.ckpt_every == 0:
                checkpoint("last.pt")
    finally:
        batches.close()
    if main:
        run.started = True  # a run stopped before its first step keeps its last.pt (step 0) too
        checkpoint("last.pt")
    if world > 1:
        check_replicas(model, ema, world, device)
        dist.barrier()  # the checkpoint is on disk before any process exits
    return {**last, "step": step, "best_psnr": best_psnr}


def scored(cfg, data, state: dict, device: torch.device, step: int) -> tuple[float, dict]:
    """Validation of the weights ``state`` at ``step``: (mean PSNR, the log record: PSNR and
    GT-mean PSNR, over all held-out pairs and per kind of held-out pair)."""
    scores, gtmean = validate(cfg.model, state, data.val_pairs, device, limit=cfg.val_images)
    psnr = sum(scores) / len(scores)
    return psnr, {"step": step, "val_psnr": psnr, **val_groups(data.val_names, scores, data.val_singles),
                  "val_psnr_gtmean": sum(gtmean) / len(gtmean),
                  **val_groups(data.val_names, gtmean, data.val_singles, "val_psnr_gtmean")}


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
def validate(model_cfg: ModelConfig, state: dict, pairs, device: torch.device,
             limit: int = 0) -> tuple[list[float], list[float]]:
    """PSNR (8-bit RGB) of the EMA model, default sampler settings, on each held-out pair, and
    its GT-mean PSNR (metrics.psnr_gtmean: the structure, whatever the brightness chosen)."""
    from lldiff_cli.enhance import EnhanceSettings, enhance_image
    from lldiff_cli.metrics import psnr, psnr_gtmean

    model = WaveletDiffusion(model_cfg).to(device)
    model.load_state_dict(state, strict=True)
    model.eval()
    settings = EnhanceSettings(precision="float32", keep_highlights=False)
    scores, gtmean = [], []
    for low, high in pairs[: limit or None]:
        out = enhance_image(model, low[None].float().div(255), settings, device).cpu()
        target = high[None].float().div(255)
        scores.append(psnr(out, target))
        gtmean.append(psnr_gtmean(out, target))
    return scores, gtmean


def val_groups(names: list[str], scores: list[float], singles: Iterable[str] = (), key: str = "val_psnr") -> dict:
    """Mean score of each kind of held-out image when there are several (``val_psnr`` mixes them):
    real pairs held out in blocks ("pairs": new scenes), single pairs ("singles": scenes seen in
    training, LOL's protocol) and darkened photos ("photos"), as {"val_psnr_pairs": ..., ...}
    (``key`` names them), else {}."""
    singles = set(singles)
    groups: dict[str, list[float]] = {}
    for name, score in zip(names, scores):
        kind = "photos" if name.startswith(PHOTOS) else "singles" if name in singles else "pairs"
        groups.setdefault(kind, []).append(score)
    if len(groups) < 2:
        return {}
    return {f"{key}_{k}": sum(v) / len(v) for k, v in sorted(groups.items())}


