"""Ctrl-C as a request to stop: the first SIGINT asks a loop to stop after its current step (a
training run then saves last.pt), a second one stops at once (KeyboardInterrupt)."""

from __future__ import annotations

import signal
from typing import Callable, Optional


class StopOnInterrupt:
    """``with StopOnInterrupt() as stop: train(..., stop=stop)``: ``stop()`` (and ``requested``)
    turn true at the first Ctrl-C, which also calls ``on_request()``; a second raises
    KeyboardInterrupt. SIGINT's previous handler is back on leaving the block."""

    def __init__(self, on_request: Optional[Callable[[], None]] = None):
        self.requested = False
        self.on_request = on_request
        self._previous = None

    def __call__(self) -> bool:
        return self.requested

    def __enter__(self) -> "StopOnInterrupt":
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, *_) -> None:
        if self.requested:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.requested = True
        if self.on_request:
            self.on_request()
