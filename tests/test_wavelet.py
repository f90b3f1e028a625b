import numpy as np
import pytest
import pywt
import torch

from lldiff_cli.wavelet import dwt2, idwt2, wavedec2, waverec2


def test_dwt2_matches_pywavelets_band_by_band():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 8, 12))
    ll, high = dwt2(torch.from_numpy(x))
    for n in range(2):
        for ch in range(3):
            ca, (ch_, cv, cd) = pywt.dwt2(x[n, ch], "haar")
            np.testing.assert_allclose(ll[n, ch].numpy(), ca, atol=1e-12)
            np.testing.assert_allclose(high[n, ch].numpy(), ch_, atol=1e-12)       # LH = cH
            np.testing.assert_allclose(high[n, 3 + ch].numpy(), cv, atol=1e-12)   # HL = cV
            np.testing.assert_allclose(high[n, 6 + ch].numpy(), cd, atol=1e-12)   # HH = cD


def test_multilevel_matches_pywavedec2_and_round_trips():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(1, 2, 16, 32)).astype(np.float32))
    ll, highs = wavedec2(x, 3)
    coeffs = pywt.wavedec2(x[0, 0].numpy().astype(np.float64), "haar", level=3)
    np.testing.assert_allclose(ll[0, 0].numpy(), coeffs[0], atol=1e-5)
    # pywt lists the coarsest detail first; ours lists the finest first.
    np.testing.assert_allclose(highs[2][0, 0].numpy(), coeffs[1][0], atol=1e-5)
    assert [h.shape[-1] for h in highs] == [16, 8, 4]
    torch.testing.assert_close(waverec2(ll, highs), x, atol=1e-6, rtol=0)


def test_orthonormal_energy_and_constant_image():
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    ll, high = dwt2(x)
    assert torch.allclose((ll ** 2).sum() + (high ** 2).sum(), (x ** 2).sum())
    ones_ll, ones_high = dwt2(torch.ones(1, 1, 4, 4))
    assert torch.allclose(ones_ll, torch.full_like(ones_ll, 2.0)) and ones_high.abs().max() == 0


def test_autograd_flows_through_round_trip():
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    ll, highs = wavedec2(x, 2)
    (waverec2(ll * 2, highs) ** 2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_odd_size_is_a_clear_error():
    with pytest.raises(ValueError, match="even height and width"):
        dwt2(torch.rand(1, 3, 7, 8))
    with pytest.raises(ValueError, match="band shapes"):
        idwt2(torch.rand(1, 3, 4, 4), torch.rand(1, 6, 4, 4))
