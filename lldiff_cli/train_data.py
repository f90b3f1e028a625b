"""Training data: the configured images found, split and decoded once, and the batches cut from them.

Data (the ``data`` section): image pairs of any layout ``lldiff eval`` knows (data.py), and/or a
folder of normal-light photos darkened on the fly by :func:`lldiff_cli.darken.random_pair`, mixed
by ``data.synthetic_ratio``. Images are decoded once into uint8 tensors and cropped per batch.

Batch ``step`` of process ``rank`` is a pure function of (seed, step, rank): a pool of threads
can build batches ahead of the loop (:func:`prefetch`), and a resumed run sees the very batches
it would have seen.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from lldiff_cli.darken import random_pair, seed_for
from lldiff_cli.errors import ImageReadError, LldiffError
from lldiff_cli.tiling import shrink
from lldiff_cli.train_config import NO_PAIRS, DataConfig, TrainConfig

PHOTOS = "photos/"  # how a held-out darkened photo's name starts in TrainData.val_names


@dataclass
class TrainData:
    """Decoded training data: uint8 3xHxW tensors, each at least data.crop on both sides.

    pairs: (low, high) for training; photos: normal-light images, darkened per batch;
    val_pairs / val_names: the held-out split (real pairs, then photos darkened with a fixed seed);
    val_singles: the names of val_names held out as single images (data.val_singles), not blocks;
    skipped: (file, reason) of every file left out.
    """

    pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    photos: list[torch.Tensor] = field(default_factory=list)
    val_pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    val_names: list[str] = field(default_factory=list)
    val_singles: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def load_training_data(cfg: TrainConfig) -> TrainData:
    """Find, split and decode the configured data (data.py resolves every paired layout)."""
    from lldiff_cli.data import benchmark_neighbours, load_dataset, split_by_blocks, split_singles
    from lldiff_cli.images import list_images

    d, out = cfg.data, TrainData()
    if d.layout.lower() != NO_PAIRS:
        if d.layout.lower() == "paired":
            for folder, key in ((d.low, "data.low"), (d.high, "data.high")):
                if not Path(folder).is_dir():
                    raise LldiffError(f"{key} folder not found: {folder}")
            dataset = load_dataset(low=Path(d.low), high=Path(d.high))
        else:
            try:
                dataset = load_dataset(d.layout, root=Path(d.root), split=d.split)
            except LldiffError as exc:
                hint = "; to train on data.photos alone, set data.layout=none" if d.photos else ""
                raise LldiffError(f"{exc}{hint}") from None
        out.skipped += dataset.problems
        if not dataset.pairs:
            raise LldiffError(f"no image pairs in {dataset.description}")
        names = [p.name for p in dataset.pairs]
        train_idx, val_idx = split_by_blocks(names, d.val_fraction, d.val_block)
        train_idx, singles = split_singles(names, train_idx, d.val_singles,
                                           keep=benchmark_neighbours(d.layout, names))
        out.val_singles = [names[i] for i in singles]
        val_idx += singles
        held = set(val_idx)
        decoded = _map(lambda p: _read_training_pair(p, d.max_side), dataset.pairs, d.workers)
        for i in train_idx + val_idx:
            name, item = dataset.pairs[i].name, decoded[i]
            if isinstance(item, str):
                out.skipped.append((name, item))
            elif i in held:
                out.val_pairs.append(item)
                out.val_names.append(name)
            elif min(item[0].shape[-2:]) < d.crop:
                out.skipped.append((name, _too_small(item[0], d.crop)))
            else:
                out.pairs.append(item)
    if d.photos:
        root = Path(d.photos)
        rels = list_images(root, recursive=True)
        if not rels:
            raise LldiffError(f"no images in data.photos folder {root}")
        names = [rel.with_suffix("").as_posix() for rel in rels]
        train_idx, val_idx = split_by_blocks(names, d.val_fraction, d.val_block)
        held = set(val_idx)
        decoded = _map(lambda rel: _read_uint8(root / rel, d.max_side), rels, d.workers)
        for i in train_idx + val_idx:
            name, item = names[i], decoded[i]
            if isinstance(item, str):
                out.skipped.append((str(root / rels[i]), item))
            elif i in held:
                # The held-out photos get a fixed darkening: the same validation pairs at every validation.
                high = item[None].float() / 255
                gen = torch.Generator().manual_seed(seed_for(cfg.seed, f"val/{name}"))
                low = quantize(random_pair(high, gen, mode=d.darken.mode, ranges=d.darken.lv_ranges(),
                                            factor=d.darken.factor, noise=d.darken.noise_ranges()))
                out.val_pairs.append(((low[0] * 255).round().to(torch.uint8), item))
                out.val_names.append(f"{PHOTOS}{name}")
            elif min(item.shape[-2:]) < d.crop:
                out.skipped.append((str(root / rels[i]), _too_small(item, d.crop)))
            else:
                out.photos.append(item)
    if not out.pairs and not out.photos:
        raise LldiffError(f"no training images left (each needs at least data.crop = {d.crop} pixels a side); "
                          f"{len(out.skipped)} file(s) skipped")
    return out


def _map(fn, items, workers: int) -> list:
    """fn over items, in order; in a thread pool when workers > 0 (decoding releases the GIL)."""
    if workers == 0:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _too_small(image: torch.Tensor, crop: int) -> str:
    h, w = image.shape[-2:]
    return f"{w}x{h} is smaller than data.crop ({crop})"


def _as_uint8(rgb: torch.Tensor, max_side: int = 0) -> torch.Tensor:
    """1x3xHxW [0, 1] -> uint8 3xHxW, shrunk (area average) to ``max_side`` when larger."""
    if max_side and max(rgb.shape[-2:]) > max_side:
        rgb = shrink(rgb, max_side)
    return (rgb[0] * 255).round().to(torch.uint8)


def _read_uint8(path: Path, max_side: int = 0) -> torch.Tensor | str:
    """A photo as uint8 3xHxW (see _as_uint8); the reason as a string when unreadable."""
    from lldiff_cli.images import read_image

    try:
        return _as_uint8(read_image(path).rgb, max_side)
    except ImageReadError as exc:
        return exc.reason


def _read_training_pair(pair, max_side: int = 0):
    """(low, high) as uint8 3xHxW, or 'path: reason' when the pair cannot be used."""
    from lldiff_cli.data import read_pair

    try:
        low, high = read_pair(pair)
    except ImageReadError as exc:
        return str(exc)
    except LldiffError as exc:  # the sizes differ
        return f"{pair.low}: {exc}"
    return _as_uint8(low, max_side), _as_uint8(high, max_side)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels: a synthetic input then looks like one read from a file at inference."""
    return (x.clamp(0, 1) * 255).round() / 255


def random_batch(items: list[tuple[torch.Tensor, ...]], batch_size: int, crop: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random crops with flips and transposes of aligned uint8 3xHxW images (a pair, or a photo
    alone) -> one float Nx3xcropxcrop batch in [0, 1] per member of the tuples."""
    columns: list[list[torch.Tensor]] = [[] for _ in items[0]]
    for _ in range(batch_size):
        group = items[int(torch.randint(len(items), (1,), generator=generator))]
        h, w = group[0].shape[-2:]
        size = min(crop, h, w)
        y = int(torch.randint(h - size + 1, (1,), generator=generator))
        x = int(torch.randint(w - size + 1, (1,), generator=generator))
        views = [image[:, y:y + size, x:x + size] for image in group]
        flips = torch.randint(2, (3,), generator=generator).tolist()
        if flips[0]:
            views = [v.flip(-1) for v in views]
        if flips[1]:
            views = [v.flip(-2) for v in views]
        if flips[2]:
            views = [v.transpose(-1, -2) for v in views]
        for column, view in zip(columns, views):
            column.append(view)
    return tuple(torch.stack(column).float() / 255 for column in columns)


def make_batch(data: TrainData, cfg: DataConfig, seed: int, step: int, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``step`` of process ``rank``: (low, high), float Nx3xcropxcrop in [0, 1], on the CPU.

    A pure function of its arguments (its generator is seeded from them), so batches can be
    built ahead, in threads, and a resumed run sees the very batches it would have seen.
    """
    gen = torch.Generator().manual_seed(seed_for(seed, f"batch/{rank}/{step}"))
    n = cfg.batch_size
    if not data.photos:
        n_photos = 0
    elif not data.pairs:
        n_photos = n
    else:  # round synthetic_ratio * n up or down at random, so the mean share is exact
        share = cfg.synthetic_ratio * n
        n_photos = int(share) + int(float(torch.rand((), generator=gen, dtype=torch.float64)) < share - int(share))
    lows, highs = [], []
    if n - n_photos:
        low, high = random_batch(data.pairs, n - n_photos, cfg.crop, gen)
        lows.append(low)
        highs.append(high)
    if n_photos:
        (high,) = random_batch([(p,) for p in data.photos], n_photos, cfg.crop, gen)
        dk = cfg.darken
        low = random_pair(high, gen, mode=dk.mode, ranges=dk.lv_ranges(), factor=dk.factor, noise=dk.noise_ranges())
        lows.append(quantize(low))
        highs.append(high)
    return torch.cat(lows), torch.cat(highs)


def prefetch(fn: Callable[[int], object], steps: Iterable[int], workers: int) -> Iterator:
    """fn(step) for each step, in order; ``workers`` threads compute up to 2 * workers ahead."""
    if workers == 0:
        yield from map(fn, steps)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="lldiff-batch")
    pending: deque = deque()
    todo = iter(steps)
    try:
        for s in todo:
            pending.append(pool.submit(fn, s))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
