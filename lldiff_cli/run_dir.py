"""A training run's out_dir: the files a run writes there, holding the folder for one run
(a lock, and the checks made under it), undoing what a run that fails before its first step
wrote, the run's record (config.yaml, split.json) and its log (log.jsonl)."""

from __future__ import annotations

import json
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from lldiff_cli.config import dump_yaml, to_dict
from lldiff_cli.errors import LldiffError
from lldiff_cli.train_config import TrainConfig
from lldiff_cli.train_data import TrainData

RUN_FILES = ("config.yaml", "split.json", "log.jsonl", "last.pt", "best.pt", "curve.png")  # what a run writes
LOCK = "train.lock"  # in out_dir while a run holds it (lock.py): "pid N on HOST"


def check_out_dir(cfg: TrainConfig, resume: bool) -> None:
    """Refuse to start over a run (its last.pt), and to resume without one."""
    last = Path(cfg.out_dir) / "last.pt"
    if resume and not last.is_file():
        raise LldiffError(f"nothing to resume: no {last}")
    if not resume and last.exists():
        raise LldiffError(f"{cfg.out_dir} already holds a run ({last}); pass --resume to continue it, "
                          "or set out_dir=... to start another")


@dataclass
class RunDir:
    """out_dir as :func:`hold_out_dir` found it, so that a run that fails before its first step
    leaves it so: ``found`` maps the run files there to their content where :func:`start_run`
    may rewrite them (config.yaml, split.json on --resume), else None."""

    path: Path
    found: dict[str, Optional[bytes]]
    started: bool = False  # the first step is done, or last.pt saved: from then on the files stay

    def undo(self) -> None:
        """Remove the run files this run made and put back those it rewrote."""
        from lldiff_cli.atomic import atomic_write

        for name in RUN_FILES:
            path, before = self.path / name, self.found.get(name)
            if name not in self.found:
                path.unlink(missing_ok=True)
            elif before is not None and not (path.is_file() and path.read_bytes() == before):
                with atomic_write(path) as tmp:
                    tmp.write_bytes(before)


_HELD: dict[Path, RunDir] = {}  # out_dirs this process holds, by resolved path


@contextmanager
def hold_out_dir(cfg: TrainConfig, resume: bool) -> Iterator[RunDir]:
    """Hold out_dir for one run, from its start to its end: make it, lock it (another run holding
    it is an error, one killed is not: lock.py), and check under the lock that the run may write
    there: a resumed run where last.pt is, a new run only where no run file is (a config.yaml that
    already says ``cfg`` excepted: the run keeps it as its own). A run never replaces files it did
    not make: when the block fails before ``started``, :meth:`RunDir.undo` runs, and a folder made
    here and left empty goes too. In a process that already holds out_dir (the CLI around
    :func:`lldiff_cli.train.train`), it yields that hold and does nothing more."""
    from lldiff_cli.batch import make_folder
    from lldiff_cli.lock import LockHeld, hold

    out = Path(cfg.out_dir)
    key = out.resolve()
    if key in _HELD:
        yield _HELD[key]
        return
    with ExitStack() as stack:
        if not out.exists():
            stack.callback(_remove_if_empty, out)  # last, once the lock file is gone
        make_folder(out, f"out_dir {out}")
        try:
            stack.enter_context(hold(out / LOCK))
        except LockHeld as exc:
            raise LldiffError(f"{out} is in use by another run ({exc.holder or 'a process'}); wait for it "
                              "to end, or set out_dir=... to start another") from None
        check_out_dir(cfg, resume)  # again: no other run can change out_dir now
        theirs = [] if resume else [name for name in RUN_FILES if (out / name).exists()
                                    and not (name == "config.yaml" and _says(out / name, cfg))]
        if theirs:
            raise LldiffError(f"{out} already holds {', '.join(theirs)} (of a run that saved no checkpoint, or "
                              "your own), which this run would replace: move them away, or set out_dir=... "
                              "to start another run")
        rewritten = [out / "config.yaml", out / "split.json"]
        run = RunDir(out, {path.name: path.read_bytes() if path in rewritten and path.is_file() else None
                           for path in (out / name for name in RUN_FILES) if path.exists()})
        _HELD[key] = run
        stack.callback(_HELD.pop, key)
        try:
            yield run
        except BaseException:
            if not run.started:
                run.undo()
            raise


def _says(path: Path, cfg: TrainConfig) -> bool:
    """Whether the config file at ``path`` loads to ``cfg`` (so a run need not write it)."""
    from lldiff_cli.config import load_config

    try:
        return load_config(TrainConfig, path) == cfg
    except LldiffError:
        return False


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (or gone): it holds a run, or files of others
        pass


def start_run(cfg: TrainConfig, data: TrainData) -> None:
    """Write the run's record in out_dir (held: :func:`hold_out_dir`): config.yaml, unless it
    says ``cfg`` already (a config kept there, or a resumed run's own: then it stays as it is,
    comments and all), and split.json (the held-out names). A resumed run (last.pt there) must
    hold out the names its split.json lists, e.g. not other ones after the split's rules changed."""
    from lldiff_cli.atomic import atomic_write

    out_dir = Path(cfg.out_dir)
    split = out_dir / "split.json"
    if (out_dir / "last.pt").is_file() and split.is_file():  # resumed: hold out what the run held out
        record = json.loads(split.read_text())
        if set(record.get("val", [])) != set(data.val_names) or set(record.get("singles", [])) != set(data.val_singles):
            raise LldiffError(f"{split}: this run held out other pairs than the data and lldiff's split give now "
                              "(its validation would score pairs it trained on); resume it with the lldiff that "
                              "began it, or start a new run")
    if not _says(out_dir / "config.yaml", cfg):
        dump_yaml(to_dict(cfg), out_dir / "config.yaml")
    with atomic_write(split) as tmp:
        tmp.write_text(json.dumps({"val": data.val_names, "singles": data.val_singles}, indent=1) + "\n")


@contextmanager
def append_log(path: Path, on_log: Optional[Callable[[dict], None]] = None) -> Iterator[Callable[[dict], None]]:
    """``log(record)`` for the length of a run: each record one JSON line appended to ``path``
    (log.jsonl; a resumed run continues it), flushed at once, then handed to ``on_log``."""
    with open(path, "a", encoding="utf-8") as fh:
        def log(record: dict) -> None:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            if on_log:
                on_log(record)

        yield log
