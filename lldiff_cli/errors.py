"""The errors lldiff raises on purpose: the CLI prints them as one line, never a traceback."""

from __future__ import annotations

from pathlib import Path


class LldiffError(Exception):
    """A user-facing error: the message names the bad value and what is allowed."""


class ImageReadError(LldiffError):
    """An image file that cannot be decoded; carries the path and the reason."""

    def __init__(self, path: Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
