"""Cross-validation: stratified, group-respecting folds over the images outside the test split.

Every pool image is held out exactly once per repeat, by a model that never saw it, and never used for early
stopping or checkpoint selection (each fold carves its early-stopping set out of its own training part). The
pooled out-of-fold predictions give metrics over the whole pool (n = pool size) instead of one small test split.
Repeats draw new folds (split seed + repeat) and train with their own seed (`seeds`), so training randomness is
sampled as well; their pooled metrics are averaged over repeats, never computed from an ensemble of repeats.
Folds share one decoded-image cache, so each image is decoded once per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from plantlib.checkpoint import drop_resume_state
from plantlib.config import RunConfig
from plantlib.data import PreparedData, prepare_data
from plantlib.data.split import EXCLUDED, save_split
from plantlib.errors import ConfigError, PlantlibError
from plantlib.evaluation.metrics import arrays_from_predictions, compute_metrics
from plantlib.experiments.content_key import content_key, find_finished_cv
from plantlib.experiments.eta import FoldClock
from plantlib.experiments.tracking import ParentRun, metric_values, tracking_callbacks
from plantlib.paths import artifacts_dir
from plantlib.runs import LOG_FILE, METRICS_FILE, CvDir, RunDir, is_cv_dir, new_unique_dir, read_cv_info
from plantlib.training.build import build_image_cache
from plantlib.training.trainer import CallbackLike, Trainer


@dataclass
class CrossValidation:
    """The outcome of `cross_validate`: where it is, pooled metrics and per-fold numbers."""

    cv_dir: Path
    metrics: dict[str, Any]  # pooled out-of-fold metrics (compute_metrics), n = pool size
    folds: pd.DataFrame  # one row per (repeat, fold): accuracy, f1, n, run_dir
    oof: pd.DataFrame  # one row per pool image and repeat


def assign_folds(pool: pd.DataFrame, folds: int, repeats: int, split_seed: int) -> pd.DataFrame:
    """`pool` (path, label, group) with one `fold_r<r>` column per repeat: stratified, groups kept whole."""
    if folds < 2:
        raise ConfigError(f"folds={folds} is not allowed; use 2 or more")
    if repeats < 1:
        raise ConfigError(f"repeats={repeats} is not allowed; use 1 or more")
    smallest = pool["label"].value_counts().min()
    if smallest < folds:
        raise ConfigError(
            f"the smallest class has {smallest} pool images, fewer than folds={folds}; use at most {smallest} folds"
        )
    assigned = pool.reset_index(drop=True).copy()
    for repeat in range(repeats):
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=split_seed + repeat)
        column = np.full(len(assigned), -1)
        for fold, (_, held_out) in enumerate(splitter.split(assigned, assigned["label"], assigned["group"])):
            column[held_out] = fold
        assigned[f"fold_r{repeat}"] = column
    return assigned


def fold_split(
    assigned: pd.DataFrame,
    repeat: int,
    fold: int,
    val_fraction: float,
    split_seed: int,
    outside: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """A split frame for one fold: held-out images as "test", the early-stopping "val" carved out of the rest.

    `outside` (path, label, group) are the images not in the pool, e.g. the untouched test split: they are
    listed as "excluded", so the fold's split file still describes every image of the folder.
    """
    column = assigned[f"fold_r{repeat}"]
    held_out = column == fold
    rest = assigned[~held_out].reset_index(drop=True)
    # One part of ~val_fraction becomes the early-stopping set; no more parts than the smallest class has images.
    parts = max(2, min(round(1 / val_fraction), int(rest["label"].value_counts().min())))
    splitter = StratifiedGroupKFold(n_splits=parts, shuffle=True, random_state=split_seed + 1000 * (repeat + 1) + fold)
    _, val_index = next(splitter.split(rest, rest["label"], rest["group"]))
    split = np.full(len(rest), "train", dtype=object)
    split[val_index] = "val"
    rest = rest.assign(split=split)
    test = assigned[held_out].assign(split="test")
    parts = [rest, test] + ([outside.assign(split=EXCLUDED)] if outside is not None and len(outside) else [])
    frame = pd.concat(parts, ignore_index=True)[["path", "label", "split", "group"]]
    return frame.sort_values(["split", "label", "path"]).reset_index(drop=True)


def cv_pool(data: PreparedData, include_test: bool) -> pd.DataFrame:
    """The images cross-validation draws folds from: all outside the test split, or every image."""
    split = data.split
    pool = split if include_test else split[split["split"] != "test"]
    return pool[["path", "label", "group"]].reset_index(drop=True)


def cv_parent(config: RunConfig) -> Path:
    """Where `config`'s cross-validation directories go: its output_dir, else artifacts/cv."""
    return Path(config.output_dir) if config.output_dir else artifacts_dir() / "cv"


def new_cv_dir(config: RunConfig, folds: int) -> Path:
    return new_unique_dir(cv_parent(config), f"{time.strftime('%Y%m%d-%H%M%S')}-{config.backbone}-{folds}fold")


def finished_twin(config: RunConfig, key: str) -> Path | None:
    """A finished cross-validation with the same content key (announced), or None."""
    found = find_finished_cv(cv_parent(config), key)
    if found is not None:
        print(f"reusing {found}: finished with the same recipe, data and plantlib version (--rerun trains again)")
    return found


def cross_validate(
    config: RunConfig,
    folds: int = 5,
    repeats: int = 1,
    include_test: bool = False,
    cv_dir: Path | None = None,
    callbacks: Sequence[CallbackLike] = (),
    show_progress: bool = True,
    seeds: Sequence[int] | None = None,
    parent_run_id: str | None = None,
    quiet: bool = False,
    rerun: bool = False,
    clock: FoldClock | None = None,
) -> CrossValidation:
    """K-fold (optionally repeated) cross-validation of `config`; resumable: finished folds are kept.

    `seeds` are the training seeds of the repeats (their number sets `repeats`); by default repeat r trains with
    `config.seed + r`. Folds always come from the split seed, so two recipes with other training seeds share them.
    Passing the `cv_dir` of an earlier, interrupted call continues it with the same folds and seeds. When tracked,
    the cross-validation is an MLflow group run holding its folds, nested under `parent_run_id` when given.
    Each fold's printed log is kept in full in its run directory (`LOG_FILE`); `quiet` prints one line per fold
    (`fold_line`) instead of the log itself. A finished cross-validation with the same content key (recipe, data,
    settings, plantlib version: `experiments.content_key`) is reused, not trained again, unless `rerun`.
    After each fold a line says how many folds are done and the time left; one `clock` counts several calls' folds.
    """
    if cv_dir is not None and is_cv_dir(cv_dir):
        config, folds, repeats, include_test, seeds = _saved_settings(cv_dir)
    seeds = repeat_seeds(config.seed, repeats, seeds)
    data = prepare_data(config, show_progress=show_progress)
    assigned = assign_folds(cv_pool(data, include_test), folds, len(seeds), config.effective_split_seed)
    outside = data.split.loc[~data.split["path"].isin(assigned["path"]), ["path", "label", "group"]]
    settings = cv_settings(config, data, folds, seeds, include_test, len(assigned))
    reused = cv_dir is None and not rerun and (twin := finished_twin(config, settings["content_key"])) is not None
    cv_dir = twin if reused else cv_dir
    cv = CvDir(cv_dir if cv_dir is not None else new_cv_dir(config, folds))
    cv.write_info({"status": "running", "config": config.to_dict(), **settings})
    cv.write_folds(assigned)
    cache = build_image_cache(config)
    clock = clock or FoldClock(total=folds * len(seeds))
    rows = []
    tags = {"backbone": config.backbone}
    group_config = config.replace(tracking="off") if reused else config  # its runs are tracked already
    with ParentRun(group_config, cv.name, {**settings, **tags}, tags, parent_run_id) as group:
        for repeat, seed in enumerate(seeds):
            repeat_config = _with_training_seed(config, seed)
            for fold in range(folds):
                split = fold_split(assigned, repeat, fold, config.val_fraction, config.effective_split_seed, outside)
                run = cv.fold(repeat, fold)
                reused_fold, started = run.status() == "finished", time.perf_counter()
                with _fold_log(run, quiet, config.backbone, (repeat, len(seeds)), (fold, folds)):
                    trained = _run_fold(repeat_config, data, split, run, cache, callbacks, show_progress, group.run_id)
                print(f"  {clock.fold_finished(config.backbone, time.perf_counter() - started, reused_fold)}")
                rows.append(trained | {"repeat": repeat, "fold": fold})
        result = summarise(cv, rows, data.classes)
        summary = {"status": "finished", "config": config.to_dict(), **settings, "pooled": headline(result.metrics)}
        cv.write_info(summary | {"per_fold": fold_spread(result.folds)})
        group.log_metrics(metric_values(headline(result.metrics), "cv"))
        group.log_file(cv.info_file)
        group.log_file(cv.oof_file)
    return result


def _saved_settings(cv_dir: Path) -> tuple[RunConfig, int, int, bool, list[int] | None]:
    """What an earlier cross-validation in `cv_dir` ran with: config, folds, repeats, include_test, seeds."""
    saved = read_cv_info(cv_dir)
    config = RunConfig.from_dict(saved["config"])
    return config, saved["folds"], saved["repeats"], saved["include_test"], saved.get("seeds")


def cv_settings(
    config: RunConfig,
    data: PreparedData,
    folds: int,
    seeds: list[int],
    include_test: bool,
    pool_size: int,
    kind: str | None = None,
) -> dict[str, Any]:
    """A cross-validation's settings as cv.json records them, with the content key they and the recipe make.

    `kind` names a model other than the fine-tuned recipe on the same folds (e.g. a linear probe); it enters the key.
    """
    settings = {
        "folds": folds,
        "repeats": len(seeds),
        "seeds": seeds,
        "fold_seed": config.effective_split_seed,
        "include_test": include_test,
        "pool_size": pool_size,
    } | ({"kind": kind} if kind else {})
    return settings | {"content_key": content_key(config, data, settings)}


def repeat_seeds(seed: int, repeats: int, seeds: Sequence[int] | None = None) -> list[int]:
    """The training seed of each repeat: `seeds` as given (distinct, non-negative), else seed, seed + 1, …"""
    if seeds is None:
        if repeats < 1:
            raise ConfigError(f"repeats={repeats} is not allowed; use 1 or more")
        return [seed + repeat for repeat in range(repeats)]
    chosen = [int(value) for value in seeds]
    if not chosen or min(chosen) < 0 or len(set(chosen)) != len(chosen):
        raise ConfigError(f"seeds={list(seeds)} is not allowed; give distinct non-negative integers, e.g. 1,2,3")
    return chosen


def parse_seeds(text: str | None) -> list[int] | None:
    """ "1,2,3" -> [1, 2, 3]; empty -> None (one repeat per --repeats, seeds counted up from `seed`)."""
    if not text or not str(text).strip():
        return None
    try:
        seeds = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"seeds={text!r} is not a comma-separated list of integers; write e.g. 1,2,3") from None
    return repeat_seeds(0, len(seeds), seeds)


def _with_training_seed(config: RunConfig, seed: int) -> RunConfig:
    """`config` training with `seed`; the split seed stays what it was, so the folds do not move."""
    if seed == config.seed:
        return config
    return config.replace(seed=seed, split_seed=config.effective_split_seed)


class _Tee:
    """A text stream that writes to several: a fold's log file and the console it would have printed to."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def _fold_log(
    run: RunDir, quiet: bool, backbone: str, repeat: tuple[int, int], fold: tuple[int, int]
) -> Iterator[None]:
    """What a fold prints goes to its `LOG_FILE` (appended: a resumed fold keeps its earlier lines) and to the
    console, or with `quiet` only to the file, and the console gets the fold's `fold_line` once it is done."""
    run.path.mkdir(parents=True, exist_ok=True)
    console = sys.stdout
    with (
        open(run.path / LOG_FILE, "a", encoding="utf-8") as log,
        contextlib.redirect_stdout(log if quiet else _Tee(console, log)),
    ):
        yield
    if quiet:
        print(fold_line(run, backbone, repeat, fold), flush=True)


def fold_line(run: RunDir, backbone: str, repeat: tuple[int, int], fold: tuple[int, int]) -> str:
    """One line for a finished fold: backbone, fold (and repeat), epochs, held-out accuracy and n, wall seconds.

    `repeat` and `fold` are (index, count). The seconds are wall-clock time on this machine, whatever else ran.
    """
    info, metrics = run.read_info(), run.read_metrics() or {}
    where = f"fold {fold[0] + 1}/{fold[1]}" + (f" of repeat {repeat[0] + 1}/{repeat[1]}" if repeat[1] > 1 else "")
    epochs = info.get("epochs_done", 0)
    return (
        f"  {backbone} {where}: {epochs} epoch{'s' * (epochs != 1)} (best {info.get('best_epoch', '?')}), "
        f"held-out accuracy {metrics.get('accuracy', float('nan')):.3f} (n={metrics.get('n', '?')}), "
        f"{info.get('train_seconds', 0.0):.0f} s wall; full log: {run.name}/{LOG_FILE}"
    )


def _run_fold(
    config: RunConfig,
    data: PreparedData,
    split: pd.DataFrame,
    run: RunDir,
    cache: Any,
    callbacks: Sequence[CallbackLike],
    show_progress: bool,
    parent_run_id: str | None,
) -> dict[str, Any]:
    """Train one fold in `run` (resuming it, or reusing it when finished); its held-out numbers."""
    if run.status() != "finished":
        run.path.mkdir(parents=True, exist_ok=True)
        save_split(split, run.split_file)
        fold_config = config.replace(split_file=str(run.split_file), new_split=False)
        fold_data = dataclasses.replace(
            data, split=split, split_file=run.split_file, split_was_new=False, held_out_name="held-out"
        )
        everything = [*tracking_callbacks(fold_config, parent_run_id), *callbacks]
        if run.is_run():
            trainer = Trainer.resume(run.path, everything, show_progress, data=fold_data, image_cache=cache)
        else:
            RunDir.create_at(run.path, fold_config)
            trainer = Trainer.build(fold_config, fold_data, run.path, everything, show_progress, image_cache=cache)
        trainer.fit()
        drop_resume_state(run.path)  # a finished fold resumes nothing
    metrics = run.read_metrics()
    if metrics is None:
        raise PlantlibError(f"fold {run.path} finished without {METRICS_FILE}; delete the folder and resume the CV")
    return {"accuracy": metrics["accuracy"], "f1": metrics["f1"], "n": metrics["n"], "run_dir": str(run.path)}


def summarise(
    cv: CvDir, rows: list[dict[str, Any]], classes: list[str], frames: list[pd.DataFrame] | None = None
) -> CrossValidation:
    """Out-of-fold predictions of every repeat, and metrics pooled over the pool (repeats averaged per image).

    `frames` are the folds' held-out predictions; by default each fold run's saved test-split predictions.
    """
    if frames is None:
        frames = [RunDir(Path(row["run_dir"])).read_predictions() for row in rows]
    parts = [frame.assign(repeat=row["repeat"], fold=row["fold"]) for frame, row in zip(frames, rows, strict=True)]
    oof = pd.concat(parts, ignore_index=True)
    cv.write_oof(oof)
    return CrossValidation(cv.path, pooled_metrics(oof, classes), pd.DataFrame(rows), oof)


def reevaluate_out_of_fold(
    cv_dir: Path, tta: bool = False, device: str = "auto", engine: str = "auto"
) -> CrossValidation:
    """Each fold's best model on its own held-out fold again, here with test-time augmentation, pooled the same way.

    Written as a sibling cross-validation directory (`<cv_dir>-tta`) with the same folds, so `plantlib compare`
    pairs it image by image with the original. Nothing is trained.
    """
    from plantlib.inference.predictor import evaluate_split, load_model

    source = CvDir(Path(cv_dir))
    saved = source.read_info()
    if saved.get("status") != "finished":
        raise ConfigError(
            f"{source.path} is not a finished cross-validation; finish it with plantlib cv --resume {source.path}"
        )
    target = CvDir(source.path.with_name(f"{source.name}-{'tta' if tta else 'reevaluated'}"))
    target.path.mkdir(parents=True, exist_ok=True)
    rows, frames, classes = [], [], []
    for repeat in range(saved["repeats"]):
        for fold in range(saved["folds"]):
            run = source.fold(repeat, fold)
            loaded = load_model(run.best_checkpoint, device=device, engine=engine, tta=tta)
            metrics, frame = evaluate_split(loaded, "test", save=False)
            classes = loaded.class_names
            frames.append(frame)
            rows.append(
                {"accuracy": metrics["accuracy"], "f1": metrics["f1"], "n": metrics["n"]}
                | {"run_dir": str(run.path), "repeat": repeat, "fold": fold}
            )
    result = summarise(target, rows, classes, frames)
    summary = {**saved, "tta": tta, "source": str(source.path), "pooled": headline(result.metrics)}
    target.write_info(summary | {"per_fold": fold_spread(result.folds)})
    target.copy_folds_from(source)  # the same folds, for whoever pairs the two
    return result


def pooled_metrics(oof: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    """Out-of-fold metrics over the pool: one repeat's `compute_metrics`, or with R repeats the mean of each
    repeat's numbers and interval bounds (n stays the pool size). Averaging probabilities over repeats instead would
    score an R-model ensemble, better than any one repeat's models."""
    repeats = sorted(oof["repeat"].unique()) if "repeat" in oof.columns else [0]
    per_repeat = []
    for repeat in repeats:
        part = oof[oof["repeat"] == repeat] if "repeat" in oof.columns else oof
        per_repeat.append(compute_metrics(*arrays_from_predictions(part, classes), classes))
    if len(per_repeat) == 1:
        return per_repeat[0]
    return _average_metrics(per_repeat)


def _average_metrics(per_repeat: list[dict[str, Any]]) -> dict[str, Any]:
    """Scalars averaged; ci95 bounds averaged; everything else (tables, n) from the first repeat."""
    averaged = dict(per_repeat[0])
    for key, value in per_repeat[0].items():
        if isinstance(value, float) and all(isinstance(m.get(key), float) for m in per_repeat):
            averaged[key] = float(np.mean([m[key] for m in per_repeat]))
    bounds = {}
    for key, first in (per_repeat[0].get("ci95") or {}).items():
        values = [m["ci95"].get(key) for m in per_repeat]
        bounds[key] = None if first is None or None in values else [float(x) for x in np.mean(values, axis=0)]
    averaged["ci95"] = bounds
    averaged["repeats"] = len(per_repeat)
    return averaged


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "accuracy", "f1", "roc_auc", "log_loss", "ece")
    return {**{k: metrics.get(k) for k in keys}, "ci95": metrics.get("ci95")}


def fold_spread(folds: pd.DataFrame) -> dict[str, Any]:
    return {
        name: {"mean": float(folds[name].mean()), "sd": float(folds[name].std(ddof=1)) if len(folds) > 1 else 0.0}
        for name in ("accuracy", "f1")
    }
