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

app = typer.Typer(
    name="lldiff",
    help="Make dark photos look right with diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

# Options shared by every command that streams a folder of images.
RecursiveOpt = Annotated[bool, typer.Option("--recursive", "-r", help="Also process images in sub-folders; outputs mirror the layout.")]
FormatOpt = Annotated[Optional[str], typer.Option("--format", help="Output format (png, jpg, bmp, tif, webp); default: keep each input's format.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Redo images whose outputs exist (default: skip them, so a re-run resumes).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; only errors and the summary.")]


def fail(message: str, code: int = 2) -> None:
    """Print one clear error line and exit."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def user_errors():
    """Turn LldiffError into one error line; let bugs show their traceback."""
    from lldiff_cli.errors import LldiffError

    try:
        yield
    except LldiffError as exc:
        fail(str(exc))


@contextmanager
def batch_progress(total: int, description: str, quiet: bool):
    """A Rich progress bar (count, rate, ETA); yields the ``on_item`` callback for run_batch.

    Failures are printed as they happen, with the file and the reason.
    """
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(), console=console, disable=quiet, transient=False,
    )
    task = progress.add_task(description, total=total, rate="")

    def on_item(rel: Path, status: str) -> None:
        if status.startswith("failed"):
            progress.console.print(f"[red]failed[/] {rel}: {status.split(': ', 1)[1]}", highlight=False)
        progress.advance(task)
        elapsed = progress.tasks[0].elapsed or 0.0
        done = progress.tasks[0].completed
        progress.update(task, rate=f"{done / elapsed:.2f} img/s" if elapsed > 0 else "")

    with progress:
        yield on_item


def report_batch(report, what: str) -> None:
    """Print the done / skipped / failed summary; exit 1 if anything failed."""
    line = (f"{what}: [green]{len(report.done)} done[/], {len(report.skipped)} skipped, "
            f"[{'red' if report.failed else 'green'}]{len(report.failed)} failed[/]")
    if report.done:
        line += f" ({report.seconds_per_image:.2f} s per image)"
    console.print(line, highlight=False)
    for rel, reason in report.failed:
        console.print(f"  [red]failed[/] {rel}: {reason}", highlight=False)
    if report.failed:
        raise typer.Exit(1)


# --- darken -------------------------------------------------------------------


# --- enhance ------------------------------------------------------------------


# --- eval ---------------------------------------------------------------------


# --- train --------------------------------------------------------------------


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
