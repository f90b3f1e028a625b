"""Metrics against known values, and SSIM against scikit-image (a test-only dependency)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lldiff_cli import metrics as M
from lldiff_cli.errors import LldiffError

skimage_metrics = pytest.importorskip("skimage.metrics")
RNG = np.random.default_rng(0)


def sk_ssim(a, b):
    return skimage_metrics.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=255, channel_axis=2)


def structured(h=40, w=56):
    """Gradients, edges and a checkerboard: the structures SSIM is about."""
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 / (w - 1))
    g = ((x // 7 + y // 5) % 2) * 200 + 20
    b = np.where((x - w / 2) ** 2 + (y - h / 2) ** 2 < (h / 3) ** 2, 230, 15)
    return np.stack([r, g, b], axis=2).round().astype(np.uint8)


# --- PSNR ---------------------------------------------------------------------


def test_psnr_of_identical_images_is_inf():
    a = RNG.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    assert M.psnr(a, a) == math.inf
    t = torch.rand(1, 3, 8, 9)
    assert M.psnr(t, t.clone()) == math.inf


def test_psnr_of_x_and_x_plus_a_tenth_is_20_db():
    x = RNG.random((10, 12, 3)) * 0.8
    assert M.psnr(x, x + 0.1, data_range=1.0) == pytest.approx(20.0, abs=1e-9)
    assert M.psnr(x * 255, x * 255 + 25.5) == pytest.approx(20.0, abs=1e-9)


def test_psnr_rounds_tensors_to_8_bits_like_a_saved_image():
    t = torch.full((1, 3, 4, 4), 100 / 255)
    nudged = t + 0.3 / 255  # rounds to the same 8-bit value
    assert M.psnr(t, nudged) == math.inf
    a = np.full((4, 4, 3), 100, np.uint8)
    b = np.full((4, 4, 3), 110, np.uint8)
    assert M.psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 100))


def test_psnr_rejects_size_mismatch():
    with pytest.raises(LldiffError, match="sizes differ"):
        M.psnr(np.zeros((4, 5, 3)), np.zeros((5, 4, 3)))


# --- SSIM ---------------------------------------------------------------------


def test_ssim_of_identical_images_is_one():
    a = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert M.ssim(a, a) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("shape", [(11, 11, 3), (24, 37, 3), (48, 32, 3)])
def test_ssim_agrees_with_skimage_on_random_images(shape):
    a = RNG.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a.astype(int) + RNG.integers(-60, 60, shape), 0, 255).astype(np.uint8)
    c = RNG.integers(0, 256, shape, dtype=np.uint8)
    assert M.ssim(a, b) == pytest.approx(sk_ssim(a, b), abs=1e-4)
    assert M.ssim(a, c) == pytest.approx(sk_ssim(a, c), abs=1e-4)


def test_ssim_agrees_with_skimage_on_structured_images():
    a = structured()
    darker = (a * 0.3).round().astype(np.uint8)
    shifted = np.roll(a, 2, axis=1)
    for b in (darker, shifted, 255 - a):
        assert M.ssim(b, a) == pytest.approx(sk_ssim(b, a), abs=1e-4)
    photo = pytest.importorskip("skimage.data").astronaut()[100:164, 150:230]
    dim = (photo.astype(np.float64) ** 0.8).round().astype(np.uint8)
    assert M.ssim(dim, photo) == pytest.approx(sk_ssim(dim, photo), abs=1e-4)


def test_ssim_on_float_arrays_matches_skimage():
    a = structured().astype(np.float64)
    b = np.clip(a * 0.77 + 9.3, 0, 255)
    assert M.ssim(b, a) == pytest.approx(sk_ssim(b, a), abs=1e-4)


def test_ssim_needs_an_11_pixel_window():
    with pytest.raises(LldiffError, match="at least 11x11"):
        M.ssim(np.zeros((10, 40, 3)), np.zeros((10, 40, 3)))


# --- GT-mean ------------------------------------------------------------------


def test_gt_mean_matches_the_mean_grey_of_the_ground_truth():
    gt = structured()
    out = (gt * 0.4).round().astype(np.uint8)
    adjusted = M.gt_mean(out, gt)
    assert (adjusted @ M.GREY_WEIGHTS).mean() == pytest.approx((gt @ M.GREY_WEIGHTS).mean(), rel=0.02)
    assert adjusted.max() <= 255.0


def test_gt_mean_undoes_a_pure_exposure_change():
    gt = RNG.integers(0, 256, (16, 16, 3)).astype(np.float64)
    assert M.psnr_gtmean(gt * 0.5, gt) == math.inf
    assert M.ssim_gtmean(gt * 0.5, gt) == pytest.approx(1.0)
    assert M.psnr(gt * 0.5, gt) < 15


def test_gt_mean_leaves_a_black_output_alone():
    black = np.zeros((12, 12, 3), np.uint8)
    assert np.array_equal(M.gt_mean(black, structured(12, 12)), black)


# --- LOE ----------------------------------------------------------------------


def test_loe_known_values():
    low = np.zeros((50, 50, 3), np.uint8)
    low[:, 25:] = 100  # 50x50: no resizing; two lightness levels of 1250 pixels each
    assert M.loe(low, low) == 0.0
    assert M.loe((low * 2).astype(np.uint8), low) == 0.0  # brighter, same order
    assert M.loe(255 - low, low) == pytest.approx(1250.0)  # every unequal pair flips


def test_imresize_matches_matlab_conventions():
    a = RNG.random((8, 10))
    assert np.allclose(M.imresize(a, 8, 10), a)
    assert np.allclose(M.imresize(np.full((8, 10), 3.0), 4, 5), 3.0)


# --- NIQE ---------------------------------------------------------------------


def test_niqe_of_a_photo_is_stable():
    photo = pytest.importorskip("skimage.data").astronaut()
    score = M.niqe(photo)
    # This implementation in float64; BasicSR's port (float32 at the second scale) gives 3.0673.
    assert score == pytest.approx(3.06664, abs=1e-4)
    assert M.niqe(photo) == score


def test_niqe_scores_noise_and_blur_worse():
    import cv2

    photo = pytest.importorskip("skimage.data").astronaut()[:288, :288]
    clean = M.niqe(photo)
    noisy = np.clip(photo + RNG.normal(0, 25, photo.shape), 0, 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(photo, (0, 0), 3)
    assert M.niqe(noisy) > clean + 1
    assert M.niqe(blurred) > clean + 1


def test_niqe_is_nan_for_images_too_small():
    assert math.isnan(M.niqe(np.zeros((100, 300, 3), np.uint8)))


# --- LPIPS --------------------------------------------------------------------


def random_lpips_file(path, layout="ours"):
    torch.manual_seed(0)
    model = M.LPIPS()
    for i in range(5):  # the real linear layers are non-negative
        getattr(model, f"lin{i}").weight.data.abs_()
    sd = model.state_dict()
    if layout == "packages":  # torchvision's alexnet + the lpips package's alex.pth
        backbone = {k: v for k, v in sd.items() if k.startswith("features.")}
        backbone["classifier.1.weight"] = torch.zeros(2, 2)
        lin = {f"lin{i}.model.1.weight": sd[f"lin{i}.weight"] for i in range(5)}
        torch.save(backbone, path.with_name("alexnet.pth"))
        torch.save(lin, path.with_name("alex.pth"))
        return [path.with_name("alexnet.pth"), path.with_name("alex.pth")], model
    torch.save(sd, path)
    return [path], model


def test_lpips_network_shapes_and_identity():
    model = M.LPIPS().eval()
    x, y = torch.rand(2, 3, 64, 48), torch.rand(2, 3, 64, 48)
    taps = model.taps(x)
    assert [t.shape[1] for t in taps] == [64, 192, 384, 256, 256]
    assert tuple(taps[0].shape[2:]) == (15, 11)
    with torch.no_grad():
        assert model(x, y).shape == (2,)
        assert torch.allclose(model(x, x), torch.zeros(2))


def test_lpips_loads_our_file_and_the_package_pair(tmp_path):
    paths, ref = random_lpips_file(tmp_path / "lpips.pth")
    a, b = structured(64, 64), 255 - structured(64, 64)
    d1 = M.lpips(M.load_lpips(paths), a, b)
    paths2, _ = random_lpips_file(tmp_path / "x.pth", layout="packages")
    d2 = M.lpips(M.load_lpips(paths2), a, b)
    assert d1 == pytest.approx(d2) and d1 > 0
    assert M.lpips(M.load_lpips(paths), a, a) == pytest.approx(0.0, abs=1e-7)
    merged = M.merge_lpips_weights(*paths2, tmp_path / "merged.pth")
    assert M.lpips(M.load_lpips([merged]), a, b) == pytest.approx(d1)


def test_lpips_rejects_incomplete_weights(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"lin0.weight": torch.zeros(1, 64, 1, 1)}, bad)
    with pytest.raises(LldiffError, match="do not fit"):
        M.load_lpips([bad])


def test_lpips_weights_not_found_means_none(tmp_path, monkeypatch):
    monkeypatch.delenv(M.LPIPS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(M, "_lpips_package_file", lambda: None)
    assert M.find_lpips_weights() == []
    with pytest.raises(LldiffError, match="not found"):
        M.find_lpips_weights(tmp_path / "missing.pth")
    monkeypatch.setenv(M.LPIPS_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(LldiffError, match="LLDIFF_LPIPS_WEIGHTS"):
        M.find_lpips_weights()


def test_lpips_weights_found_in_torch_hub_and_lpips_package(tmp_path, monkeypatch):
    monkeypatch.delenv(M.LPIPS_ENV, raising=False)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    alexnet = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    alexnet.write_bytes(b"")
    lin = tmp_path / "alex.pth"
    lin.write_bytes(b"")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(M, "_lpips_package_file", lambda: lin)
    assert M.find_lpips_weights() == [alexnet, lin]
