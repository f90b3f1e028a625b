"""The one place that decides where tensors live, and how noise is seeded."""

from __future__ import annotations

import torch

from lldiff_cli.errors import LldiffError

DEVICES = ("auto", "cpu", "cuda", "mps")


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


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator on ``device``: the only source of noise in sampling."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
