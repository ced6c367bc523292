"""Command-line front end: `plantlib train | evaluate | predict | report | runs | ui | track | export | ...`.

User mistakes (a `PlantlibError`) print one line on stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plantlib.children import Stopped
from plantlib.config import DATA_FIELDS, ENGINES, RunConfig, field_names, parse_config_text, read_config_file
from plantlib.errors import ConfigError, PlantlibError
from plantlib.paths import use_project_tool_caches

if TYPE_CHECKING:
    from plantlib.training.trainer import Callback, Trainer, TrainingResult

Command = Callable[[argparse.Namespace], int]


def _cmd_fetch_data(args: argparse.Namespace) -> int:
    from plantlib.data.fetch import fetch_dataset

    report = fetch_dataset(dest=args.dest, source=args.source, workers=args.workers)
    print(report.summary())
    return 0


def _cmd_scan(args: argparse.Namespace) -> int:
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
    overrides = report["label_overrides"]
    print(f"overrides    {overrides['applied']} applied from {overrides['file']}" if overrides else "overrides    none")
    print(f"split file   {prepared.split_file} ({'new' if prepared.split_was_new else 'reused'})")
    print(split_counts(prepared.split).to_string())
    print(f"data report  {prepared.report_file}")
    return 0


def _config_from_args(args: argparse.Namespace) -> RunConfig:
    """--config (or the defaults) with every config flag given on the command line applied."""
    overrides = {name: getattr(args, name) for name in field_names() if hasattr(args, name)}
    return (RunConfig.from_json(args.config) if args.config else RunConfig()).replace(**overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    from plantlib.experiments import tracking_callbacks
    from plantlib.training.launch import train_here_or_launched
    from plantlib.training.trainer import resumable_config

    overrides = {name: getattr(args, name) for name in field_names() if hasattr(args, name)}
    if args.resume and overrides:
        raise PlantlibError(f"--resume continues a run with its saved config; drop {sorted(overrides)}")
    config = resumable_config(args.resume) if args.resume else _config_from_args(args)
    if args.register:  # a name that cannot be registered fails before the training, not after it
        from plantlib.experiments.store import registered_model_name

        args.register = registered_model_name(args.register)
    aliases = _checked_aliases(args.alias, args.register)
    callbacks = [*tracking_callbacks(config), _train_summary(args.register, aliases)]
    register_args = ["--register", args.register] if args.register else []  # for a torchrun job's own rank 0
    register_args += [flag for alias in aliases for flag in ("--alias", alias)]
    train_here_or_launched(config, args.nproc, callbacks, resume=args.resume, train_args=register_args)
    return 0


def _checked_aliases(aliases: list[str] | None, register: str | None) -> list[str]:
    """--alias values, checked before any training; they need --register."""
    if aliases and not register:
        raise PlantlibError("--alias names a version of a registered model: add --register NAME")
    from plantlib.experiments.store import alias_names

    return alias_names(aliases or [])


def _train_summary(register: str | None, aliases: Sequence[str] = ()) -> Callback:
    """A callback: rank 0 prints where the finished run is, its test metrics and where it is tracked, then
    registers it as a version of model `register` (when given)."""
    from plantlib.evaluation.metrics import format_metrics
    from plantlib.training.trainer import Callback

    class TrainSummary(Callback):
        def on_fit_end(self, trainer: Trainer, result: TrainingResult) -> None:
            if not trainer.is_main_process:
                return
            print(
                f"\nrun directory: {result.run_dir}  (best epoch {result.best_epoch}, {result.seconds:.0f}s training)"
            )
            if result.test_metrics:
                print("test split: " + format_metrics(result.test_metrics))
            tracking = trainer.annotations.get("tracking")
            if tracking:
                print(f"MLflow run {tracking.get('run_id')} ({tracking.get('status')}) in {tracking.get('uri')}")
            if register:
                _register(result.run_dir, register, aliases)

    return TrainSummary()


def _register(run: Path, name: str, aliases: Sequence[str] = (), tracking_uri: str | None = None) -> None:
    from plantlib.experiments.store import register_run

    version = register_run(run, name, tracking_uri, aliases)
    named = f" ({', '.join(alias.strip() for alias in aliases)})" if aliases else ""
    print(f"registered {run} as {name.strip()} version {version}{named}")


def _cmd_register(args: argparse.Namespace) -> int:
    _register(args.run_dir, args.name, args.alias or [], args.tracking_uri)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    import pandas as pd

    from plantlib.experiments.registry import PROXIED_SCHEME, registered_models_table

    table = registered_models_table(args.tracking_uri, args.artifacts_destination)
    if table.empty:
        print("no registered models yet: plantlib register RUN --name NAME (or train --register NAME)")
        return 0
    with pd.option_context("display.width", 250, "display.max_columns", 10, "display.max_colwidth", 200):
        print(table.to_string(index=False))
    if table["storage"].str.startswith(PROXIED_SCHEME).any():
        print(
            f"\n{PROXIED_SCHEME}/ files are kept by the tracking server in its --artifacts-destination; pass the "
            "same --artifacts-destination to show where they lie"
        )
    return 0


def _local_model(source: str | Path, tracking_uri: str | None) -> Path:
    """A checkpoint or run directory as it is; a models:/ URI resolved in the registry and downloaded."""
    from plantlib.experiments.registry import resolve_model_source

    return resolve_model_source(source, tracking_uri).path


def _cmd_track(args: argparse.Namespace) -> int:
    from plantlib.experiments.store import sync_run_dir

    for run in args.run_dirs:
        run_id = sync_run_dir(run, args.tracking_uri)
        print(f"{run}: MLflow run {run_id} is up to date")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    import pandas as pd

    from plantlib.experiments.store import runs_table

    table = runs_table(args.tracking_uri, args.experiment, args.backbone)
    if table.empty:
        print("no tracked runs yet: train one with plantlib train")
        return 0
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 40):
        print(table.drop(columns=["run_id"]).round(4).to_string(index=False))
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from plantlib.experiments.store import serve_ui

    return serve_ui(args.port, args.tracking_uri)


def _cmd_serve(args: argparse.Namespace) -> int:
    from plantlib.experiments.store import check_port_free
    from plantlib.serving.app import ServeSettings
    from plantlib.serving.server import serve

    source, name, version = str(args.model), None, None
    if source.startswith("models:/"):
        from plantlib.experiments.registry import resolve_model_source

        resolved = resolve_model_source(source, args.tracking_uri)
        source, name, version = str(resolved.path), resolved.name, resolved.version
    check_port_free(args.host, args.port)
    settings = ServeSettings(source=source, engine=args.engine, name=name, version=version)
    return serve(settings, host=args.host, port=args.port, workers=args.workers)


def _cmd_export(args: argparse.Namespace) -> int:
    from plantlib.experiments.registry import resolve_model_source
    from plantlib.inference.export import export_run

    model = resolve_model_source(args.run_dir, args.tracking_uri)  # a registry version logs to its own run
    files = export_run(model.path, args.format, Path(args.out) if args.out else None)
    for file in files:
        print(f"wrote {file}")
    if not args.no_tracking:
        from plantlib.experiments.store import log_files
        from plantlib.experiments.tracking import mlflow_available

        if mlflow_available():
            run_id = log_files(model.run_dir, files, "export", model.tracking_uri or args.tracking_uri)
            print(f"logged to MLflow run {run_id}")
    return 0


def _seed_list(text: str) -> list[int]:
    from plantlib.experiments.cv import parse_seeds

    try:
        seeds = parse_seeds(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed, e.g. --seeds 1,2,3")
    return seeds


def _cmd_cv(args: argparse.Namespace) -> int:
    from plantlib.evaluation.metrics import format_metrics
    from plantlib.experiments.cv import cross_validate

    if args.resume:
        result = cross_validate(RunConfig(), cv_dir=args.resume)
    else:
        config = _config_from_args(args)
        result = cross_validate(
            config,
            folds=args.folds,
            repeats=args.repeats,
            include_test=args.include_test,
            seeds=args.seeds,
            rerun=args.rerun,
        )
    folds = result.folds
    print(f"\ncross-validation: {result.cv_dir}")
    print("pooled out-of-fold: " + format_metrics(result.metrics).splitlines()[0])
    print(
        f"per fold: accuracy {folds['accuracy'].mean():.3f} ± {folds['accuracy'].std(ddof=1):.3f}, "
        f"F1 {folds['f1'].mean():.3f} ± {folds['f1'].std(ddof=1):.3f} (mean ± sd of {len(folds)} folds)"
    )
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    import pandas as pd

    from plantlib.experiments.audit import audit_cv, how_to_act, issues_table, summary_line

    if args.top < 1:
        raise ConfigError(f"--top {args.top} is not allowed; use 1 or more")
    audit = audit_cv(args.cv_dir, embeddings=not args.no_embeddings, rerun=args.rerun)
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(issues_table(audit, args.top).round(4).to_string(index=False))
    print(f"\n{summary_line(audit)}")
    if audit.info.get("embeddings"):
        outliers = ", ".join(audit.outliers(3)["path"])
        print(
            f"near-duplicate pairs in the embedding space: {audit.info['near_duplicate_pairs']} "
            f"({audit.info['near_duplicate_pairs_not_hash_grouped']} not grouped by pixel hashes); "
            f"most atypical: {outliers}"
        )
    print("files: " + ", ".join(str(path) for path in audit.files()))
    print(how_to_act(audit))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from plantlib.experiments.compare import RULE, compare_paths

    comparison = compare_paths([Path(path) for path in args.paths])
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 60):
        print(comparison.summary.round(4).to_string(index=False))
        print()
        print(comparison.pairs.round(4).to_string(index=False))
    print(f"\n{comparison.sentence}")
    print(f"best: {comparison.winner}" if comparison.winner else "best: none (no configuration beats all others)")
    print(f"rule: {RULE}")
    return 0


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _cmd_compare_backbones(args: argparse.Namespace) -> int:
    import pandas as pd

    from plantlib.experiments.backbones import compare_backbones
    from plantlib.experiments.compare import RULE, cv_table
    from plantlib.models.backbones import offline_backbones

    names = args.backbones or offline_backbones()
    config = _config_from_args(args)
    run = compare_backbones(
        config, names, folds=args.folds, seeds=args.seeds, rerun=args.rerun, linear_probe=args.linear_probe
    )
    table = cv_table([result.cv_dir for result in run.results.values()], measure_speed=False)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 60):
        print(table.drop(columns=["ms/image"]).to_string(index=False))
        if run.comparison is not None:
            print()
            print(run.comparison.pairs.round(4).to_string(index=False))
    if run.comparison is not None:
        print(f"\n{run.comparison.sentence}\nrule: {RULE}")
    if run.finetuning is not None:
        with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 60):
            print("\n" + run.finetuning.pairs.drop(columns=["n", "units"]).round(4).to_string(index=False))
        print(f"what fine-tuning adds over a linear probe: {run.finetuning.sentence}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from plantlib.experiments.confirm import confirm_best
    from plantlib.experiments.tune import load_space, tune

    base = _config_from_args(args)
    result = tune(
        base,
        load_space(args.space),
        trials=args.trials,
        timeout_s=args.timeout,
        storage=args.storage,
        study_name=args.study,
        cv_folds=args.cv,
        metric=args.metric,
    )
    print(f"study {result.study_name}: {result.trials} trials, {result.finished} finished; {result.statement}")
    print(f"best parameters: {result.best_params}")
    print(f"best config: {result.best_config_file}  (plantlib train --config {result.best_config_file})")
    if not args.confirm:
        print("to measure it on folds and seeds the study never used: rerun with --trials 0 --confirm")
        return 0
    import pandas as pd

    print(f"\nconfirming: the best and the base config, {args.confirm_folds}-fold CV on fresh folds and seeds")
    confirmation = confirm_best(
        result.best_config_file, base, folds=args.confirm_folds, seeds=args.confirm_seeds, show_progress=False
    )
    print(f"fold seed {confirmation.split_seed}, training seeds {confirmation.seeds}")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 60):
        print(confirmation.comparison.summary.round(4).to_string(index=False))
    print(confirmation.sentence)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from plantlib.evaluation.metrics import format_metrics
    from plantlib.inference.ensemble import load_predictor
    from plantlib.inference.predictor import evaluate_folder, evaluate_split

    if args.out_of_fold:
        return _evaluate_out_of_fold(args)
    from plantlib.experiments.registry import require_run_data, resolve_model_source

    models = [resolve_model_source(source, args.tracking_uri) for source in args.checkpoints]
    for model in models if not args.data_dir else []:
        require_run_data(model)  # a downloaded registry version: is its run's split here?
    predictor = load_predictor(
        [model.path for model in models],
        device=args.device,
        engine=args.engine,
        tta=args.tta,
        calibrated=not args.no_calibration,
    )
    if args.data_dir:
        metrics, _ = evaluate_folder(predictor, Path(args.data_dir), Path(args.out_dir) if args.out_dir else None)
        where = args.data_dir
    else:
        metrics, _ = evaluate_split(predictor, args.split)
        where = f"{args.split} split"
    print(f"{predictor.description} on {where}:\n{format_metrics(metrics)}")
    if metrics.get("calibration"):
        from plantlib.evaluation.calibration import calibration_lines

        print("\n".join(calibration_lines(metrics)))
    for kind, path in metrics.get("files", {}).items():
        print(f"{kind}: {path}")
    return 0


def _evaluate_out_of_fold(args: argparse.Namespace) -> int:
    from plantlib.evaluation.metrics import format_metrics
    from plantlib.experiments.cv import reevaluate_out_of_fold

    if len(args.checkpoints) != 1 or args.data_dir:
        raise PlantlibError("--out-of-fold takes one cross-validation directory (and no --data-dir)")
    result = reevaluate_out_of_fold(Path(args.checkpoints[0]), tta=args.tta, device=args.device, engine=args.engine)
    print(f"out-of-fold, each fold model on its held-out fold{' with test-time augmentation' if args.tta else ''}:")
    print(format_metrics(result.metrics).splitlines()[0])
    print(f"written as {result.cv_dir}; compare: plantlib compare {args.checkpoints[0]} {result.cv_dir}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from plantlib.inference.ensemble import load_predictor
    from plantlib.inference.predictor import predict_files
    from plantlib.io import atomic_write

    checkpoints = [_local_model(source, args.tracking_uri) for source in [args.checkpoint, *(args.ensemble or [])]]
    predictor = load_predictor(
        checkpoints, device=args.device, engine=args.engine, tta=args.tta, calibrated=not args.no_calibration
    )
    paths = [Path(p) for p in args.paths]
    frame = predict_files(predictor, paths, batch_size=args.batch_size, coverage=args.coverage)
    frame = frame.drop(columns=["confidence"])
    if args.out:
        atomic_write(Path(args.out), lambda handle: frame.to_csv(handle, index=False))
        print(f"wrote {len(frame)} predictions to {args.out}")
    else:
        print(frame.to_csv(index=False), end="")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from plantlib.inference.explain import explain_to_folder
    from plantlib.inference.predictor import load_model

    # Maps need torch's gradients; the temperature only rescales them, the probabilities shown are calibrated.
    checkpoint = _local_model(args.checkpoint, args.tracking_uri)
    loaded = load_model(checkpoint, device=args.device, engine="torch", calibrated=not args.no_calibration)
    frame, skipped = explain_to_folder(loaded, args.paths, args.out, method=args.method)
    print(f"explained {len(frame)} images ({args.method}) into {args.out}: one PNG each + explanations.csv")
    if skipped:
        print(f"skipped {len(skipped)} unreadable files (listed above)")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from plantlib.checkpoint import find_checkpoint
    from plantlib.inference.predictor import calibrate_checkpoint
    from plantlib.runs import BEST_CHECKPOINT

    checkpoint = find_checkpoint(args.checkpoint, (BEST_CHECKPOINT,))
    calibration = calibrate_checkpoint(checkpoint, device=args.device)
    print(
        f"{checkpoint}: temperature {calibration['temperature']:.4f} and {calibration['n']} conformal scores "
        f"from the validation split" + (f" ({calibration['note']})" if calibration.get("note") else "")
    )
    return 0


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from plantlib.training.lr_find import find_learning_rate

    result = find_learning_rate(_config_from_args(args), args.start_lr, args.end_lr, args.steps)
    print(f"{len(result.losses)} steps from {args.start_lr:g} to {result.learning_rates[-1]:.3g}")
    if result.suggestion is None:
        print("the loss never fell: try a larger --end-lr or more --steps")
    else:
        rate = f"{result.suggestion:.2e}"
        print(f"suggested learning rate: {rate}  (plantlib train --learning-rate {rate})")
    print(f"plot and numbers: {result.out_dir}/lr_find.png, lr_find.json")
    return 0


def _cmd_kernel(args: argparse.Namespace) -> int:
    from plantlib.frontend import KERNEL_DISPLAY_NAME, install_kernel, install_lab_settings

    target = install_kernel(user=args.user)
    print(f"kernel '{KERNEL_DISPLAY_NAME}' installed in {target}")
    if not args.user:
        print(f"JupyterLab defaults for this environment (no news pop-up): {install_lab_settings()}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from plantlib.paths import reports_dir
    from plantlib.reporting.runner import check_all_ok, run_reports

    parameters = report_parameters(args)
    if getattr(args, "tracking", None) == "off":
        import os

        from plantlib.experiments.tracking import TRACKING_ENV

        os.environ[TRACKING_ENV] = "off"  # the notebooks' kernels inherit it
    out_dir = args.out_dir or reports_dir()
    runs = run_reports(parameters, fast=args.fast, out_dir=out_dir, only=args.only, no_input=args.no_input)
    print(f"reports: {out_dir / 'index.html'}")
    check_all_ok(runs)
    return 0


def report_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """Report parameters in papermill's forms (-f FILE, -y YAML, -p NAME VALUE, -r NAME VALUE) and NAME=VALUE."""
    import yaml

    expected = "parameters must be one mapping of name: value (or a section per notebook), e.g. {epochs: 3}"
    parameters: dict[str, Any] = {}
    if args.params:
        parameters.update(read_config_file(args.params, "YAML", expected, "parameters file", empty_ok=True))
    for text in args.parameters_yaml or []:
        parameters.update(parse_config_text(text, f"-y {text!r}", "YAML", expected, empty_ok=True))
    for values in args.parameter or []:
        if len(values) == 1 and "=" in values[0]:
            name, _, value = values[0].partition("=")
        elif len(values) == 2:
            name, value = values
        else:
            raise PlantlibError(f"-p {' '.join(values)!r}: write -p NAME VALUE (or -p NAME=VALUE), e.g. -p epochs 3")
        parameters[name.strip()] = None if value == "None" else yaml.safe_load(value)
    for name, value in args.raw_parameter or []:
        parameters[name.strip()] = value
    return parameters


def _add_config_options(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """One --flag per RunConfig field (or per field in `names`); only flags actually given override the config."""

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


def _add_rerun(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="train again even when a finished cross-validation has the same recipe, data and plantlib version",
    )


def _add_no_tracking(
    parser: argparse.ArgumentParser, help: str = "do not record runs in MLflow (same as --tracking off)"
) -> None:
    """`--no-tracking`: the config's tracking="off" (also for a command's own runs: folds, trials, notebooks)."""
    parser.add_argument(
        "--no-tracking",
        dest="tracking",
        action="store_const",
        const="off",
        default=argparse.SUPPRESS,
        help=help,
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
    parser.add_argument(
        "--tta", action="store_true", help="test-time augmentation: average over the image and its mirror images (3×)"
    )
    _add_no_calibration(parser)


def _add_no_calibration(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-calibration",
        action="store_true",
        help="the network's own probabilities: ignore the temperature fitted on the validation split",
    )


def _add_registry_uri(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        help="MLflow store whose registry resolves models:/ URIs (default: $MLFLOW_TRACKING_URI, else the project's)",
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
    train.add_argument("--register", metavar="NAME", help="register the best checkpoint as a version of model NAME")
    train.add_argument(
        "--alias", action="append", metavar="ALIAS", help="with --register: point this alias at the new version"
    )
    _add_config_options(train)
    _add_no_tracking(train)
    train.set_defaults(run=_cmd_train)

    cv = commands.add_parser("cv", help="K-fold cross-validation of a training config (out-of-fold metrics)")
    cv.add_argument("--folds", type=int, default=5, help="folds (default: 5)")
    cv.add_argument(
        "--repeats", type=int, default=1, help="repeats, each with new folds and training seed (default: 1)"
    )
    cv.add_argument(
        "--seeds",
        type=_seed_list,
        metavar="S1,S2,…",
        help="training seed of each repeat (sets --repeats); folds follow --split-seed, so recipes share them",
    )
    cv.add_argument("--include-test", action="store_true", help="draw folds from every image, test split included")
    cv.add_argument("--config", type=Path, help="config.json to start from (flags override its values)")
    cv.add_argument("--resume", type=Path, metavar="CV_DIR", help="continue an interrupted cross-validation")
    _add_config_options(cv)
    _add_no_tracking(cv)
    _add_rerun(cv)
    cv.set_defaults(run=_cmd_cv)

    audit = commands.add_parser(
        "audit", help="suspected label issues, outliers and near-duplicates of a finished cross-validation"
    )
    audit.add_argument("cv_dir", type=Path, metavar="CV_DIR", help="a finished cross-validation directory")
    audit.add_argument("--top", type=int, default=10, help="images to list, most suspicious first (default: 10)")
    audit.add_argument(
        "--no-embeddings", action="store_true", help="label issues only: skip outliers and near-duplicates"
    )
    audit.add_argument("--rerun", action="store_true", help="compute the audit again even when one is saved")
    audit.set_defaults(run=_cmd_audit)

    compare = commands.add_parser("compare", help="paired comparison of CV directories or runs on the same split")
    compare.add_argument("paths", nargs="+", metavar="CV_OR_RUN_DIR")
    compare.set_defaults(run=_cmd_compare)

    backbones = commands.add_parser(
        "compare-backbones", help="cross-validate one recipe per backbone on the same folds, then compare them"
    )
    backbones.add_argument(
        "--backbones", type=_name_list, help="comma-separated backbones (default: every one with offline weights)"
    )
    backbones.add_argument("--folds", type=int, default=5, help="folds (default: 5)")
    backbones.add_argument(
        "--seeds", type=_seed_list, metavar="S1,S2,…", help="training seed of each repeat (default: one, --seed)"
    )
    backbones.add_argument("--config", type=Path, help="config.json to start from (flags override its values)")
    _add_config_options(backbones)
    _add_no_tracking(backbones)
    _add_rerun(backbones)
    backbones.add_argument(
        "--linear-probe",
        action="store_true",
        help="also each backbone's linear probe (frozen features + logistic regression) on the same folds",
    )
    backbones.set_defaults(run=_cmd_compare_backbones)

    sweep = commands.add_parser("tune", help="Optuna hyperparameter study over a YAML search space")
    sweep.add_argument("--space", type=Path, help="YAML search space (default: the built-in one, see README)")
    sweep.add_argument("--trials", type=int, default=12, help="trials this process runs (default: 12)")
    sweep.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    sweep.add_argument("--storage", help="database URL or journal file (default: artifacts/optuna/journal.log)")
    sweep.add_argument("--study", default="plantlib", help="study name; rerunning a name continues it")
    sweep.add_argument("--cv", type=int, default=0, metavar="K", help="score trials by K-fold CV (default: 0, off)")
    sweep.add_argument("--metric", default="accuracy", choices=["accuracy", "log_loss"], help="what to optimise")
    sweep.add_argument("--config", type=Path, help="config.json the study starts from (flags override it)")
    sweep.add_argument(
        "--confirm",
        action="store_true",
        help="then cross-validate the best and the base config on folds and seeds the study never used, and compare",
    )
    sweep.add_argument("--confirm-folds", type=int, default=5, metavar="K", help="folds of --confirm (default: 5)")
    sweep.add_argument(
        "--confirm-seeds",
        type=_seed_list,
        metavar="SEEDS",
        help="comma-separated training seeds of --confirm, one repeat each (default: one the study did not use)",
    )
    _add_config_options(sweep)
    _add_no_tracking(sweep)
    sweep.set_defaults(run=_cmd_tune)

    evaluate = commands.add_parser("evaluate", help="metrics of a checkpoint on a split or a labelled folder")
    evaluate.add_argument(
        "checkpoints",
        nargs="+",
        type=Path,
        metavar="CHECKPOINT",
        help="best.pt / last.pt, a run directory, a cross-validation directory (its fold models), or a registered "
        "model (models:/NAME/VERSION, models:/NAME@ALIAS); several are evaluated as one ensemble (probabilities "
        "averaged)",
    )
    where = evaluate.add_mutually_exclusive_group()
    where.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test"],
        help="split of the run's data; for a cross-validation directory, test is the split its folds left out",
    )
    where.add_argument("--data-dir", help="folder-per-class directory to evaluate on instead (an external set)")
    evaluate.add_argument("--out-dir", help="where metrics and predictions go (default: inside the run dir)")
    evaluate.add_argument(
        "--out-of-fold",
        action="store_true",
        help="with a cross-validation directory: each fold model on its own held-out fold again (with --tta)",
    )
    _add_inference_options(evaluate)
    _add_registry_uri(evaluate)
    evaluate.set_defaults(run=_cmd_evaluate)

    predict = commands.add_parser("predict", help="class probabilities for image files or folders")
    predict.add_argument(
        "checkpoint", help="best.pt / last.pt, a run directory, or models:/NAME/VERSION or models:/NAME@ALIAS"
    )
    predict.add_argument("paths", nargs="+", help="image files or folders of images")
    predict.add_argument("--out", help="CSV to write (path, predicted, p_<class>...); default: print")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument(
        "--ensemble", action="append", metavar="CHECKPOINT", help="another member (repeatable; models:/ too)"
    )
    predict.add_argument(
        "--coverage",
        type=float,
        metavar="LEVEL",
        help="add each image's conformal prediction set (column prediction_set) holding the true class at least "
        "this often, e.g. 0.9",
    )
    _add_inference_options(predict)
    _add_registry_uri(predict)
    predict.set_defaults(run=_cmd_predict)

    tracking_uri = {"help": "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else artifacts/mlflow.db)"}
    runs = commands.add_parser("runs", help="table of tracked runs (MLflow), newest first")
    runs.add_argument("--experiment", help="only this MLflow experiment")
    runs.add_argument("--backbone", help="only runs of this backbone")
    runs.add_argument("--tracking-uri", **tracking_uri)
    runs.set_defaults(run=_cmd_runs)

    ui = commands.add_parser("ui", help="start the MLflow UI on 127.0.0.1 over the project's tracking store")
    ui.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default: 5000)")
    ui.add_argument("--tracking-uri", **tracking_uri)
    ui.set_defaults(run=_cmd_ui)

    serve = commands.add_parser("serve", help="REST API and a try-it page for a model (FastAPI; docs at /docs)")
    serve.add_argument("model", help="a run directory, a checkpoint, an export folder or .onnx, or models:/NAME/VER")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; 0.0.0.0: everyone)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--workers", type=int, default=1, help="server processes, each with its own model (default: 1)")
    serve.add_argument("--engine", default="auto", choices=ENGINES, help="runtime for a checkpoint (default: auto)")
    serve.add_argument("--tracking-uri", **tracking_uri)
    serve.set_defaults(run=_cmd_serve)

    track = commands.add_parser("track", help="upload finished run directories to the tracking store (idempotent)")
    track.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    track.add_argument("--tracking-uri", **tracking_uri)
    track.set_defaults(run=_cmd_track)

    register = commands.add_parser("register", help="register a run's best checkpoint in the MLflow model registry")
    register.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    register.add_argument("--name", required=True, help="registered model name; each call adds a version")
    register.add_argument(
        "--alias", action="append", metavar="ALIAS", help="point this alias (e.g. champion) at the new version"
    )
    register.add_argument("--tracking-uri", **tracking_uri)
    register.set_defaults(run=_cmd_register)

    models = commands.add_parser("models", help="registered models: versions, aliases and where their files are")
    models.add_argument("--tracking-uri", **tracking_uri)
    models.add_argument(
        "--artifacts-destination",
        metavar="URI",
        help="the tracking server's --artifacts-destination (e.g. s3://BUCKET): shows where proxied files lie",
    )
    models.set_defaults(run=_cmd_models)

    export = commands.add_parser("export", help="self-contained ONNX model + model card of a run")
    export.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, or models:/NAME/VERSION or @ALIAS")
    export.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default: onnx)")
    export.add_argument("--out", help="output folder (default: RUN_DIR/export)")
    export.add_argument("--no-tracking", action="store_true", help="do not log the export to the run's MLflow run")
    export.add_argument("--tracking-uri", **tracking_uri)
    export.set_defaults(run=_cmd_export)

    lr_find = commands.add_parser("lr-find", help="learning-rate range test: loss against a growing rate, a suggestion")
    lr_find.add_argument("--start-lr", type=float, default=1e-7, help="first rate (default: 1e-7)")
    lr_find.add_argument("--end-lr", type=float, default=1.0, help="last rate (default: 1)")
    lr_find.add_argument("--steps", type=int, default=100, help="training steps (default: 100)")
    lr_find.add_argument("--config", type=Path, help="config.json to start from (flags override its values)")
    _add_config_options(lr_find)
    lr_find.set_defaults(run=_cmd_lr_find)

    explain = commands.add_parser("explain", help="class-activation heat maps: where the model found its evidence")
    explain.add_argument("checkpoint", help="a run directory or its best.pt / last.pt, or a models:/ URI")
    explain.add_argument("paths", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER")
    explain.add_argument("--out", type=Path, required=True, help="folder for one PNG per image and explanations.csv")
    explain.add_argument("--method", default="gradcam", choices=["gradcam", "gradcampp"], help="default: gradcam")
    explain.add_argument("--device", default="auto", help="auto, cpu or cuda")
    _add_no_calibration(explain)
    _add_registry_uri(explain)
    explain.set_defaults(run=_cmd_explain)

    calibrate = commands.add_parser(
        "calibrate", help="(re)fit a run's temperature and conformal scores on its validation split, into best.pt"
    )
    calibrate.add_argument("checkpoint", type=Path, metavar="RUN_DIR", help="a run directory or its best.pt")
    calibrate.add_argument("--device", default="auto", help="auto, cpu or cuda")
    calibrate.set_defaults(run=_cmd_calibrate)

    kernel = commands.add_parser("kernel", help="register this environment as the Jupyter kernel 'Python (plantlib)'")
    kernel.add_argument(
        "--user", action="store_true", help="for the user's own JupyterLab too (default: inside this environment only)"
    )
    kernel.set_defaults(run=_cmd_kernel)

    report = commands.add_parser("report", help="run the numbered notebooks with papermill and export HTML reports")
    report.add_argument("--fast", action="store_true", help="quick smoke run (each notebook's fast=True)")
    report.add_argument(
        "-f", "--params", help="YAML file of parameters: name: value, or a section per notebook (papermill's -f)"
    )
    report.add_argument(
        "-y", "--parameters-yaml", action="append", metavar="YAML", help="parameters as a YAML string (repeatable)"
    )
    report.add_argument(
        "-p",
        "--parameter",
        action="append",
        nargs="+",
        metavar="NAME VALUE",
        help="a parameter for every notebook that declares it: -p NAME VALUE or -p NAME=VALUE (repeatable)",
    )
    report.add_argument(
        "-r", "--raw-parameter", action="append", nargs=2, metavar=("NAME", "VALUE"), help="a parameter kept as text"
    )
    report.add_argument("--no-input", action="store_true", help="leave the code cells out of the HTML reports")
    report.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="run only these notebooks, e.g. 01_explore")
    report.add_argument("--out-dir", type=Path, help="where reports go (default: artifacts/reports)")
    _add_no_tracking(report, "do not record the notebooks' runs in MLflow (sets $PLANTLIB_TRACKING=off for them)")
    report.set_defaults(run=_cmd_report)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> str:
    return f"warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_project_tool_caches()
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
    except Stopped as stop:  # SIGTERM or SIGHUP while a child process ran; the child has been ended
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            print(f"plantlib {args.command}: stopped by {stop.name}", file=sys.stderr)
        return 128 + stop.signum
