import os
import stat

import pytest

from lldiff_cli.atomic import atomic_write


def test_atomic_write_replaces_with_normal_permissions(tmp_path):
    target = tmp_path / "a" / "out.txt"
    old = os.umask(0o022)
    try:
        with atomic_write(target, ".txt") as tmp:
            assert tmp.suffix == ".txt" and tmp.name.startswith(".out.txt.")
            tmp.write_text("hello")
            assert not target.exists()
    finally:
        os.umask(old)
    assert target.read_text() == "hello"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_atomic_write_failure_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
