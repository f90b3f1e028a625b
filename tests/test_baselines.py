"""Classical baselines behind the method interface, and the model plug-in point."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from lldiff_cli import baselines as B
from lldiff_cli.errors import LldiffError


def dark(h=32, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.02, 0.2, w).view(1, 1, 1, w).expand(1, 3, h, w)
    return (ramp * (0.7 + 0.3 * torch.rand(1, 3, h, w, generator=g))).contiguous()


def test_identity_and_gamma():
    x = dark()
    assert torch.equal(B.make_method("identity")(x), x)
    m = B.make_method("gamma:0.25")
    assert m.name == "gamma:0.25"
    assert torch.allclose(m(x), x ** 0.25)
    assert B.make_method("gamma:.5").name == "gamma:0.5"


@pytest.mark.parametrize("spec", ["clahe", "he", "msrcr"])
def test_classical_methods_brighten_and_keep_the_convention(spec):
    x = dark()
    y = B.make_method(spec)(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    assert float(y.mean()) > float(x.mean())


def test_histogram_equalisation_spreads_luminance():
    rgb = (dark().permute(0, 2, 3, 1)[0].numpy() * 255).round().astype(np.uint8)
    out = B.histogram_equalisation(rgb)
    assert out.max() >= 250 and out.dtype == np.uint8


def test_unknown_and_bad_specs_list_what_is_allowed():
    with pytest.raises(LldiffError, match=r"allowed: a shipped model \(default.*\), a checkpoint path.*identity, gamma:G, clahe, he, msrcr"):
        B.make_method("retinexformer")
    for bad in ("gamma:abc", "gamma:-1", "gamma:0", "gamma"):
        with pytest.raises(LldiffError, match="gamma:0.25"):
            B.make_method(bad)


def test_default_without_a_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("LLDIFF_MODELS", str(tmp_path))
    with pytest.raises(LldiffError, match="no default model is installed"):
        B.make_method("default")


def test_checkpoint_path_must_exist(tmp_path):
    with pytest.raises(LldiffError, match="no such checkpoint"):
        B.make_method(str(tmp_path / "missing.pt"))


def test_a_model_plugs_in_through_load_model(monkeypatch, tmp_path):
    from lldiff_cli import checkpoints

    calls = {}

    class FakeModel:
        multiple = 4  # inputs are padded to it, as lldiff enhance does
        levels = 2

        def to(self, device):
            return self

        def enhance(self, low, *, exposure=None, steps=None, eta=None, seed=0, ensemble=None):
            assert low.shape[-2] % 4 == 0 and low.shape[-1] % 4 == 0 and seed == 0
            return (low * 2).clamp(0, 1)

    def load_model(path=None, map_location="cpu"):
        calls["path"], calls["device"] = path, map_location
        return FakeModel()

    monkeypatch.setattr(checkpoints, "load_model", load_model)
    ckpt = tmp_path / "run7.pt"
    ckpt.write_bytes(b"")
    m = B.make_method(str(ckpt), device="cpu")
    assert m.name == "run7" and calls["path"] == ckpt
    x = dark(h=30, w=45)
    assert torch.allclose(m(x), (x * 2).clamp(0, 1))
    assert B.make_method("default").name == "default" and calls["path"] is None


def test_default_without_a_shipped_model_names_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setenv("LLDIFF_MODELS", str(tmp_path))
    with pytest.raises(LldiffError, match="no default model is installed") as info:
        B.make_method("default")
    assert f"lldiff-default.yaml in {tmp_path}" in str(info.value)
