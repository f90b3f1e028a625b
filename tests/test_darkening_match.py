"""benchmarks/darkening_match.py: a dataset's darkening measured, and lldiff's compared with it."""

import sys

import numpy as np
import pytest
import torch
from conftest import load_script
from PIL import Image

from lldiff_cli.darken import LvRanges
from lldiff_cli.errors import LldiffError

darkening_match = load_script("benchmarks/darkening_match.py")


def ramp(h: int = 40, w: int = 60) -> np.ndarray:
    """An HxWx3 image whose values sweep 0..1 (each channel offset a little)."""
    base = np.linspace(0, 1, h * w).reshape(h, w)
    return np.stack([np.clip(base + d, 0, 1) for d in (0.0, 0.02, -0.02)], axis=2)


@pytest.mark.parametrize("a, gamma", [(0.2, 2.0), (0.07, 1.5), (0.4, 2.7)])
def test_fit_tone_recovers_a_power_law(a, gamma):
    high = ramp()
    fitted_a, fitted_gamma = darkening_match.fit_tone(a * high ** gamma, high)
    assert fitted_a == pytest.approx(a, rel=0.02) and fitted_gamma == pytest.approx(gamma, abs=0.02)


def test_fit_tone_refuses_a_flat_ground_truth():
    with pytest.raises(LldiffError, match="too few"):
        darkening_match.fit_tone(np.full((40, 60, 3), 0.01), np.full((40, 60, 3), 0.02))
    with pytest.raises(LldiffError, match="too flat"):
        darkening_match.fit_tone(np.full((40, 60, 3), 0.1), np.full((40, 60, 3), 0.5))


def test_noise_level_of_white_noise():
    # the 2x2 high-pass of i.i.d. noise of sd s has sd 2s; the grey of 3 i.i.d. channels has sd s/sqrt(3)
    rng = np.random.default_rng(0)
    sigma = 2 / 255
    image = 0.5 + rng.normal(0, sigma, (300, 300, 3))
    sd, median = darkening_match.noise_level(image)
    assert sd == pytest.approx(2 * 2 / np.sqrt(3), rel=0.03)
    assert median == pytest.approx(0.6745 * sd, rel=0.05)  # a Gaussian's median |x| is 0.6745 sd
    assert darkening_match.noise_level(np.full((10, 10, 3), 0.3)) == (0.0, 0.0)


def test_darkening_follows_the_ranges():
    # one fixed draw (alpha 1, beta 0.25, gamma 2) and no noise: the tone fit gets it back
    high = ramp()
    low = darkening_match.darken_like_training(high, torch.Generator().manual_seed(0),
                                               LvRanges(alpha=(1, 1), beta=(0.25, 0.25), gamma=(2, 2)), None)
    assert low.shape == high.shape
    assert np.allclose(low * 255, np.round(low * 255))  # rounded to 8 bits, as a file read back
    a, gamma = darkening_match.fit_tone(low, high)
    assert a == pytest.approx(0.25, rel=0.05) and gamma == pytest.approx(2.0, abs=0.05)


def test_main_compares_a_dataset_with_the_darkening(tmp_path, monkeypatch, capsys):
    # a LOL layout whose dark images are their ground truths divided by 8 (a = 1/8, gamma 1), one of them broken
    folder = tmp_path / "LOL" / "our485"
    rng = np.random.default_rng(0)
    for sub in ("low", "high"):
        (folder / sub).mkdir(parents=True)
    for name in ("1", "2"):
        high = rng.integers(20, 230, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(high).save(folder / "high" / f"{name}.png")
        Image.fromarray(high // 8).save(folder / "low" / f"{name}.png")
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(folder / "high" / "3.png")
    (folder / "low" / "3.png").write_bytes(b"not a png")
    monkeypatch.setattr(sys, "argv", ["darkening_match.py", "--root", str(tmp_path), "--beta", "0.2,0.3",
                                      "--gamma", "1.4,1.6"])
    darkening_match.main()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("skipped 3: ") and "3.png" in out[0]
    assert out[1].startswith("2 pairs")
    rows = {line.rsplit(maxsplit=6)[0]: line.rsplit(maxsplit=6)[1:] for line in out[3:]}
    assert set(rows) == {"mean grey", "a", "gamma", "noise sd", "noise median"}
    real_gamma, synthetic_gamma = float(rows["gamma"][0]), float(rows["gamma"][3])
    assert real_gamma == pytest.approx(1.0, abs=0.1) and 1.3 < synthetic_gamma < 1.7
    assert float(rows["a"][0]) == pytest.approx(1 / 8, rel=0.15)


def test_main_refuses_a_bad_range(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["darkening_match.py", "--gamma", "3,2"])
    with pytest.raises(SystemExit):
        darkening_match.main()
    assert "gamma" in capsys.readouterr().err
