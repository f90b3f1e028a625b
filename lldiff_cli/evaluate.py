"""Scoring methods over a dataset: one pass, every method on every image, rows out.

Each image pair is read once and given to every method; the output is rounded to
8 bits (as a saved image is) and scored against the ground truth and the input.
A file that cannot be read, a missing ground truth or a size mismatch is recorded
by name and the other images are still scored. Nothing here prints.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from lldiff_cli import metrics as M
from lldiff_cli.batch import DONE, ItemStatus, make_folder, prepare_output_file
from lldiff_cli.data import Dataset, Pair, read_pair
from lldiff_cli.errors import LldiffError
from lldiff_cli.images import IMAGE_EXTENSIONS, to_uint8, write_image

# Every metric, in table order. Full-reference ones need ground truth.
METRICS = ("psnr", "ssim", "psnr_gtmean", "ssim_gtmean", "lpips", "loe", "niqe")
FULL_REFERENCE = ("psnr", "ssim", "psnr_gtmean", "ssim_gtmean", "lpips")


@dataclass
class ImageScore:
    """One method on one image: metric -> value (NaN where not defined), and its time."""

    method: str
    name: str
    scores: dict[str, float]
    seconds: float


@dataclass
class MethodSummary:
    """Means of one method over the images it scored; None where a metric is n/a."""

    method: str
    n: int
    means: dict[str, float | None]
    seconds_per_image: float
    peak_memory_mb: float


@dataclass
class EvalResult:
    rows: list[ImageScore]
    summaries: list[MethodSummary]
    failures: list[tuple[str, str]] = field(default_factory=list)  # (image name, reason)
    metrics: tuple[str, ...] = METRICS


def choose_metrics(requested: Sequence[str] | None, *, paired: bool) -> tuple[str, ...]:
    """The metrics to compute: ``requested`` (checked) or all that the data allow.

    Full-reference metrics are dropped for unpaired data; LPIPS stays in the list without
    weights so that its column says n/a rather than vanishing.
    """
    if requested:
        unknown = [m for m in requested if m not in METRICS]
        if unknown:
            raise LldiffError(f"unknown metric {unknown[0]!r}; allowed: {', '.join(METRICS)}")
        if not paired and any(m in FULL_REFERENCE for m in requested):
            bad = [m for m in requested if m in FULL_REFERENCE]
            raise LldiffError(f"{', '.join(bad)} need ground truth; without --high only loe and niqe apply")
        return tuple(m for m in METRICS if m in requested)
    return tuple(m for m in METRICS if paired or m not in FULL_REFERENCE)


def max_rss_bytes() -> int:
    """The most memory this process has held resident so far, in bytes (getrusage; Unix only)."""
    import resource  # not on Windows: imported only where the /proc sampling is unavailable

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class PeakMemory:
    """Peak memory of a block of code, in MB.

    The growth over the block, on every device, so that methods compare whatever was loaded before
    (every method's weights, LPIPS): on CUDA ``torch.cuda.max_memory_allocated`` less what was
    allocated when the block began; on the CPU the largest growth of the process's resident set,
    sampled every 2 ms from /proc (Linux), else the growth of ``ru_maxrss``.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = self._rss()
        self._peak = self._base
        if self._base is None:
            self._base = self._peak = max_rss_bytes()
            return self

        def sample() -> None:
            while not self._stop.wait(0.002):
                now = self._rss()
                if now is not None and now > self._peak:
                    self._peak = now

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = max(0, torch.cuda.max_memory_allocated(self.device) - self._base) / 2 ** 20
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            now = self._rss()
        else:
            now = max_rss_bytes()
        peak = max(self._peak, now or 0)
        self.peak_mb = max(0, peak - self._base) / 2 ** 20


def score_image(output: np.ndarray, low: np.ndarray, high: np.ndarray | None,
                metrics: Sequence[str], lpips_model: M.LPIPS | None = None) -> dict[str, float]:
    """The requested metrics of one output (all HxWx3 uint8); NaN where one is not defined.
    PSNRs are capped at ``metrics.PSNR_CAP`` (an identical pair is not inf)."""
    out: dict[str, float] = {}
    for name in metrics:
        if name == "psnr":
            out[name] = min(M.PSNR_CAP, M.psnr(output, high))
        elif name == "ssim":
            out[name] = M.ssim(output, high)
        elif name in ("psnr_gtmean", "ssim_gtmean"):
            adjusted = M.gt_mean(output, high)
            out[name] = min(M.PSNR_CAP, M.psnr(adjusted, high)) if name == "psnr_gtmean" else M.ssim(adjusted, high)
        elif name == "lpips":
            out[name] = M.lpips(lpips_model, output, high) if lpips_model is not None else math.nan
        elif name == "loe":
            out[name] = M.loe(output, low)
        elif name == "niqe":
            out[name] = M.niqe(output)
    return out


def _mean(values: list[float]) -> float | None:
    """Mean of the defined values; None when none is defined."""
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else None


def evaluate(
    dataset: Dataset,
    methods: Sequence,
    *,
    metrics: Sequence[str] = METRICS,
    lpips_model: M.LPIPS | None = None,
    device: torch.device | str = "cpu",
    on_image: Callable[[str, Pair, torch.Tensor, torch.Tensor, torch.Tensor | None], None] | None = None,
    on_item: Callable[[str, ItemStatus], None] | None = None,
) -> EvalResult:
    """Run every method (``name``, ``__call__(low) -> enhanced``) over ``dataset``.

    ``on_image(method, pair, low, enhanced, high)`` sees each output (tensors 1x3xHxW in
    [0, 1], ``high`` None when unpaired), e.g. to save it; ``on_item(name, status)`` is
    called once per image with batch.DONE or a failure and its reason (batch.ItemStatus).
    """
    device = torch.device(device)
    metrics = tuple(metrics)
    if any(m in FULL_REFERENCE for m in metrics) and not dataset.paired:
        raise LldiffError("full-reference metrics need ground truth")
    rows: list[ImageScore] = []
    failures = list(dataset.problems)
    peaks = {m.name: 0.0 for m in methods}

    for pair in dataset.pairs:
        try:
            low_t, high_t = read_pair(pair)
        except LldiffError as exc:  # an unreadable file ("path: reason") or sizes that differ
            reason = str(exc)
            failures.append((pair.name, reason))
            if on_item:
                on_item(pair.name, ItemStatus.failure(reason))
            continue
        low_u8 = to_uint8(low_t)
        high_u8 = to_uint8(high_t) if high_t is not None else None
        low_dev = low_t.to(device)
        failed = []
        for method in methods:
            try:
                with PeakMemory(device) as mem, torch.no_grad():
                    start = time.perf_counter()
                    enhanced = method(low_dev)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    seconds = time.perf_counter() - start
                if tuple(enhanced.shape) != tuple(low_dev.shape):
                    raise LldiffError(f"output shape {tuple(enhanced.shape)} differs from input {tuple(low_dev.shape)}")
                scores = score_image(to_uint8(enhanced), low_u8, high_u8, metrics, lpips_model)
            except LldiffError as exc:
                failed.append(f"{method.name}: {exc}")
                failures.append((pair.name, f"{method.name}: {exc}"))
                continue
            peaks[method.name] = max(peaks[method.name], mem.peak_mb)
            rows.append(ImageScore(method.name, pair.name, scores, seconds))
            if on_image:
                on_image(method.name, pair, low_t, enhanced.detach().cpu(), high_t)
        if on_item:
            on_item(pair.name, ItemStatus.failure("; ".join(failed)) if failed else DONE)

    summaries = []
    for method in methods:
        mine = [r for r in rows if r.method == method.name]
        means = {m: _mean([r.scores[m] for r in mine]) for m in metrics}
        spi = float(np.mean([r.seconds for r in mine])) if mine else 0.0
        summaries.append(MethodSummary(method.name, len(mine), means, spi, peaks[method.name]))
    return EvalResult(rows, summaries, failures, metrics)


@dataclass(frozen=True)
class EvalOutputs:
    """Where a benchmark's reports go; None: not written."""

    csv: Path | None = None        # per-image scores (write_csv)
    json: Path | None = None       # the protocol and the means (write_json)
    sheet: Path | None = None      # a comparison sheet image (comparison_sheet)
    sheet_images: str = "4"        # its images: a count or names (sheet_names)
    save_dir: Path | None = None   # enhanced images, as DIR/METHOD/NAME.png (method_slug)


@dataclass
class Benchmark:
    """What :func:`benchmark` did: the scores, the protocol, the LPIPS weights found (none: LPIPS
    is n/a), the reports written as (what, path), and the images meant for the sheet that it
    left off because not every method scored them."""

    result: EvalResult
    protocol: dict
    lpips_weights: list[Path]
    written: list[tuple[str, Path]]
    off_sheet: list[str]


def method_slug(name: str) -> str:
    """A method's name as a folder name (``--save-dir DIR/METHOD/``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def benchmark(data: Dataset, method_specs: Sequence[str], *, device: torch.device, precision: str = "auto",
              metrics: Sequence[str] | None = None, lpips_weights: Path | None = None, split: str | None = None,
              outputs: EvalOutputs = EvalOutputs(),
              on_start: Callable[[int], None] | None = None,
              on_item: Callable[[str, ItemStatus], None] | None = None) -> Benchmark:
    """``lldiff eval``: score the methods ``method_specs`` name (baselines.make_method) on ``data``
    with one protocol, and write the reports ``outputs`` asks for.

    Refused before any scoring (LldiffError): a method given twice, metrics the data do not
    allow, LPIPS weights asked for and missing, a report that would replace an input or a
    ground truth or land among them, or that cannot be written, and a set with no pairs.
    Then ``on_start(len(data.pairs))``, and ``on_item`` after each image (see :func:`evaluate`).
    ``split`` (a --dataset's) is recorded in the protocol."""
    from lldiff_cli.baselines import make_method
    from lldiff_cli.device import pick_precision

    precision = pick_precision(precision, device)
    built = [make_method(spec, device, precision) for spec in method_specs]
    names = [m.name for m in built]
    if len(set(names)) != len(names):
        raise LldiffError(f"a method is given twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    weights = []
    if (not metrics or "lpips" in metrics) and data.paired:
        weights = M.find_lpips_weights(lpips_weights)
    metric_list = choose_metrics(metrics, paired=data.paired)
    lpips_model = M.load_lpips(weights, device) if weights and "lpips" in metric_list else None
    on_sheet = set(sheet_names(data.pairs, outputs.sheet_images)) if outputs.sheet else set()
    # The outputs are checked now, not refused after a scoring run that may take hours; first
    # that none would replace an input or a ground truth, or land among them, before any is made.
    reports = [(f"{option} {path}", path) for option, path in (("--csv", outputs.csv), ("--json", outputs.json),
                                                              ("--sheet", outputs.sheet), ("--save-dir", outputs.save_dir))
               if path]
    if outputs.save_dir is not None:  # and DIR/METHOD/: a method named like an input folder would write into it
        reports += [(f"--save-dir {outputs.save_dir} (its {method_slug(n)}/ for method {n})",
                     outputs.save_dir / method_slug(n)) for n in names]
    refuse_outputs_among_inputs(data, reports)
    for path in (outputs.csv, outputs.json):
        if path:
            prepare_output_file(path)
    if outputs.sheet:
        prepare_output_file(outputs.sheet, IMAGE_EXTENSIONS)
    if outputs.save_dir is not None:
        make_folder(outputs.save_dir, f"--save-dir folder {outputs.save_dir}")
    if not data.pairs:
        raise LldiffError(f"no image pairs to score in {data.description}")

    cells: dict[str, dict[str, object]] = {}

    def keep(method: str, pair, low_t, enhanced, high_t) -> None:
        if outputs.save_dir is not None:
            write_image(outputs.save_dir / method_slug(method) / f"{pair.name}.png", enhanced)
        if pair.name in on_sheet:
            row = cells.setdefault(pair.name, {"input": low_t, "ground truth": high_t})
            row[method] = enhanced

    if on_start:
        on_start(len(data.pairs))
    result = evaluate(data, built, metrics=metric_list, lpips_model=lpips_model, device=device,
                      on_image=keep, on_item=on_item)
    proto = protocol(data, metric_list, split=split, lpips_weights=[str(p) for p in weights],
                     device=str(device), precision=precision)
    written = []
    if outputs.csv:
        write_csv(result, outputs.csv)
        written.append(("per-image scores", outputs.csv))
    if outputs.json:
        write_json(result, proto, outputs.json)
        written.append(("summary", outputs.json))
    off_sheet = []
    if outputs.sheet:
        labels = ["input", *names] + (["ground truth"] if data.paired else [])
        rows = [(name, [cells[name][label] for label in labels]) for name in sorted(cells)
                if all(label in cells[name] for label in labels)]
        if rows:
            write_image(outputs.sheet, comparison_sheet(rows, labels))
            written.append(("comparison sheet", outputs.sheet))
        off_sheet = sorted(on_sheet - {name for name, _ in rows})
    return Benchmark(result, proto, weights, written, off_sheet)


def refuse_outputs_among_inputs(dataset: Dataset, outputs: Sequence[tuple[str, Path]]) -> None:
    """LldiffError, before any work, when a report path is one of the dataset's files or lies
    inside one of its folders: writing it would replace an input or a ground truth, or add files
    to the set. ``outputs``: (what the error calls it, e.g. "--csv r.csv", path); symlinks are resolved."""
    files = {p.resolve() for pair in dataset.pairs for p in (pair.low, pair.high) if p is not None}
    for what, path in outputs:
        target = Path(path).resolve()
        if target in files:
            raise LldiffError(f"{what} is one of the images being scored; give a path outside the input folders")
        for folder in dataset.folders:
            if target == folder.resolve() or folder.resolve() in target.parents:
                raise LldiffError(f"{what} lies inside the input folder {folder}; "
                                  "give a path outside the input folders")


def protocol(dataset: Dataset, metrics: Sequence[str], *, split: str | None = None,
             lpips_weights: Sequence[str] = (), device: str = "cpu", precision: str = "float32") -> dict:
    """What was scored and how: recorded in every JSON result so numbers can be compared."""
    import cv2

    import lldiff_cli

    definitions = {m: M.PROTOCOL["gtmean" if m.endswith("_gtmean") else m] for m in metrics}
    return {
        "dataset": dataset.description,
        "split": split,
        "images": len(dataset.pairs),
        "paired": dataset.paired,
        "metrics": list(metrics),
        "definitions": definitions,
        "output_rounding": "every output is rounded to 8 bits (round half to even of 255*x) "
                           "before scoring, as a saved image is",
        "means": "arithmetic mean of per-image values over the images a method scored; "
                 "NaN values (e.g. NIQE of small images) are left out",
        "lpips_weights": [str(p) for p in lpips_weights] or None,
        "model_sampling": "model methods run as lldiff enhance does: the model's own steps, eta "
                          "and exposure estimate, seed 0",
        "niqe_model": "MATLAB NIQE release modelparameters.mat (via BasicSR 1.4.2 niqe_pris_params.npz)",
        "device": str(device),
        "precision": precision,
        "versions": {
            "lldiff": lldiff_cli.__version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "opencv": cv2.__version__,
        },
    }


def comparison_sheet(rows: Sequence[tuple[str, Sequence[torch.Tensor]]], labels: Sequence[str],
                     cell_width: int = 320, gap: int = 4) -> torch.Tensor:
    """A side-by-side sheet: one row per image, one column per label (input | methods | truth).

    ``rows`` holds (image name, cells), each cell 1x3xHxW in [0, 1]; cells are resized to
    ``cell_width`` pixels wide (antialiased), a header names the columns and each row's
    input cell carries the image name. Returns 1x3xHxW in [0, 1].
    """
    from PIL import Image as PILImage, ImageDraw, ImageFont

    font = ImageFont.load_default()
    header = 18
    columns = len(labels)
    scaled_rows = []
    for name, cells in rows:
        if len(cells) != columns:
            raise LldiffError(f"sheet row {name!r} has {len(cells)} cells for {columns} labels")
        h, w = cells[0].shape[-2:]
        height = max(1, round(h * cell_width / w))
        scaled = [torch.nn.functional.interpolate(c.float().cpu(), size=(height, cell_width),
                                                  mode="bilinear", antialias=True, align_corners=False)
                  .clamp(0, 1) for c in cells]
        scaled_rows.append((name, scaled, height))
    width = columns * cell_width + (columns + 1) * gap
    total = header + sum(h + gap for _, _, h in scaled_rows) + gap
    sheet = PILImage.new("RGB", (width, total), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, label in enumerate(labels):
        draw.text((gap + j * (cell_width + gap) + 2, 3), label, fill=(0, 0, 0), font=font)
    y = header
    for name, scaled, height in scaled_rows:
        for j, cell in enumerate(scaled):
            tile = PILImage.fromarray(to_uint8(cell))
            sheet.paste(tile, (gap + j * (cell_width + gap), y))
        x0 = gap
        box = draw.textbbox((x0 + 2, y + 2), name, font=font)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        draw.text((x0 + 2, y + 2), name, fill=(255, 255, 255), font=font)
        y += height + gap
    array = np.asarray(sheet).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def _json_number(value: float | None):
    """JSON has no NaN: n/a is null. (No mean is inf: PSNR is capped, see score_image.)"""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def result_json(result: EvalResult, proto: dict) -> dict:
    """``{"protocol": ..., "results": [{"method", "n", <metric means>, ...}], "failures": [...]}``."""
    results = []
    for s in result.summaries:
        entry = {"method": s.method, "n": s.n}
        entry.update({m: _json_number(s.means[m]) for m in result.metrics})
        entry["seconds_per_image"] = s.seconds_per_image
        entry["peak_memory_mb"] = s.peak_memory_mb
        results.append(entry)
    failures = [{"image": name, "reason": reason} for name, reason in result.failures]
    return {"protocol": proto, "results": results, "failures": failures}


def write_json(result: EvalResult, proto: dict, path) -> None:
    import json

    from lldiff_cli.atomic import atomic_write

    with atomic_write(path, ".json") as tmp:
        tmp.write_text(json.dumps(result_json(result, proto), indent=2, allow_nan=False) + "\n")


def write_csv(result: EvalResult, path) -> None:
    """One row per (method, image): the metric values (empty where n/a) and the seconds taken."""
    import csv

    from lldiff_cli.atomic import atomic_write

    with atomic_write(path, ".csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "image", *result.metrics, "seconds"])
        for row in result.rows:
            values = ["" if math.isnan(row.scores[m]) else repr(float(row.scores[m])) for m in result.metrics]
            writer.writerow([row.method, row.name, *values, f"{row.seconds:.6f}"])


def sheet_names(pairs: Sequence[Pair], spec: str) -> list[str]:
    """The images of a comparison sheet: ``spec`` is a count N (N images evenly spaced over the
    set) or a comma-separated list of names (with or without extension)."""
    spec = spec.strip()
    if spec.isdigit():
        if int(spec) == 0:
            raise LldiffError("--sheet-images 0 puts no image on the sheet; give a count of 1 or more, or names")
        n = min(int(spec), len(pairs))
        if n <= 0:
            return []
        idx = sorted({round(i * (len(pairs) - 1) / max(1, n - 1)) for i in range(n)}) if n > 1 else [0]
        return [pairs[i].name for i in idx]
    lookup = {}
    for p in pairs:
        lookup[p.name] = p.name
        lookup[p.low.name] = p.name
    names = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item not in lookup:
            some = ", ".join(p.name for p in pairs[:5])
            raise LldiffError(f"--sheet-images: no image named {item!r} in the set (e.g. {some})")
        names.append(lookup[item])
    return names
