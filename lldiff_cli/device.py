"""The one place that decides where tensors live (device) and in what precision they are computed."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from lldiff_cli.errors import LldiffError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` takes CUDA when present, else MPS, else the CPU; others are checked."""
    if name not in DEVICES:
        raise LldiffError(f"unknown device {name!r}; allowed: {', '.join(DEVICES)}")
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else "mps" if mps else "cpu"
    if name == "cuda" and not cuda:
        raise LldiffError("--device cuda asked for, but PyTorch sees no CUDA device")
    if name == "mps" and not mps:
        raise LldiffError("--device mps asked for, but PyTorch sees no MPS device")
    if name == "cpu":
        # Denormal floats make convolutions on x86 CPUs up to 30x slower; flushing
        # them to zero changes no result that survives 8-bit output.
        torch.set_flush_denormal(True)
    return torch.device(name)


def distributed_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as torchrun sets them; (0, 1, 0) in a plain process."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def process_device(device: torch.device) -> torch.device:
    """This process's own device: under torchrun, CUDA is ``cuda:LOCAL_RANK`` (made the current
    device), one GPU per process on each machine; the CPU and MPS stay as they are."""
    rank, world, local_rank = distributed_env()
    if world == 1 or device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise LldiffError(f"process {rank} has LOCAL_RANK {local_rank}, but this machine has {count} CUDA "
                          f"device(s): start at most {count} processes per machine (torchrun --nproc_per_node)")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX), from its flags in /proc/cpuinfo.

    Elsewhere (no such file: macOS, Windows) the answer is False and the CPU stays in float32:
    where bfloat16 is only emulated it saves nothing."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def pick_precision(name: str, device: torch.device) -> str:
    """The number format a model runs in on ``device``: ``auto`` is bfloat16 autocast on a CPU
    with native bfloat16, float32 elsewhere; the others are checked against the device.

    On 2 cores with AVX-512 BF16, bfloat16 ran the shipped model 1.4x faster (0.94 -> 0.67 s per
    600x400 image; 1920x1080 16.2 -> 10.2 s) and scored 21.593 dB / 0.8238 on the 40 held-out LOL
    pairs against 21.596 / 0.8241 in float32 (benchmarks/speed.py --precision, scripts/default_model.py
    sweep --precision). float16 casts the weights (:func:`enhance.in_precision`)."""
    if name not in PRECISIONS:
        raise LldiffError(f"unknown precision {name!r}; allowed: {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bfloat16" if device.type == "cpu" and cpu_has_native_bf16() else "float32"
    if name == "float16" and device.type != "cuda":
        raise LldiffError(f"--precision float16 needs CUDA; the device is {device.type}")
    if name == "bfloat16" and device.type not in ("cpu", "cuda"):
        raise LldiffError(f"--precision bfloat16 needs the CPU or CUDA; the device is {device.type}")
    return name
