"""The pairs a benchmark scores: a dataset layout, narrowed to a training run's split if asked.

Shared by the benchmarks that take ``--dataset/--root/--split`` and ``--run RUN [--held-out]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lldiff_cli.data import Pair, load_dataset, run_split


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="LOL")
    parser.add_argument("--root", default="data")
    parser.add_argument("--split", default="train")
    parser.add_argument("--run", default=None, help="a training run folder: use its split.json")
    parser.add_argument("--held-out", action="store_true", help="with --run: its held-out pairs (else its training pairs)")


def selected(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Pair]:
    """The pairs the options of :func:`add_options` name (LldiffError for a missing dataset or split.json)."""
    if args.held_out and not args.run:
        parser.error("--held-out needs --run")
    pairs = load_dataset(args.dataset, root=Path(args.root), split=args.split).pairs
    return run_split(pairs, Path(args.run), args.held_out) if args.run else pairs
