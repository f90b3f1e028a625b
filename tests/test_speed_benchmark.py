"""benchmarks/speed.py: the whole command's time and its own peak memory."""

import sys

import numpy as np
import pytest
from conftest import load_script

speed = load_script("benchmarks/speed.py")


def test_peak_memory_is_the_commands_own():
    small_seconds, small = speed.run_command([sys.executable, "-c", "pass"])
    _, big = speed.run_command([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"])
    assert small_seconds > 0
    assert big - small > 250 * 2 ** 20  # the 300 MB it touched, whatever ran before in this process
    assert small < 100 * 2 ** 20  # a bare interpreter, not this torch-laden test process


def test_a_failing_command_says_how():
    with pytest.raises(RuntimeError, match="exited with 3: boom"):
        speed.run_command([sys.executable, "-c", "import sys; sys.exit('boom') if False else (print('boom', file=sys.stderr), sys.exit(3))"])


def test_the_photos_are_dark_and_of_the_size_asked():
    photo = speed.dark_photo("coffee", 64, 40)
    assert photo.size == (64, 40) and photo.mode == "RGB"
    assert np.asarray(photo).mean() < 0.35 * 255


def test_sizes_are_checked():
    assert speed.parse_size("4000x3000") == (4000, 3000)
    for bad in ("4000", "ax3", "8x8"):
        with pytest.raises(SystemExit):
            speed.parse_size(bad)
