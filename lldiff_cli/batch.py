"""Streaming a folder of images through a per-image job.

The shared engine of ``enhance`` and ``darken``: it lists nothing and prints
nothing. The caller gives the relative paths, where each input's outputs go and
what to do with a decoded image; the engine reads the next image while the
current one is processed, skips inputs whose outputs all exist (so a re-run
resumes an interrupted batch), records each failure with its reason and goes on.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import Enum
from pathlib import Path, PurePath
from typing import Callable, Iterable, Iterator

from lldiff_cli.errors import LldiffError
from lldiff_cli.images import IMAGE_EXTENSIONS, Image, is_image_file, list_files, read_image


class Outcome(Enum):
    DONE = "done"
    SKIPPED = "skipped"  # its outputs were all in place
    FAILED = "failed"


@dataclass(frozen=True)
class ItemStatus:
    """What became of one input of a batch, as ``on_item(rel, status)`` hears it: its outcome,
    and for a failure the reason (the file's own problem, e.g. "cannot read it: truncated")."""

    outcome: Outcome
    reason: str = ""

    @classmethod
    def failure(cls, reason: str) -> "ItemStatus":
        return cls(Outcome.FAILED, reason)

    @property
    def failed(self) -> bool:
        return self.outcome is Outcome.FAILED


DONE = ItemStatus(Outcome.DONE)
SKIPPED = ItemStatus(Outcome.SKIPPED)


@dataclass
class BatchReport:
    """What a batch did: each input is in exactly one of done / skipped / failed; ``left_out``
    are the files passed over as not images of a supported type (:attr:`Inputs.left_out`)."""

    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0
    left_out: list[Path] = field(default_factory=list)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / len(self.done) if self.done else 0.0


def prepare_output_dir(in_dir: Path, out_dir: Path) -> Path:
    """Create ``out_dir`` and check it is writable and not the input folder itself."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if in_dir.exists() and out_dir.exists() and in_dir.resolve() == out_dir.resolve():
        raise LldiffError(f"output folder is the input folder ({out_dir}); "
                          "choose another folder so the originals are never overwritten")
    return make_folder(out_dir)


def list_inputs(in_dir: Path, out_dir: Path, recursive: bool = False) -> list[Path]:
    """The images of ``in_dir`` (see images.list_images), less any inside ``out_dir`` when the
    output folder lies within the input folder: a batch never takes its own outputs as inputs."""
    return _outside(list_files(in_dir, recursive)[0], in_dir, out_dir)


def _outside(rels: list[Path], in_dir: Path, out_dir: Path) -> list[Path]:
    """``rels`` (relative to ``in_dir``) less those inside ``out_dir``."""
    try:
        inside = Path(out_dir).resolve().relative_to(Path(in_dir).resolve())
    except ValueError:
        return rels
    if not inside.parts:  # the input folder itself: prepare_output_dir refuses it
        return rels
    return [rel for rel in rels if rel.parts[:len(inside.parts)] != inside.parts]


@dataclass(frozen=True)
class Inputs:
    """A command's inputs: the ``folder``, its images to process (``files``, relative to it) and
    the files it passes over as not images of a supported type (``left_out``: GIFs, RAW files,
    notes), which fail nothing but are named in the summary."""

    folder: Path
    files: list[Path]
    left_out: list[Path] = field(default_factory=list)

    def share(self, shard: "Shard") -> "Inputs":
        """The part of these inputs (files and left-out files) that ``shard`` takes."""
        return replace(self, files=shard.select(self.files), left_out=shard.select(self.left_out))


def command_inputs(in_path: Path, out_dir: Path, recursive: bool = False) -> Inputs:
    """A command's inputs: a folder's images (:func:`list_inputs`) and the files of other types
    in it, or one image file given alone (its folder, [its name], none left out)."""
    in_path = Path(in_path)
    if in_path.is_file():
        if not is_image_file(in_path):
            raise LldiffError(f"{in_path} is not an image file; allowed extensions: {', '.join(IMAGE_EXTENSIONS)}")
        return Inputs(in_path.parent, [Path(in_path.name)])
    images, others = list_files(in_path, recursive)  # listed once: nothing hidden, nothing inside out_dir
    return Inputs(in_path, _outside(images, in_path, out_dir), _outside(others, in_path, out_dir))


@dataclass(frozen=True)
class Shard:
    """Part ``index`` (1 to ``count``) of a batch split over ``count`` processes or machines (a job
    array): the inputs whose relative path hashes to it. The parts together take every input once.

    The split is stable: an input's part depends on its own relative path alone (blake2b of the
    POSIX form, the same on every platform, version and run, unlike Python's salted ``hash``), so
    files added to the folder, or a task that lists it later, move no other input to another part.
    It balances counts, and pixels only on average: weighing each image by its size would mean
    reading every header in every task, and a size-aware packing would move files as others come.
    The parts' pixel totals draw closer as they grow: their spread falls as 1 / sqrt(images per part).
    """

    index: int
    count: int

    @classmethod
    def parse(cls, text: str, option: str = "--shard") -> "Shard":
        """``"I/N"`` -> Shard(I, N); LldiffError for anything else (``0/2``, ``3/2``, ``a/b``, ``1/0``)."""
        found = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", text)
        index, count = (int(n) for n in found.groups()) if found else (0, 0)
        if not 1 <= index <= count:
            raise LldiffError(f"{option} takes I/N, this task's part I (1 to N) of N parts, e.g. 1/8; got {text!r}")
        return cls(index, count)

    def takes(self, rel: Path) -> bool:
        """Whether the input ``rel`` (relative to the input folder) is this part's."""
        digest = hashlib.blake2b(PurePath(rel).as_posix().encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index - 1

    def select(self, rels: Iterable[Path]) -> list[Path]:
        """The inputs of ``rels`` that are this part's, in their order."""
        return [rel for rel in rels if self.takes(rel)]

    def for_rank(self, rank: int, world: int) -> "Shard":
        """Process ``rank``'s (0 to ``world`` - 1) share of this part, split between ``world``
        processes (torchrun's): part I + N * rank of N * world. The shares together take exactly
        this part's inputs, whatever ``world`` is (an input's hash h is in part I of N when
        h mod N = I - 1, and h mod N*W = (h mod N) + N * ((h // N) mod W)); so a job array's task
        takes the same images on a machine with 4 GPUs as on one with 8, or in one process."""
        if not 0 <= rank < world:
            raise LldiffError(f"rank {rank} is not one of 0 to {world - 1} (RANK and WORLD_SIZE)")
        return Shard(self.index + self.count * rank, self.count * world)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


# How long a process that has done its share waits for the others: the time the slowest share
# takes beyond the fastest (more images, bigger ones, a slower GPU). A dead process ends it at once.
RANKS_WAIT = timedelta(days=7)


@contextmanager
def ranks_together(world: int) -> Iterator[Callable[[], None]]:
    """For a batch split between ``world`` processes (torchrun's, each taking its own
    :meth:`Shard.for_rank`): join a gloo process group for the block and yield ``finish()``,
    which returns once every process has called it. With one process nothing is joined.

    The split needs no messages, but the processes must end together: torchrun stops all of them
    (SIGTERM) as soon as one exits non-zero, so a process whose share held one unreadable file
    (exit 1) would stop the others in the middle of theirs. A process that dies instead ends the
    others' wait at once (gloo sees its connection close; torchrun also stops them): none hangs.
    gloo on any device: these are CPU messages, no GPU collective.
    """
    if world == 1:
        yield lambda: None
        return
    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", timeout=RANKS_WAIT)
    except (ValueError, RuntimeError) as exc:  # WORLD_SIZE set by hand, without torchrun's rendezvous
        raise LldiffError(f"cannot join the other {world - 1} processes (WORLD_SIZE={world}): "
                          f"{str(exc).splitlines()[0]}; start several processes with torchrun") from None

    def finish() -> None:
        try:
            dist.barrier()
        except RuntimeError as exc:
            raise LldiffError(f"another process stopped before the end of its share ({str(exc).splitlines()[0]}); "
                              "run the same command again to do the images it left") from None

    try:
        yield finish
    finally:
        dist.destroy_process_group()


def refuse_shared_outputs(rels: list[Path], target: Callable[[Path], Path]) -> None:
    """LldiffError when two inputs would be written to one output, ``target(rel)`` (a.png and
    a.jpg with --format png, say): one would silently replace the other."""
    seen: dict[Path, Path] = {}
    for rel in rels:
        out = target(rel)
        other = seen.setdefault(out, rel)
        if other != rel:
            raise LldiffError(f"{other} and {rel} would both be written to {out}; "
                              "drop --format or rename one of them")


def refuse_writing_inputs(in_dir: Path, inputs: Iterable[Path], outputs: Iterable[Path],
                          out_folders: Iterable[Path] = ()) -> None:
    """LldiffError, before any work, when a batch would write over the files it reads: when
    ``in_dir`` is one of ``out_folders`` (the folders it fills) or lies inside one, or when a file
    of ``inputs`` is one of ``outputs``. Links are seen through: folders are compared as the
    same folder on disk, an input by where it leads, an output by where its folder leads (an
    output replaces its own name by a rename, so a link in that place is replaced, not followed)."""
    src = Path(in_dir).resolve()
    for folder in out_folders:
        inside = next((p for p in (src, *src.parents) if _same_folder(p, Path(folder))), None)
        if inside is not None:
            raise LldiffError(f"input folder {in_dir} is {'' if inside == src else 'inside '}the output folder "
                              f"{folder}: its files would be overwritten; choose an input folder outside {folder}")
    folders: dict[Path, Path] = {}

    def located(path: Path) -> Path:
        path = Path(path).absolute()
        if path.parent not in folders:
            folders[path.parent] = path.parent.resolve()
        return folders[path.parent] / path.name

    written = {located(p): p for p in outputs}
    for path in inputs:
        hit = written.get(located(Path(path).resolve()))
        if hit is not None:
            raise LldiffError(f"{path} would be overwritten by the output {hit}; "
                              "choose input and output folders that do not overlap")


def _same_folder(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one folder (links and a case-insensitive disk seen through)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist yet
        return a.resolve() == b.resolve()


def make_folder(folder: Path, what: str | None = None) -> Path:
    """Create ``folder`` (and its parents) and check it is writable; errors call it ``what``
    (by default "output folder FOLDER")."""
    folder = Path(folder)
    what = what or f"output folder {folder}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # with exist_ok, only a file where a folder should be
        raise LldiffError(f"cannot create {what}: a file is in the way") from None
    except OSError as exc:
        raise LldiffError(f"cannot create {what}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LldiffError(f"{what} is not writable")
    return folder


def prepare_output_file(path: Path, suffixes: tuple[str, ...] | None = None) -> Path:
    """Check, before a long run, that the file ``path`` can be written when the run ends:
    its folder can be made and written, it is not a folder, and its extension is one of
    ``suffixes`` (when given)."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise LldiffError(f"{path}: {path.suffix or 'no extension'!r} is not an image extension; "
                          f"allowed: {', '.join(suffixes)}")
    if path.is_dir():
        raise LldiffError(f"{path} is a folder; give a file name")
    make_folder(path.parent, f"the folder for {path}")
    return path


def run_batch(
    in_dir: Path,
    rels: list[Path],
    *,
    outputs: Callable[[Path], list[Path]],
    process: Callable[[Path, Image], None],
    recorded: Callable[[Path], bool] | None = None,
    overwrite: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_item: Callable[[Path, ItemStatus], None] | None = None,
) -> BatchReport:
    """Run ``process(rel, image)`` for every input ``in_dir / rel``.

    ``outputs(rel)`` lists the files an input writes. An input whose outputs are all
    in place (and, when ``recorded`` is given, ``recorded(rel)``: a manifest lists it)
    is skipped without being decoded unless ``overwrite``; one with a folder where an
    output goes fails, before anything of it is written.
    ``on_start(len(rels))`` is called first (a progress bar's total); ``on_item(rel, status)``
    after each input, with its :class:`ItemStatus` (DONE, SKIPPED, or a failure and its reason).
    Exceptions other than LldiffError (and OSError from writing) propagate: they are bugs, not bad input.
    """
    if on_start:
        on_start(len(rels))
    report = BatchReport()
    start = time.perf_counter()

    def fail(rel: Path, reason: str) -> None:
        report.failed.append((rel, reason))
        if on_item:
            on_item(rel, ItemStatus.failure(reason))

    todo = []
    for rel in rels:
        files = outputs(rel)
        blocked = next((p for p in files if p.is_dir()), None)
        if blocked is not None:
            fail(rel, f"a folder is in the way of the output {blocked}")
        elif not overwrite and all(p.is_file() for p in files) and (recorded is None or recorded(rel)):
            report.skipped.append(rel)
            if on_item:
                on_item(rel, SKIPPED)
        else:
            todo.append(rel)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lldiff-read") as pool:
        pending = pool.submit(read_image, Path(in_dir) / todo[0]) if todo else None
        for i, rel in enumerate(todo):
            current = pending
            pending = pool.submit(read_image, Path(in_dir) / todo[i + 1]) if i + 1 < len(todo) else None
            try:
                process(rel, current.result())
            except (LldiffError, OSError) as exc:
                fail(rel, exc.reason if hasattr(exc, "reason") else str(exc))
                continue
            report.done.append(rel)
            if on_item:
                on_item(rel, DONE)
    report.seconds = time.perf_counter() - start
    return report
