"""Command-line front end: `plantlib fetch-data | scan | train | evaluate | predict | report`.

User mistakes (a `PlantlibError`) print one line on stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from plantlib.config import DATA_FIELDS, ENGINES
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

    base = RunConfig.from_json(args.config) if args.config else RunConfig()
    config = base.replace(**{name: getattr(args, name) for name in DATA_FIELDS if hasattr(args, name)})
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


def _cmd_train(args: argparse.Namespace) -> int:
    from plantlib.config import RunConfig, field_names
    from plantlib.distributed import launched_by_torchrun, shutdown
    from plantlib.evaluate import format_metrics
    from plantlib.train import Trainer

    overrides = {name: getattr(args, name) for name in field_names() if hasattr(args, name)}
    if args.resume and overrides:
        raise PlantlibError(f"--resume continues a run with its saved config; drop {sorted(overrides)}")
    config = None
    if not args.resume:
        config = (RunConfig.from_json(args.config) if args.config else RunConfig()).replace(**overrides)
    if args.nproc > 1 and not launched_by_torchrun():
        from plantlib.launch import run_torchrun, start_run

        run_torchrun(args.resume or start_run(config), args.nproc)
        return 0
    trainer = Trainer.resume(args.resume) if args.resume else Trainer(config)
    try:
        result = trainer.fit()
    finally:
        shutdown()
    if trainer.is_main_process:
        print(f"\nrun directory: {result.run_dir}  (best epoch {result.best_epoch}, {result.seconds:.0f}s training)")
        if result.test_metrics:
            print("test split: " + format_metrics(result.test_metrics))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from plantlib.evaluate import format_metrics
    from plantlib.inference import evaluate_folder, evaluate_split, load_model

    loaded = load_model(args.checkpoint, device=args.device, engine=args.engine)
    if args.data_dir:
        metrics, _ = evaluate_folder(loaded, Path(args.data_dir), Path(args.out_dir) if args.out_dir else None)
        where = args.data_dir
    else:
        metrics, _ = evaluate_split(loaded, args.split)
        where = f"{args.split} split"
    print(f"{loaded.checkpoint_path} on {where}:\n{format_metrics(metrics)}")
    for kind, path in metrics.get("files", {}).items():
        print(f"{kind}: {path}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from plantlib.inference import load_model, predict_files
    from plantlib.io import atomic_write

    loaded = load_model(args.checkpoint, device=args.device, engine=args.engine)
    frame = predict_files(loaded, [Path(p) for p in args.paths], batch_size=args.batch_size)
    frame = frame.drop(columns=["confidence"])
    if args.out:
        atomic_write(Path(args.out), lambda handle: frame.to_csv(handle, index=False))
        print(f"wrote {len(frame)} predictions to {args.out}")
    else:
        print(frame.to_csv(index=False), end="")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import yaml

    from plantlib.paths import reports_dir
    from plantlib.reports import check_all_ok, run_reports

    parameters: dict[str, Any] = {}
    if args.params:
        try:
            parameters = yaml.safe_load(Path(args.params).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise PlantlibError(f"cannot read parameters file {args.params}: {error}") from error
        if not isinstance(parameters, dict):
            raise PlantlibError(f"parameters file {args.params} must hold a mapping of name: value")
    for item in args.parameter or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise PlantlibError(f"-p {item!r}: write NAME=VALUE, e.g. -p epochs=3")
        parameters[name.strip()] = yaml.safe_load(value)
    out_dir = args.out_dir or reports_dir()
    runs = run_reports(parameters, fast=args.fast, out_dir=out_dir, only=args.only)
    print(f"reports: {out_dir / 'index.html'}")
    check_all_ok(runs)
    return 0


def _add_config_options(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """One --flag per RunConfig field (or per field in `names`); only flags actually given override the config."""
    from plantlib.config import RunConfig

    hints = typing.get_type_hints(RunConfig)
    for item in dataclasses.fields(RunConfig):
        if item.name == "extra" or (names is not None and item.name not in names):
            continue
        flag = "--" + item.name.replace("_", "-")
        help_text = f"{item.metadata.get('help', '')} (default: {item.default})"
        kinds = [t for t in typing.get_args(hints[item.name]) if t is not type(None)] or [hints[item.name]]
        if kinds[0] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(
                flag, type=_parser_for(kinds[0]), default=argparse.SUPPRESS, help=help_text, metavar=item.name.upper()
            )


def _parser_for(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text.lower() == "none":
            return None
        return kind(text)

    parse.__name__ = kind.__name__
    return parse


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    """Where and how a checkpoint runs: shared by `evaluate` and `predict`."""
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument(
        "--engine",
        default="auto",
        choices=ENGINES,
        help="runtime for the forward pass: auto uses OpenVINO on the CPU when installed (same fp32 logits, faster)",
    )


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
    scan.add_argument("--config", type=Path, help="config.json whose data options to start from")
    _add_config_options(scan, DATA_FIELDS)
    scan.set_defaults(run=_cmd_scan)

    train = commands.add_parser("train", help="train one run; writes artifacts/runs/<time>-<backbone>/")
    train.add_argument("--config", type=Path, help="config.json to start from (flags override its values)")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run from its last.pt")
    train.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes on this node: runs torchrun (DistributedDataParallel; gloo on CPU, NCCL on GPUs)",
    )
    _add_config_options(train)
    train.set_defaults(run=_cmd_train)

    evaluate = commands.add_parser("evaluate", help="metrics of a checkpoint on a split or a labelled folder")
    evaluate.add_argument("checkpoint", help="best.pt / last.pt, or a run directory")
    where = evaluate.add_mutually_exclusive_group()
    where.add_argument("--split", default="test", choices=["train", "val", "test"], help="split of the run's data")
    where.add_argument("--data-dir", help="folder-per-class directory to evaluate on instead (an external set)")
    evaluate.add_argument("--out-dir", help="where metrics and predictions go (default: inside the run dir)")
    _add_inference_options(evaluate)
    evaluate.set_defaults(run=_cmd_evaluate)

    predict = commands.add_parser("predict", help="class probabilities for image files or folders")
    predict.add_argument("checkpoint", help="best.pt / last.pt, or a run directory")
    predict.add_argument("paths", nargs="+", help="image files or folders of images")
    predict.add_argument("--out", help="CSV to write (path, predicted, p_<class>...); default: print")
    predict.add_argument("--batch-size", type=int, default=32)
    _add_inference_options(predict)
    predict.set_defaults(run=_cmd_predict)

    report = commands.add_parser("report", help="run notebooks 01-04 with papermill and export HTML reports")
    report.add_argument("--fast", action="store_true", help="quick smoke run (each notebook's fast=True)")
    report.add_argument("--params", help="YAML file of parameters: name: value, or a section per notebook")
    report.add_argument(
        "-p",
        "--parameter",
        action="append",
        metavar="NAME=VALUE",
        help="a parameter for every notebook that declares it (repeatable)",
    )
    report.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="run only these notebooks, e.g. 01_explore")
    report.add_argument("--out-dir", type=Path, help="where reports go (default: artifacts/reports)")
    report.set_defaults(run=_cmd_report)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> str:
    return f"warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _show_warning  # one readable line instead of a source location
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")  # a file name that is not UTF-8 prints as its bytes
    try:
        return args.run(args)
    except PlantlibError as error:
        print(f"plantlib {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"plantlib {args.command}: interrupted", file=sys.stderr)
        return 130
