"""The lldiff command line: thin Typer commands over the core modules.

Each command parses its options, picks the device, calls one core function and
prints a Rich summary. torch and the core modules are imported inside the
commands so that ``lldiff --help`` answers at once.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    name="lldiff",
    help="Make dark photos look right with diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# soft_wrap: Rich never breaks a message line (a path in it) at the console's width: piped into
# a log or `| cat`, that width is 80 (or $COLUMNS), not a terminal's; a terminal wraps by itself.
console = Console(stderr=True, soft_wrap=True)
out = Console()

# Options shared by every command that streams a folder of images.
RecursiveOpt = Annotated[bool, typer.Option("--recursive", "-r", help="Also process images in sub-folders; outputs mirror the layout.")]
FormatOpt = Annotated[Optional[str], typer.Option("--format", help="Output format (png, jpg, bmp, tif, webp, heic); default: keep each input's format.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Redo images whose outputs exist (default: skip them, so a re-run resumes).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; only errors and the summary.")]


def fail(message: str, code: int = 2) -> None:
    """Print one clear error line and exit."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors():
    """Turn LldiffError into one error line; let bugs show their traceback."""
    from lldiff_cli.errors import LldiffError

    try:
        yield
    except LldiffError as exc:
        fail(str(exc))


def _progress(quiet: bool, *extra):
    """A Rich progress display: description, bar, done / total, rate, elapsed, ETA, then ``extra`` columns."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), *extra, console=console, disable=quiet)


class BatchBar:
    """A Rich progress bar (count, rate, ETA) for a core batch function: its ``on_start(total)``
    shows the bar (once the core's checks have passed: a refusal shows none), and the bar is
    its ``on_item(name, status)``, which names each failure (a batch.ItemStatus) as it happens."""

    def __init__(self, description: str, quiet: bool):
        self.progress = _progress(quiet)
        self.description = description
        self.task = None

    def on_start(self, total: int) -> None:
        self.task = self.progress.add_task(self.description, total=total, rate="")
        self.progress.start()

    def __call__(self, name, status) -> None:
        if status.failed:
            self.progress.console.print(f"[red]failed[/] {escape(str(name))}: {escape(status.reason)}",
                                        highlight=False, soft_wrap=True)
        self.progress.advance(self.task)
        elapsed = self.progress.tasks[0].elapsed or 0.0
        done = self.progress.tasks[0].completed
        self.progress.update(self.task, rate=f"{done / elapsed:.2f} img/s" if elapsed > 0 else "")


@contextmanager
def batch_progress(description: str, quiet: bool):
    """Yields a :class:`BatchBar`; the bar, if started, ends with the block."""
    bar = BatchBar(description, quiet)
    try:
        yield bar
    finally:
        if bar.task is not None:  # Rich ends even a bar never shown with a blank line
            bar.progress.stop()


def _say_no_images(in_dir: Path, recursive: bool) -> None:
    console.print(f"[yellow]no images in {escape(str(in_dir))}[/]"
                  + ("" if recursive else " (--recursive also looks in sub-folders)"), highlight=False)


def report_batch(report, what: str) -> None:
    """Print the done / skipped / failed summary, and the files the batch left out as of an
    unsupported type (batch.Inputs.left_out), which fail nothing; exit 1 if anything failed."""
    left_out = report.left_out
    line = (f"{what}: [green]{len(report.done)} done[/], {len(report.skipped)} skipped, "
            f"[{'red' if report.failed else 'green'}]{len(report.failed)} failed[/]")
    if report.done:
        line += f" ({report.seconds_per_image:.2f} s per image)"
    console.print(line, highlight=False)  # each failure was named as it happened (batch_progress)
    if left_out:
        names = ", ".join(str(rel) for rel in left_out[:5]) + (f" and {len(left_out) - 5} more" if len(left_out) > 5 else "")
        console.print(f"[yellow]left out {len(left_out)} {'file' if len(left_out) == 1 else 'files'} "
                      f"of an unsupported type:[/] {escape(names)}", highlight=False)
    if report.failed:
        raise typer.Exit(1)


# --- darken -------------------------------------------------------------------

from enum import Enum  # noqa: E402  (kept in this section; the core imports stay lazy)


class DarkenMode(str, Enum):
    lv = "lv"
    scale = "scale"


def _range(text: str, option: str) -> tuple[float, float]:
    """'MIN,MAX' (or one number: a fixed value) -> (MIN, MAX)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        fail(f"{option} takes MIN,MAX or one number, got {text!r}")
    return values[0], values[-1]


@app.command("darken")
def darken(
    in_dir: Annotated[Path, typer.Argument(help="Folder of normal-light photos, or one photo (the folder of the sources, with --from-manifest).", show_default=False)],
    out_dir: Annotated[Path, typer.Argument(help="Gets low/, high/ (matching names), steps/ with --progressive, and manifest.jsonl.", show_default=False)],
    mode: Annotated[DarkenMode, typer.Option(help="lv: beta * (alpha * x) ** gamma (Lv et al.); scale: factor * x.")] = DarkenMode.lv,
    alpha: Annotated[Optional[str], typer.Option(metavar="MIN,MAX", help="Range of alpha, lv mode (default 0.9,1).")] = None,
    beta: Annotated[Optional[str], typer.Option(metavar="MIN,MAX", help="Range of beta, lv mode (default 0.5,1).")] = None,
    gamma: Annotated[Optional[str], typer.Option(metavar="MIN,MAX", help="Range of gamma, lv mode (default 1.5,5).")] = None,
    factor: Annotated[Optional[float], typer.Option(help="Brightness factor, scale mode (default 0.5).")] = None,
    progressive: Annotated[bool, typer.Option("--progressive", help="Also write the darkening as a T-step process: steps/DIR/NAME_t01.EXT ... NAME_tT.EXT; step T is the low image before noise.")] = False,
    steps: Annotated[Optional[int], typer.Option(help="T, the number of steps of --progressive (default 10).")] = None,
    noise: Annotated[bool, typer.Option("--noise", help="Add sensor noise: Poisson shot noise and Gaussian read noise in linear light.")] = False,
    gain: Annotated[Optional[str], typer.Option(metavar="MIN,MAX", help="--noise system gain, full scale per electron, log-uniform (default 0.00025,0.0025).")] = None,
    read_noise: Annotated[Optional[str], typer.Option(metavar="MIN,MAX", help="--noise read-noise std, in full scale, log-uniform (default 0.0005,0.005).")] = None,
    seed: Annotated[int, typer.Option(help="Base seed; an image's parameters depend only on it and the image's relative path.")] = 0,
    from_manifest: Annotated[Optional[Path], typer.Option("--from-manifest", metavar="MANIFEST", help="Rebuild the dataset a manifest.jsonl describes from the sources in IN_DIR; every parameter comes from the manifest.")] = None,
    recursive: RecursiveOpt = False,
    fmt: FormatOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Make paired low-light data from normal-light photos.

    Writes OUT_DIR/low and OUT_DIR/high with matching names.
    OUT_DIR/manifest.jsonl has one record per image: every parameter drawn, the seeds.
    --from-manifest rebuilds the same dataset from it.
    """
    ranges = {"--alpha": alpha, "--beta": beta, "--gamma": gamma}
    given = [name for name, value in ranges.items() if value is not None]
    if mode is DarkenMode.scale and given:
        fail(f"{', '.join(given)} apply to --mode lv; --mode scale takes --factor")
    if mode is DarkenMode.lv and factor is not None:
        fail("--factor applies to --mode scale; --mode lv takes --alpha, --beta, --gamma")
    if steps is not None and not progressive:
        fail("--steps needs --progressive")
    if not noise and (gain is not None or read_noise is not None):
        fail("--gain and --read-noise need --noise")
    if from_manifest is not None and (given or factor is not None or progressive or noise
                                      or mode is not DarkenMode.lv or fmt or recursive):
        fail("--from-manifest takes every setting from the manifest; drop the darkening, "
             "--format and --recursive options")

    with user_errors():
        from lldiff_cli import darken as core

        if from_manifest is None:
            lv = core.LvRanges(**{name[2:]: _range(value, name) for name, value in ranges.items() if value is not None})
            noise_ranges = None
            if noise:
                noise_ranges = core.NoiseRanges(**{
                    key: _range(value, name) for key, name, value in
                    (("gain", "--gain", gain), ("read_noise", "--read-noise", read_noise)) if value is not None})
            settings = core.DarkenSettings(
                mode=mode.value, lv=lv, factor=0.5 if factor is None else factor, progressive=progressive,
                steps=10 if steps is None else steps, noise=noise_ranges, seed=seed)
        try:
            with batch_progress("darkening", quiet) as bar:
                if from_manifest is not None:
                    report = core.rebuild_from_manifest(from_manifest, in_dir, out_dir, overwrite=overwrite,
                                                        on_start=bar.on_start, on_item=bar)
                else:
                    def on_start(total: int) -> None:
                        if not total:
                            _say_no_images(in_dir, recursive)
                        bar.on_start(total)

                    report = core.darken_folder(in_dir, out_dir, settings, recursive=recursive, fmt=fmt,
                                                overwrite=overwrite, on_start=on_start, on_item=bar)
        except KeyboardInterrupt:
            fail("interrupted; finished images and their manifest records are kept: "
                 "run the same command again to resume", code=130)
    if not quiet:
        console.print(f"outputs in {escape(str(out_dir))}: " + "".join(f"{folder}/, " for folder in report.folders)
                      + core.MANIFEST_NAME, highlight=False, soft_wrap=True)
    report_batch(report, "darken")


app.command("synthesize-dark", short_help="Alias of darken.")(darken)



# --- enhance ------------------------------------------------------------------


@app.command()
def enhance(
    in_dir: Annotated[Path, typer.Argument(help="Folder of dark images, or one image file.")],
    out_dir: Annotated[Path, typer.Argument(help="Where the enhanced images go (same relative names).")],
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="A shipped model's name (default; lol: tuned for the LOL benchmark), a model card (.yaml) or a checkpoint (.pt); default: the default model.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps (default: the model's).", min=1)] = None,
    eta: Annotated[Optional[float], typer.Option(help="DDIM eta: 0 deterministic, 1 DDPM-like (default: the model's).", min=0.0)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampling noise; the same seed gives the same output.")] = 0,
    ensemble: Annotated[Optional[int], typer.Option(help="Self-ensemble: average the outputs for 1, 2 or 4 mirrored copies of each image (cleaner; each copy costs a whole run). Default: the model's.")] = None,
    exposure: Annotated[str, typer.Option(help="Target mean brightness: a number in (0, 1), or 'auto': the model's target (0.44 for the shipped model), never darker than the input.")] = "auto",
    keep_highlights: Annotated[Optional[bool], typer.Option("--keep-highlights/--no-keep-highlights", help="After the model, put back what the photo already exposed well (a sky, lamps, lit windows: their contrast and colour), so lifted shadows never outshine them. Default: the model's (on for the default model, off for lol).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA, else MPS, else CPU), cpu, cuda or mps.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Tiles of a tiled image that go through the model together (faster on a GPU; more memory).", min=1)] = 1,
    tile: Annotated[Optional[int], typer.Option(help="Tile size in pixels. Default: the default model tiles images above 0.4 megapixels (600x400 is not tiled) in 640-pixel tiles, so time grows linearly and memory stays under 1 GB on a CPU whatever the photo's size (the bound is 4x smaller per wavelet level less).", min=16)] = None,
    # 64 = tiling.DEFAULT_OVERLAP, written out: importing tiling would load torch for --help (tested).
    overlap: Annotated[int, typer.Option(help="Overlap of neighbouring tiles in pixels; seams are blended over it.", min=0)] = 64,
    precision: Annotated[str, typer.Option(help="auto (bfloat16 on a CPU that has it in hardware, 1.5x faster, same scores; else float32), float32, bfloat16, or float16 (CUDA only; faster, less memory).")] = "auto",
    shard: Annotated[Optional[str], typer.Option("--shard", metavar="I/N", help="Enhance only part I (1 to N) of N: run N of these, on one machine or a job array's tasks, into the same OUT_DIR, and each image is enhanced by exactly one. An image's part depends only on its relative path.")] = None,
    recursive: RecursiveOpt = False,
    fmt: FormatOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Enhance every image in IN_DIR with a diffusion model; write them to OUT_DIR."""
    with user_errors():
        from lldiff_cli.batch import Shard, ranks_together
        from lldiff_cli.device import distributed_env, pick_device, process_device
        from lldiff_cli.enhance import EnhanceSettings, enhance_folder, in_precision, plan_folder
        from lldiff_cli.errors import LldiffError
        from lldiff_cli.checkpoints import load_model

        part = Shard.parse(shard) if shard is not None else None
        rank, world, _ = distributed_env()  # under torchrun: this process's rank of world
        target = None
        if exposure != "auto":
            try:
                target = float(exposure)
            except ValueError:
                raise LldiffError(f"--exposure must be 'auto' or a number in (0, 1), got {exposure!r}") from None
            if not 0 < target < 1:
                raise LldiffError(f"--exposure must be in (0, 1), got {target}")
        settings = EnhanceSettings(steps=steps, eta=eta, seed=seed, exposure=target, tile=tile, overlap=overlap,
                                   precision=precision, batch_size=batch_size, ensemble=ensemble,
                                   keep_highlights=keep_highlights)
        dev = process_device(pick_device(device))  # under torchrun, CUDA is cuda:LOCAL_RANK
        # Over all the inputs, not this shard's: two parts would otherwise write one file in turn.
        inputs = plan_folder(in_dir, out_dir, recursive=recursive, fmt=fmt)
        if not inputs.files:
            _say_no_images(inputs.folder, recursive)
        what = f"enhanced into {out_dir}"
        # torchrun's processes each take their own share of the shard (of all the images without one).
        share = part if world == 1 else (part or Shard(1, 1)).for_rank(rank, world)
        if share is not None:
            every, inputs = inputs.files, inputs.share(share)
            label = ", ".join([f"shard {part}"] * (part is not None) + [f"rank {rank}/{world}"] * (world > 1))
            what += f" ({label}: {len(inputs.files)} of {len(every)} images)"
        try:
            with ranks_together(world) as finish:
                net = load_model(model, map_location=dev).to(dev)
                settings = settings.resolve(net, dev)  # every choice and check, once, before any image
                net = in_precision(net, settings.precision)
                # One progress bar, rank 0's; each process names its failures and prints its summary.
                with batch_progress("enhance", quiet or rank != 0) as bar:
                    report = enhance_folder(net, inputs, out_dir, device=dev, settings=settings, fmt=fmt,
                                            overwrite=overwrite, on_start=bar.on_start, on_item=bar)
                try:
                    report_batch(report, what)  # exits 1 when an image failed
                finally:  # ... but only once every process has done its share (batch.ranks_together)
                    finish()
        except KeyboardInterrupt:
            fail("interrupted; finished images are kept: run the same command again to resume", code=130)


# --- eval ---------------------------------------------------------------------

_EVAL_COLUMNS = {  # metric -> (header, format); arrows say which way is better
    "psnr": ("PSNR↑", "{:.2f}"), "ssim": ("SSIM↑", "{:.4f}"),
    "psnr_gtmean": ("PSNR GT-mean↑", "{:.2f}"), "ssim_gtmean": ("SSIM GT-mean↑", "{:.4f}"),
    "lpips": ("LPIPS↓", "{:.4f}"), "loe": ("LOE↓", "{:.1f}"), "niqe": ("NIQE↓", "{:.3f}"),
}


@app.command("eval")
def eval_command(
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="LOL, LOLv2-real, LOLv2-syn or VE-LOL, found under --data-root.")] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", envvar="LLDIFF_DATA", help="Folder holding the datasets; default ./data.")] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="With --dataset: train or test (default test).")] = None,
    low: Annotated[Optional[Path], typer.Option("--low", help="Folder of low-light images (instead of --dataset); alone: no-reference metrics only.")] = None,
    high: Annotated[Optional[Path], typer.Option("--high", help="Folder of ground truth for --low, matched by name.")] = None,
    methods: Annotated[Optional[list[str]], typer.Option("--method", "-m", help="Repeatable: default or lol (the shipped models), a model card (.yaml) or checkpoint (.pt), identity, gamma:G, clahe, he, msrcr. Without it: default and identity.")] = None,
    metric_names: Annotated[Optional[list[str]], typer.Option("--metric", help="Repeatable: only these of psnr, ssim, psnr_gtmean, ssim_gtmean, lpips, loe, niqe; default all that apply.")] = None,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Write per-image scores to this CSV file.")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the protocol and the means to this JSON file.")] = None,
    save_dir: Annotated[Optional[Path], typer.Option("--save-dir", help="Save enhanced images as DIR/METHOD/NAME.png.")] = None,
    sheet: Annotated[Optional[Path], typer.Option("--sheet", help="Write a comparison sheet image (PNG, JPEG, ...): input | each method | ground truth.")] = None,
    sheet_images: Annotated[str, typer.Option("--sheet-images", help="Images on the sheet: a count N (evenly spaced) or comma-separated names.")] = "4",
    limit: Annotated[Optional[int], typer.Option("--limit", help="Score only the first N images.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="Model methods' number format, as lldiff enhance's: auto, float32, bfloat16 or float16 (CUDA).")] = "auto",
    lpips_weights: Annotated[Optional[Path], typer.Option("--lpips-weights", help="LPIPS AlexNet weights (.pth), or $LLDIFF_LPIPS_WEIGHTS; without them LPIPS is n/a.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Score methods on a benchmark: one documented protocol, every method in one table.

    Exits 1 when any image could not be scored (each is named); the others are scored.
    """
    from rich.table import Table

    from lldiff_cli import evaluate as ev, metrics as M
    from lldiff_cli.data import load_dataset
    from lldiff_cli.device import pick_device

    with user_errors():
        if split is not None and not dataset:
            fail("--split chooses a part of a --dataset; --low / --high folders have none")
        split = split or "test"
        data = load_dataset(dataset, root=data_root, split=split, low=low, high=high).limit(limit)
        dev = pick_device(device)
    for name, reason in data.problems:  # known before scoring: named now, once
        console.print(f"[red]failed[/] {escape(name)}: {escape(reason)}", highlight=False)
    outputs = ev.EvalOutputs(csv=csv_path, json=json_path, sheet=sheet, sheet_images=sheet_images, save_dir=save_dir)
    with user_errors(), batch_progress("eval", quiet) as bar:
        # Without --method: the shipped model beside the input itself, the floor of every table.
        bench = ev.benchmark(data, methods or ["default", "identity"], device=dev, precision=precision,
                             metrics=metric_names, lpips_weights=lpips_weights, split=split if dataset else None,
                             outputs=outputs, on_start=bar.on_start, on_item=bar)
    result, metric_list = bench.result, bench.result.metrics

    table = Table()
    table.add_column("method")
    table.add_column("n", justify="right")
    for m in metric_list:
        table.add_column(_EVAL_COLUMNS[m][0], justify="right")
    table.add_column("s/img", justify="right")
    table.add_column("peak MB", justify="right")
    for s in result.summaries:
        values = ["n/a" if s.means[m] is None else _EVAL_COLUMNS[m][1].format(s.means[m]) for m in metric_list]
        table.add_row(s.method, str(s.n), *values, f"{s.seconds_per_image:.3f}", f"{s.peak_memory_mb:.0f}")
    # Piped or redirected output gets the table's full width: a benchmark row is never cut.
    from rich.measure import Measurement

    need = Measurement.get(out, out.options.update_width(1000), table).maximum
    wide = Console(file=out.file, width=out.width if out.is_terminal else max(out.width, need))
    # The set's name (a path) is one line above the table: as its title it was wrapped to the table's width.
    wide.print(f"[bold]{escape(data.description)}: {len(data.pairs)} images[/]", highlight=False, soft_wrap=True)
    wide.print(table)
    notes = [f"PSNR/SSIM on 8-bit RGB, a per-image PSNR capped at {M.PSNR_CAP:g} dB, SSIM with an 11x11 "
             "Gaussian window (sigma 1.5); GT-mean columns rescale each output to the ground truth's mean grey first"
             ] if data.paired else []
    if "lpips" in metric_list and not bench.lpips_weights:
        notes.append(f"LPIPS n/a: no weights (give --lpips-weights or ${M.LPIPS_ENV}; see the README)")
    if "niqe" in metric_list and any(s.means.get("niqe") is None for s in result.summaries):
        notes.append(f"NIQE n/a for images under {2 * M.NIQE_BLOCK} px on a side")
    for note in notes:
        console.print(note, style="dim", highlight=False)
    for what, path in bench.written:
        console.print(f"{what}: {path}", highlight=False)
    if bench.off_sheet:
        console.print(f"left off the sheet (not scored by every method): {', '.join(bench.off_sheet)}",
                      highlight=False)
    if save_dir is not None:
        console.print(f"enhanced images: {save_dir}", highlight=False)
    if result.failures:  # each was named once, before or as it failed
        console.print(f"[red]{len(result.failures)} image(s) not scored[/] (named above)", highlight=False)
        raise typer.Exit(1)


# --- train --------------------------------------------------------------------


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Training config YAML (see lldiff_cli/configs/); unknown keys are errors.")] = None,
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value overrides, type-checked, e.g. optim.lr=1e-4 data.crop=192 data.photos=DIR.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue exactly from OUT_DIR/last.pt (model, EMA, optimiser, step).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Train a model on image pairs and/or normal-light photos darkened on the fly.

    out_dir gets config.yaml, split.json, log.jsonl, last.pt, best.pt (best validation PSNR)
    and curve.png. Ctrl-C stops after the current step and saves last.pt; --resume continues.
    One run at a time in an out_dir; a new run needs one without another run's files.
    Several GPUs: torchrun --nproc_per_node N -m lldiff_cli train -c CONFIG.yaml
    """
    from contextlib import nullcontext

    with user_errors():
        from lldiff_cli.config import load_config
        from lldiff_cli.device import distributed_env, pick_device
        from lldiff_cli.interrupt import StopOnInterrupt
        from lldiff_cli.run_dir import check_out_dir, hold_out_dir, start_run
        from lldiff_cli.train import train as run_training
        from lldiff_cli.train_config import TrainConfig, check_config
        from lldiff_cli.train_data import load_training_data

        cfg = load_config(TrainConfig, config, overrides or [])
        check_config(cfg, resume)
        check_out_dir(cfg, resume)
        dev = pick_device(device)
        is_main = distributed_env()[0] == 0  # under torchrun only rank 0 writes and reports
        quiet = quiet or not is_main
    # Rank 0 holds out_dir from here to the end: no other run writes there, and if this one fails
    # before its first step, what it wrote there goes (run_dir.hold_out_dir).
    with user_errors(), hold_out_dir(cfg, resume) if is_main else nullcontext():
        data = load_training_data(cfg)
        if is_main:
            start_run(cfg, data)
        out_dir = Path(cfg.out_dir)
        if is_main:
            if data.skipped:
                name, reason = data.skipped[0]
                console.print(f"[yellow]{len(data.skipped)} file(s) left out[/], e.g. {escape(name)}: {escape(reason)}",
                              highlight=False, soft_wrap=True)
        if not quiet:
            sources = [f"{len(data.pairs)} pairs"] * bool(data.pairs) + [f"{len(data.photos)} photos"] * bool(data.photos)
            console.print(f"training on {' + '.join(sources)}, validating on {len(data.val_pairs)}; device {dev}; "
                          f"out {escape(str(out_dir))}", highlight=False, soft_wrap=True)

        from rich.progress import TextColumn

        progress = _progress(quiet, TextColumn("{task.fields[loss]}"))
        task = progress.add_task("train", total=cfg.optim.max_steps, rate="", loss="")
        started = []

        def on_step(step: int) -> None:
            if not started:  # a resumed run starts mid-way: measure the speed from here
                started.append(step)
                progress.reset(task, total=cfg.optim.max_steps, completed=step - 1, rate="", loss="")
            progress.update(task, completed=step)
            speed = progress.tasks[0].speed
            if speed:
                progress.update(task, rate=f"{speed:.2f} it/s" if speed >= 1 else f"{1 / speed:.1f} s/it")

        def on_log(record: dict) -> None:  # run_training has written it to log.jsonl
            if "init" in record:
                fresh = record["fresh"]
                line = (f"initialised from {record['init']}: {record['copied']} tensors copied, {len(fresh)} new"
                        + (f" ({', '.join(sorted({'.'.join(k.split('.')[:3]) for k in fresh}))})" if fresh else ""))
            elif "val_psnr" in record:
                line = (f"step {record['step']}: validation PSNR {record['val_psnr']:.2f} dB (best {record['best_psnr']:.2f})"
                        + (f"; pairs {record['val_psnr_pairs']:.2f}, darkened photos {record['val_psnr_photos']:.2f}"
                           if "val_psnr_photos" in record else ""))
            else:
                progress.update(task, loss=f"loss {record['loss']:.4g}")
                line = f"step {record['step']}: " + " ".join(
                    f"{k} {v:.4g}" for k, v in record.items() if k not in ("step", "it_s") and isinstance(v, float))
            if not quiet:
                progress.console.print(line, highlight=False, soft_wrap=True)

        def on_interrupt() -> None:
            if not quiet:
                progress.console.print("stopping after this step (Ctrl-C again to quit without saving)", highlight=False)

        try:
            with user_errors(), progress, StopOnInterrupt(on_interrupt) as stop:
                result = run_training(cfg, data, device=dev, resume=resume, on_log=on_log, on_step=on_step, stop=stop)
        except KeyboardInterrupt:
            fail("interrupted; the last saved checkpoint is kept: continue with --resume", code=130)
        if is_main:
            best = (f"best validation PSNR {result['best_psnr']:.2f} dB" if result["best_psnr"] >= 0
                    else "not validated yet" if data.val_pairs else "no validation (no held-out images)")
            console.print(f"{'interrupted' if stop.requested else 'stopped'} at step {result['step']}; {best}; "
                          f"checkpoints, curve.png and log.jsonl in {escape(str(out_dir))}", highlight=False, soft_wrap=True)
        if stop.requested:
            if is_main:
                console.print("continue with the same command and --resume", highlight=False)
            raise typer.Exit(130)


# --- app ----------------------------------------------------------------------


@app.command("app")
def app_command(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="The model the page starts with and /enhance uses: a shipped model's name, a card (.yaml) or a checkpoint (.pt); the page offers every shipped one. Default: the default model.")] = None,
    host: Annotated[str, typer.Option(help="Address to serve on; 127.0.0.1 keeps the page to this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.", min=1, max=65535)] = 7860,
    device: Annotated[str, typer.Option(help="auto (CUDA, else MPS, else CPU), cpu, cuda or mps.")] = "auto",
    # 50 = app.MAX_MEGAPIXELS, written out: importing the app module would load torch for --help.
    max_megapixels: Annotated[float, typer.Option("--max-megapixels", help="Larger photos get a message instead of hours of work (lldiff enhance takes any size).", min=0.01)] = 50.0,
) -> None:
    """Serve a local web page to try a model on your own photos, and its /enhance API.

    Needs the app extra: pip install "lldiff\\[app]". Ctrl-C stops it.
    """
    import tempfile

    with user_errors(), tempfile.TemporaryDirectory(prefix="lldiff-app-") as work_dir:
        from lldiff_cli.app import Models, build_app, launch, require_gradio
        from lldiff_cli.device import pick_device, pick_precision

        require_gradio()  # before the model loads: a missing extra is the first thing said
        dev = pick_device(device)
        models = Models(model, dev, pick_precision("auto", dev))
        page = build_app(models, Path(work_dir), max_pixels=int(max_megapixels * 1e6))  # loads the model
        url = launch(page, host=host, port=port)
        console.print(f"lldiff app on [bold]{escape(url)}[/] (model {escape(models.default)}, device {dev}); "
                      f"scripts: gradio_client's Client({url!r}).predict(handle_file(PHOTO), 0, "
                      "api_name='/enhance'). Ctrl-C stops it", highlight=False, soft_wrap=True)
        page.block_thread()  # until Ctrl-C


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
