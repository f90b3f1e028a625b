"""The errors lldiff raises on purpose: the CLI prints them as one line, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


class LldiffError(Exception):
    """A user-facing error: the message names the bad value and what is allowed."""


class ImageReadError(LldiffError):
    """An image file that cannot be decoded; carries the path and the reason."""

    def __init__(self, path: Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def run_script(main: Callable[[], None]) -> None:
    """Run a benchmark's or script's ``main()``: bad input (an LldiffError) ends it with one
    'error: ...' line instead of a traceback, as the CLI does."""
    try:
        main()
    except LldiffError as exc:
        raise SystemExit(f"error: {exc}") from None
