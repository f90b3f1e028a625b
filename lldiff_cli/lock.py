"""One process at a time: an exclusive lock on a file that the OS drops when its holder dies.

``flock`` (``msvcrt.locking`` on Windows) rather than a pid file: a process killed with SIGKILL,
or a machine that lost power, leaves no lock that blocks the next one; the file left behind
holds nothing but the last holder's pid and host, which the next holder overwrites.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lldiff_cli.errors import LldiffError


class LockHeld(LldiffError):
    """The lock is held by another process, ``holder`` ("pid N on HOST", or "" when unknown)."""

    def __init__(self, path: Path, holder: str):
        self.path = Path(path)
        self.holder = holder
        super().__init__(f"{self.path} is held by {holder or 'another process'}")


@contextmanager
def hold(path: Path) -> Iterator[None]:
    """Hold the exclusive lock on ``path`` (created if missing) for the block; raise LockHeld at
    once, without waiting, when another process holds it. The file is removed at the end."""
    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except OSError:
            try:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip()
            except OSError:  # Windows: the holder's locked byte cannot be read
                holder = ""
            os.close(fd)
            raise LockHeld(path, holder) from None
        # The previous holder removes the file as it lets go: if it did so between our open and
        # our lock, we hold a file nobody else will open; start again on the one now at ``path``.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        _release(fd, path)


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _release(fd: int, path: Path) -> None:
    if os.name == "nt":  # an open file cannot be removed there; one another process opened stays
        os.close(fd)
        try:
            path.unlink()
        except OSError:
            pass
        return
    path.unlink(missing_ok=True)  # while still locked: a process waiting on the old file sees it gone
    os.close(fd)
