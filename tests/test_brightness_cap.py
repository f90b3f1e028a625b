"""benchmarks/brightness_cap.py: the plain-PSNR ceiling of one constant output brightness."""

import math

import numpy as np
import pytest
from conftest import load_script

brightness_cap = load_script("benchmarks/brightness_cap.py")


def flat(value: float) -> np.ndarray:
    return np.full((4, 6, 3), value)


def test_ceiling_known_values():
    # a flat 0.2 ground truth lifted to 0.4: error 0.2 everywhere, 10*log10(1/0.04) = 13.98 dB
    assert brightness_cap.ceiling([flat(0.2)], 0.4) == pytest.approx(10 * math.log10(25))
    # already at the target brightness: no error at all
    assert brightness_cap.ceiling([flat(0.5)], 0.5) == math.inf
    # the mean over images is of the dB figures
    assert brightness_cap.ceiling([flat(0.2), flat(0.8)], 0.4) == pytest.approx(
        (10 * math.log10(25) + 10 * math.log10(1 / 0.16)) / 2)


def test_ceiling_clips_and_adds_structure_error():
    # half 0.25, half 1.0 (mean 0.625) asked for 0.75: scale 1.2 clips the 1.0 half, lifts the other to 0.3
    high = np.concatenate([flat(0.25), flat(1.0)], axis=1)
    assert brightness_cap.ceiling([high], 0.75) == pytest.approx(-10 * math.log10(0.05 ** 2 / 2))
    # a perfect brightness leaves only the structure error
    assert brightness_cap.ceiling([flat(0.5)], 0.5, structure_db=30.0) == pytest.approx(30.0)
    assert brightness_cap.ceiling([flat(0.2)], 0.4, structure_db=30.0) == pytest.approx(
        -10 * math.log10(0.04 + 1e-3))


def test_grid():
    assert brightness_cap.grid("0.30:0.32:0.01") == [0.3, 0.31, 0.32]
    assert brightness_cap.grid("0.5:0.95:0.3") == [0.5, 0.8]  # never past stop


@pytest.mark.parametrize("text", ["0.3-0.6", "0.6:0.3:0.01", "0.3:0.6:0", "a:b:c"])
def test_grid_rejects_bad_ranges(text):
    with pytest.raises(ValueError, match="--targets"):
        brightness_cap.grid(text)


@pytest.mark.parametrize("power", [1.0, 4.0])
def test_level_of_a_flat_image_is_its_grey(power):
    assert brightness_cap.level(flat(0.3), power) == pytest.approx(0.3)
    assert brightness_cap.level(flat(0.3)) == pytest.approx(0.3)


def test_level_weighs_highlights_more_as_the_power_grows():
    # a quarter of the pixels at 0.9, the rest at 0.1: mean grey 0.3
    image = np.concatenate([flat(0.1), flat(0.1), flat(0.1), flat(0.9)], axis=1)
    levels = [brightness_cap.level(image, power) for power in (0.0, 1.0, 2.0, 4.0)]
    assert levels[0] == pytest.approx(0.3)
    assert levels == sorted(levels) and levels[-1] < 0.9


def test_ceiling_rescales_outputs_by_their_own_level():
    # an output half as bright as a flat 0.5 ground truth, rescaled to 0.5 by its own level: exact
    assert brightness_cap.ceiling([flat(0.5)], 0.5, outputs=[flat(0.25)]) == math.inf
    # the levels given are used as they are: an output said to be at 0.5 is left at 0.25
    assert brightness_cap.ceiling([flat(0.5)], 0.5, outputs=[flat(0.25)], levels=[0.5]) == pytest.approx(
        10 * math.log10(1 / 0.0625))
