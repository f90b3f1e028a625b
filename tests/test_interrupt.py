"""Ctrl-C as a request to stop (interrupt.py), with real SIGINTs sent to this process."""

from __future__ import annotations

import os
import signal

import pytest

from lldiff_cli.interrupt import StopOnInterrupt


def test_first_ctrl_c_asks_to_stop_a_second_stops_at_once_and_the_handler_comes_back():
    before = signal.getsignal(signal.SIGINT)
    asked = []
    with StopOnInterrupt(lambda: asked.append(True)) as stop:
        assert not stop() and not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop() and stop.requested and asked == [True]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before and asked == [True]
