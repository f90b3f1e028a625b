"""Where tensors live and in which number format: lldiff_cli.device."""

from __future__ import annotations

import pytest
import torch

from lldiff_cli import device as D
from lldiff_cli.errors import LldiffError


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    with_bf16, without = tmp_path / "with", tmp_path / "without"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512vl\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512vl\n")
    assert D.cpu_has_native_bf16(with_bf16)
    assert not D.cpu_has_native_bf16(without)
    assert not D.cpu_has_native_bf16(tmp_path / "missing")  # macOS, Windows: stay in float32


@pytest.mark.parametrize("native, expected", [(True, "bfloat16"), (False, "float32")])
def test_auto_precision_is_bfloat16_only_on_a_cpu_that_has_it(monkeypatch, native, expected):
    monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: native)
    assert D.pick_precision("auto", torch.device("cpu")) == expected
    assert D.pick_precision("auto", torch.device("cuda")) == "float32"
    assert D.pick_precision("auto", torch.device("mps")) == "float32"
    assert D.pick_precision("float32", torch.device("cpu")) == "float32"
    assert D.pick_precision("bfloat16", torch.device("cpu")) == "bfloat16"  # asked for: taken even if emulated


@pytest.mark.parametrize("name, device, message", [
    ("double", "cpu", "unknown precision 'double'; allowed: auto, float32, bfloat16, float16"),
    ("float16", "cpu", "--precision float16 needs CUDA; the device is cpu"),
    ("bfloat16", "mps", "--precision bfloat16 needs the CPU or CUDA; the device is mps"),
])
def test_bad_precisions_are_clear_errors(name, device, message):
    with pytest.raises(LldiffError, match=message.replace("(", r"\(")):
        D.pick_precision(name, torch.device(device))


def test_under_torchrun_each_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")  # two machines of two GPUs: the second machine's second process
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert D.distributed_env() == (3, 4, 1)
    assert D.process_device(torch.device("cuda")) == torch.device("cuda", 1) and chosen == [torch.device("cuda", 1)]
    assert D.process_device(torch.device("cpu")) == torch.device("cpu")  # processes share the CPU
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(LldiffError, match=r"LOCAL_RANK 2, but this machine has 2 CUDA device\(s\): start at most 2"):
        D.process_device(torch.device("cuda"))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    assert D.distributed_env() == (0, 1, 0)
    assert D.process_device(torch.device("cuda")) == torch.device("cuda")  # one process: as chosen
