"""Command-line front end: `plantlib fetch-data | scan | train | evaluate | predict | report`.

User mistakes (a `PlantlibError`) print one line on stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from plantlib.errors import PlantlibError

Command = Callable[[argparse.Namespace], int]


def _cmd_fetch_data(args: argparse.Namespace) -> int:
    from plantlib.data.fetch import fetch_dataset

    report = fetch_dataset(dest=args.dest, source=args.source, workers=args.workers)
    print(report.summary())
    return 0


def _cmd_scan(args: argparse.Namespace) -> int:
    from plantlib.config import RunConfig
    from plantlib.data import prepare_data, split_counts

    config = RunConfig(
        data_dir=args.data_dir,
        seed=args.seed,
        new_split=args.new_split,
        near_duplicate_distance=args.near_duplicate_distance,
    )
    prepared = prepare_data(config)
    report = prepared.report()
    print(f"data dir     {prepared.data_dir}")
    print(f"classes      {report['class_counts']}")
    print(f"usable       {report['usable_images']} of {report['files_seen']} files")
    for row in report["skipped"]:
        print(f"skipped      {row['path']}: {row['reason']}")
    print(f"duplicates   {report['duplicates_summary']}")
    print(f"split file   {prepared.split_file} ({'new' if prepared.split_was_new else 'reused'})")
    print(split_counts(prepared.split).to_string())
    print(f"data report  {prepared.report_file}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plantlib", description="Train, evaluate and compare transfer-learning image classifiers."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    fetch = commands.add_parser(
        "fetch-data", help="download the built-in dataset (or copy it from a mirror) and verify every file"
    )
    fetch.add_argument("--source", help="mirror folder or base URL; default: $PLANTLIB_DATA_SOURCE, else GitHub")
    fetch.add_argument("--dest", type=Path, help="target folder (default: data/dandelion-vs-grass)")
    fetch.add_argument("--workers", type=int, default=8, help="parallel downloads (default: 8)")
    fetch.set_defaults(run=_cmd_fetch_data)

    scan = commands.add_parser("scan", help="validate a dataset, find duplicates and write/reuse its split")
    scan.add_argument("--data-dir", help="folder with one sub-folder per class (default: built-in dataset)")
    scan.add_argument("--seed", type=int, default=42, help="seed of the split (default: 42)")
    scan.add_argument("--new-split", action="store_true", help="make a new split even if one exists")
    scan.add_argument(
        "--near-duplicate-distance",
        type=int,
        default=6,
        help="max perceptual-hash distance for near-duplicates (default: 6)",
    )
    scan.set_defaults(run=_cmd_scan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except PlantlibError as error:
        print(f"plantlib {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"plantlib {args.command}: interrupted", file=sys.stderr)
        return 130
