"""Dataset layouts: where the low-light images and their ground truth live, paired by name.

A dataset is a list of :class:`Pair` (name, low-light file, ground-truth file or None)
plus the files that could not be paired, each with its reason, so that one bad file
is reported by name and the others are still used. Nothing here decodes an image.

Known layouts under a data root (``--data-root``, ``$LLDIFF_DATA``, default ``./data``):

=============  ==========================================================
``LOL``        ``LOL/eval15/{low,high}`` (test), ``LOL/our485/{low,high}`` (train)
``LOLv2-real`` ``LOL-v2/Real_captured/{Test,Train}/{Low,Normal}``
``LOLv2-syn``  ``LOL-v2/Synthetic/{Test,Train}/{Low,Normal}``
``VE-LOL``     ``VE-LOL-L/VE-LOL-L-Cap-Full/{test,train}/{low,high}``
=============  ==========================================================
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from lldiff_cli.errors import LldiffError
from lldiff_cli.images import list_images, read_image

DATA_ENV = "LLDIFF_DATA"
SPLITS = ("train", "test")
SPLIT_PARTS = ("val", "blocks", "singles")  # what run_split can read back from a split.json

# dataset -> split -> (low folder, ground-truth folder), relative to the data root.
LAYOUTS: dict[str, dict[str, tuple[str, str]]] = {
    "LOL": {
        "test": ("LOL/eval15/low", "LOL/eval15/high"),
        "train": ("LOL/our485/low", "LOL/our485/high"),
    },
    "LOLv2-real": {
        "test": ("LOL-v2/Real_captured/Test/Low", "LOL-v2/Real_captured/Test/Normal"),
        "train": ("LOL-v2/Real_captured/Train/Low", "LOL-v2/Real_captured/Train/Normal"),
    },
    "LOLv2-syn": {
        "test": ("LOL-v2/Synthetic/Test/Low", "LOL-v2/Synthetic/Test/Normal"),
        "train": ("LOL-v2/Synthetic/Train/Low", "LOL-v2/Synthetic/Train/Normal"),
    },
    "VE-LOL": {
        "test": ("VE-LOL-L/VE-LOL-L-Cap-Full/test/low", "VE-LOL-L/VE-LOL-L-Cap-Full/test/high"),
        "train": ("VE-LOL-L/VE-LOL-L-Cap-Full/train/low", "VE-LOL-L/VE-LOL-L-Cap-Full/train/high"),
    },
}

# LOL-v2 (and VE-LOL) name a pair low00690.png / normal00690.png: when no ground truth has
# the low image's own name, its "low" prefix is swapped for one of these.
_LOW_PREFIX = "low"
_GT_PREFIXES = ("normal", "high", "gt")


@dataclass(frozen=True)
class Pair:
    """One scored image: ``name`` (the low file's path relative to its folder, without
    extension), the low-light file, and the ground-truth file (None when unpaired)."""

    name: str
    low: Path
    high: Path | None = None


@dataclass
class Dataset:
    """Pairs to use, and the files that could not be paired as (name, reason)."""

    description: str
    pairs: list[Pair]
    problems: list[tuple[str, str]] = field(default_factory=list)
    paired: bool = True
    folders: tuple[Path, ...] = ()  # the folders the images come from (low, and high when paired)

    def limit(self, n: int | None) -> "Dataset":
        """The first ``n`` pairs (all when n is None)."""
        if n is None:
            return self
        if n < 1:
            raise LldiffError(f"--limit must be at least 1, got {n}")
        return Dataset(self.description, self.pairs[:n], self.problems, self.paired, self.folders)


def read_pair(pair: Pair):
    """Decode a pair: (low, high) 1x3xHxW float tensors in [0, 1], high None when unpaired.

    Raises ImageReadError (path and reason) for a file that cannot be decoded and LldiffError
    when the two differ in size.
    """
    low = read_image(pair.low).rgb
    if pair.high is None:
        return low, None
    high = read_image(pair.high).rgb
    if high.shape != low.shape:
        raise LldiffError(f"size mismatch: low-light {low.shape[-1]}x{low.shape[-2]}, "
                          f"ground truth {high.shape[-1]}x{high.shape[-2]}")
    return low, high


def default_data_root() -> Path:
    """``$LLDIFF_DATA`` when set, else ``./data``."""
    return Path(os.environ.get(DATA_ENV) or "data")


def layout_dirs(dataset: str, root: Path, split: str = "test") -> tuple[Path, Path]:
    """The (low, ground-truth) folders of a named layout; errors name the path and the layout."""
    names = {k.lower(): k for k in LAYOUTS}
    key = names.get(dataset.lower())
    if key is None:
        raise LldiffError(f"unknown dataset {dataset!r}; allowed: {', '.join(LAYOUTS)} "
                          "(or --low DIR [--high DIR] for any folders)")
    if split not in SPLITS:
        raise LldiffError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    low_rel, high_rel = LAYOUTS[key][split]
    low, high = Path(root) / low_rel, Path(root) / high_rel
    for folder in (low, high):
        if not folder.is_dir():
            common = os.path.commonpath([low_rel, high_rel])
            tails = f"{{{Path(low_rel).name},{Path(high_rel).name}}}"
            raise LldiffError(f"{key} ({split} split) not found: no folder {folder}; "
                              f"expected {Path(root) / common}/{tails} under the data root {root}")
    return low, high


def _stem(rel: Path) -> str:
    return rel.with_suffix("").as_posix()


def _gt_candidates(name: str) -> list[str]:
    """Ground-truth names that may belong to low image ``name``, in order of preference."""
    folder, _, base = name.rpartition("/")
    out = [name]
    if base.lower().startswith(_LOW_PREFIX):
        rest = base[len(_LOW_PREFIX):]
        prefix = base[:len(_LOW_PREFIX)]
        for gt in _GT_PREFIXES:
            # keep the case style: Low001 -> Normal001, LOW001 -> NORMAL001
            styled = gt.upper() if prefix.isupper() else gt.capitalize() if prefix[0].isupper() else gt
            out.append(f"{folder}/{styled}{rest}" if folder else f"{styled}{rest}")
    return out


def paired_folders(low_dir: Path, high_dir: Path, recursive: bool = False,
                   description: str | None = None) -> Dataset:
    """Pair the images of two folders by name (the extension may differ).

    A low image pairs with the ground truth of the same name, or else with the name whose
    ``low`` prefix is swapped for ``normal``/``high``/``gt`` (``low00690.png`` ->
    ``normal00690.png``). Low images without ground truth, ground truth without a low
    image, and names shared by two files are problems, not errors.
    """
    low_dir, high_dir = Path(low_dir), Path(high_dir)
    lows = list_images(low_dir, recursive)
    highs = list_images(high_dir, recursive)
    if not lows:
        raise LldiffError(f"no images in {low_dir}")
    by_name: dict[str, list[Path]] = defaultdict(list)
    for rel in highs:
        by_name[_stem(rel)].append(rel)
    low_names: dict[str, list[Path]] = defaultdict(list)
    for rel in lows:
        low_names[_stem(rel)].append(rel)

    pairs, problems, used = [], [], set()
    for name, rels in low_names.items():
        if len(rels) > 1:
            problems.append((name, f"two low-light files share this name: {', '.join(map(str, rels))}"))
            continue
        match = next((c for c in _gt_candidates(name) if c in by_name), None)
        if match is None:
            problems.append((name, f"no ground truth: no {name}.* in {high_dir}"))
            continue
        used.add(match)
        if len(by_name[match]) > 1:
            problems.append((name, "two ground-truth files share this name: "
                                   + ", ".join(str(high_dir / r) for r in by_name[match])))
            continue
        pairs.append(Pair(name, low_dir / rels[0], high_dir / by_name[match][0]))
    for name in by_name:
        if name not in used:
            problems.append((name, f"ground truth without a low-light image in {low_dir}"))
    pairs.sort(key=lambda p: p.name)
    problems.sort()
    return Dataset(description or f"{low_dir} vs {high_dir}", pairs, problems, paired=True,
                   folders=(low_dir, high_dir))


def unpaired_folder(low_dir: Path, recursive: bool = False) -> Dataset:
    """Every image of a folder, without ground truth (no-reference metrics only)."""
    low_dir = Path(low_dir)
    rels = list_images(low_dir, recursive)
    if not rels:
        raise LldiffError(f"no images in {low_dir}")
    pairs = [Pair(_stem(rel), low_dir / rel, None) for rel in rels]
    return Dataset(str(low_dir), pairs, [], paired=False, folders=(low_dir,))


def load_dataset(dataset: str | None = None, *, root: Path | None = None, split: str = "test",
                 low: Path | None = None, high: Path | None = None) -> Dataset:
    """A named layout under ``root``, or the folders ``low`` (and ``high`` when paired)."""
    if dataset and (low or high):
        raise LldiffError("give either --dataset or --low/--high, not both")
    if dataset:
        if root is None:
            try:
                low_dir, high_dir = layout_dirs(dataset, default_data_root(), split)
            except LldiffError as exc:  # the default root: say how to choose another
                raise LldiffError(f"{exc} (--data-root or ${DATA_ENV} sets it)") from None
        else:
            low_dir, high_dir = layout_dirs(dataset, Path(root), split)
        key = next(k for k in LAYOUTS if k.lower() == dataset.lower())
        return paired_folders(low_dir, high_dir, description=f"{key} {split} ({low_dir.parent})")
    if high and not low:
        raise LldiffError("--high needs --low: the folder of low-light inputs")
    if not low:
        raise LldiffError(f"no images to score: give --dataset ({', '.join(LAYOUTS)}) or --low DIR [--high DIR]")
    for folder, flag in ((low, "--low"), (high, "--high")):
        if folder is not None and not Path(folder).is_dir():
            raise LldiffError(f"{flag} folder not found: {folder}")
    return paired_folders(low, high) if high else unpaired_folder(low)


def split_by_blocks(names: list[str], val_fraction: float, block: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): names sorted naturally are cut into blocks of ``block`` consecutive
    names and every k-th block is held out, so near-duplicate neighbours stay on one side
    (:func:`run_split` reads the result back from a run's split.json)."""
    order = sorted(range(len(names)), key=lambda i: _natural(names[i]))
    if val_fraction <= 0:
        return order, []
    every = max(2, round(1 / val_fraction))
    train_idx, val_idx = [], []
    for b in range(0, len(order), block):
        (val_idx if (b // block) % every == every - 1 else train_idx).extend(order[b:b + block])
    return train_idx, val_idx


def split_singles(names: list[str], indices: list[int], count: int,
                  keep: Collection[str] = ()) -> tuple[list[int], list[int]]:
    """(rest, singles): ``count`` single images of ``indices`` held out, evenly spread over their
    natural order, the way LOL's test pairs were taken from its scene sequences: each held-out
    image keeps its neighbours (shots of the same scene) in training, so a model is scored on
    scenes it has seen, as on the benchmark (the block split asks for new scenes instead).
    Names in ``keep`` are never held out (:func:`benchmark_neighbours`)."""
    order = sorted(indices, key=lambda i: _natural(names[i]))
    if count <= 0:
        return order, []
    keep = set(keep)
    candidates = [i for i in order if names[i] not in keep]
    if 2 * count > len(candidates):
        raise LldiffError(f"cannot hold out {count} single images of {len(candidates)}: "
                          "each needs a neighbour left in training")
    picks = {candidates[int((k + 0.5) * len(candidates) / count)] for k in range(count)}
    return [i for i in order if i not in picks], [i for i in order if i in picks]


# The names of a layout's test pairs where they are single shots taken out of its training
# split's scene sequences (LOL's eval15: numbers missing from our485's numbering, whose
# neighbours are shots of the same scenes).
SCENE_TEST_NAMES: dict[str, tuple[str, ...]] = {
    "LOL": ("1", "22", "23", "55", "79", "111", "146", "179", "493", "547", "665", "669", "748", "778", "780"),
}


def benchmark_neighbours(layout: str, names: list[str]) -> set[str]:
    """The names among ``names`` next to a test pair of ``layout`` (n - 1 and n + 1 of each
    numeric test name): the shots of the benchmark's scenes. The singles split leaves them in
    training, as the benchmark's own training split has them, so that what a model learns of
    those scenes (their brightness above all) is what it will have when scored on the benchmark."""
    tests = {k.lower(): v for k, v in SCENE_TEST_NAMES.items()}.get(layout.lower(), ())
    near = {str(int(t) + d) for t in tests for d in (-1, 1)}
    return {n for n in names if n in near}


def _natural(name: str) -> list:
    """Sort key: digit runs compare as numbers (2 before 10)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def run_split(pairs: list[Pair], run: Path, held_out: bool = True, part: str = "val") -> list[Pair]:
    """The pairs a training run held out (``held_out``) or trained on, by the names in the
    split.json that ``lldiff train`` wrote into the run's folder. ``part``: "val" (everything
    held out), "blocks" (whole scenes) or "singles" (single images, LOL's test protocol)."""
    path = Path(run) / "split.json"
    if not path.is_file():
        raise LldiffError(f"{path} not found: a run folder that `lldiff train` wrote has one")
    if part not in SPLIT_PARTS:
        raise LldiffError(f"unknown held-out part {part!r}; allowed: {', '.join(SPLIT_PARTS)}")
    try:
        record = json.loads(path.read_text())
        val, singles = set(record["val"]), set(record.get("singles", []))
    except (ValueError, KeyError, TypeError) as exc:
        raise LldiffError(f"{path} is not a split.json written by `lldiff train`: {exc}") from None
    names = {"val": val, "blocks": val - singles, "singles": singles}[part]
    if held_out:
        return [p for p in pairs if p.name in names]
    return [p for p in pairs if p.name not in val]


def run_pairs(run: Path, held_out: bool = True, part: str = "val") -> list[Pair]:
    """The pairs a training run held out (``part`` of them, see :func:`run_split`) or trained on,
    from the data its config.yaml names (a layout under its root, or paired folders), as
    ``lldiff train`` read them."""
    from lldiff_cli.config import load_yaml

    data = load_yaml(Path(run) / "config.yaml").get("data") or {}
    if str(data.get("layout", "")).lower() == "paired":
        low_dir, high_dir = Path(data["low"]), Path(data["high"])
    else:
        low_dir, high_dir = layout_dirs(data.get("layout", "LOL"), Path(data.get("root", "data")),
                                        data.get("split", "train"))
    return run_split(paired_folders(low_dir, high_dir).pairs, run, held_out, part)
