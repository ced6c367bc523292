"""Cross-validation: stratified, group-respecting folds over the images outside the test split.

Every pool image is held out exactly once per repeat, by a model that never saw it, and never used for early
stopping or checkpoint selection (each fold carves its early-stopping set out of its own training part). The
pooled out-of-fold predictions give metrics over the whole pool (n = pool size) instead of one small test split.
Repeats draw new folds (split seed + repeat) and train with their own seed (`seeds`), so training randomness is
sampled as well; their pooled metrics are averaged over repeats, never computed from an ensemble of repeats.
Folds share one decoded-image cache, so each image is decoded once per process.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
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
from plantlib.errors import ConfigError
from plantlib.evaluation.metrics import arrays_from_predictions, compute_metrics, predictions_frame
from plantlib.experiments.tracking import ParentRun, tracking_callbacks
from plantlib.io import atomic_write, write_json
from plantlib.paths import artifacts_dir
from plantlib.runs import CV_FILE, is_cv_dir, new_unique_dir, read_cv_info, read_run_info
from plantlib.training.build import build_image_cache
from plantlib.training.trainer import CallbackLike, Trainer

OOF_FILE = "oof.csv"


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


def new_cv_dir(config: RunConfig, folds: int) -> Path:
    parent = Path(config.output_dir) if config.output_dir else artifacts_dir() / "cv"
    return new_unique_dir(parent, f"{time.strftime('%Y%m%d-%H%M%S')}-{config.backbone}-{folds}fold")


def cross_validate(
    config: RunConfig,
    folds: int = 5,
    repeats: int = 1,
    include_test: bool = False,
    cv_dir: Path | None = None,
    callbacks: Sequence[CallbackLike] = (),
    show_progress: bool = True,
    seeds: Sequence[int] | None = None,
) -> CrossValidation:
    """K-fold (optionally repeated) cross-validation of `config`; resumable: finished folds are kept.

    `seeds` are the training seeds of the repeats (their number sets `repeats`); by default repeat r trains with
    `config.seed + r`. Folds always come from the split seed, so two recipes with other training seeds share them.
    Passing the `cv_dir` of an earlier, interrupted call continues it with the same folds and seeds.
    """
    if cv_dir is not None and is_cv_dir(cv_dir):
        saved = read_cv_info(cv_dir)
        config = RunConfig.from_dict(saved["config"])
        folds, repeats, include_test = saved["folds"], saved["repeats"], saved["include_test"]
        seeds = saved.get("seeds")
    seeds = repeat_seeds(config.seed, repeats, seeds)
    repeats = len(seeds)
    data = prepare_data(config, show_progress=show_progress)
    assigned = assign_folds(cv_pool(data, include_test), folds, repeats, config.effective_split_seed)
    outside = data.split.loc[~data.split["path"].isin(assigned["path"]), ["path", "label", "group"]]
    cv_dir = Path(cv_dir) if cv_dir is not None else new_cv_dir(config, folds)
    cv_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "folds": folds,
        "repeats": repeats,
        "seeds": seeds,
        "fold_seed": config.effective_split_seed,
        "include_test": include_test,
        "pool_size": len(assigned),
    }
    write_json(cv_dir / CV_FILE, {"status": "running", "config": config.to_dict(), **settings})
    atomic_write(cv_dir / "folds.csv", lambda handle: assigned.to_csv(handle, index=False, lineterminator="\n"))
    cache = build_image_cache(config)
    rows = []
    tags = {"backbone": config.backbone}
    with ParentRun(config, cv_dir.name, {**settings, **tags}, tags) as group:
        parent_config = config.replace(tracking_parent=group.run_id) if group.run_id else config
        for repeat in range(repeats):
            repeat_config = _with_training_seed(parent_config, seeds[repeat])
            for fold in range(folds):
                split = fold_split(assigned, repeat, fold, config.val_fraction, config.effective_split_seed, outside)
                run_dir = cv_dir / f"repeat{repeat}-fold{fold}"
                rows.append(
                    _run_fold(repeat_config, data, split, run_dir, cache, callbacks, show_progress)
                    | {"repeat": repeat, "fold": fold}
                )
        result = _summarise(cv_dir, rows, data.classes)
        summary = {"status": "finished", "config": config.to_dict(), **settings, "pooled": _headline(result.metrics)}
        summary["per_fold"] = _fold_spread(result.folds)
        write_json(cv_dir / CV_FILE, summary)
        group.log_metrics({f"cv_{k}": v for k, v in _flat_headline(result.metrics).items()})
        group.log_file(cv_dir / CV_FILE)
        group.log_file(cv_dir / OOF_FILE)
    return result


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


def _run_fold(
    config: RunConfig,
    data: PreparedData,
    split: pd.DataFrame,
    run_dir: Path,
    cache: Any,
    callbacks: Sequence[CallbackLike],
    show_progress: bool,
) -> dict[str, Any]:
    """Train one fold in `run_dir` (resuming it, or reusing it when finished); its held-out numbers."""
    if read_run_info(run_dir).get("status") != "finished":
        split_file = run_dir / "split.csv"
        run_dir.mkdir(parents=True, exist_ok=True)
        save_split(split, split_file)
        fold_config = config.replace(split_file=str(split_file), new_split=False)
        fold_data = dataclasses.replace(data, split=split, split_file=split_file, split_was_new=False)
        everything = [*tracking_callbacks(fold_config), *callbacks]
        if (run_dir / "config.json").is_file():
            trainer = Trainer.resume(run_dir, everything, show_progress, data=fold_data, image_cache=cache)
        else:
            write_json(run_dir / "config.json", fold_config.to_dict())
            trainer = Trainer(fold_config, fold_data, run_dir, everything, show_progress, image_cache=cache)
        trainer.fit()
        drop_resume_state(run_dir)  # a finished fold resumes nothing
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return {"accuracy": metrics["accuracy"], "f1": metrics["f1"], "n": metrics["n"], "run_dir": str(run_dir)}


def _summarise(
    cv_dir: Path, rows: list[dict[str, Any]], classes: list[str], frames: list[pd.DataFrame] | None = None
) -> CrossValidation:
    """Out-of-fold predictions of every repeat, and metrics pooled over the pool (repeats averaged per image).

    `frames` are the folds' held-out predictions; by default each fold run's saved predictions.csv.
    """
    if frames is None:
        frames = [pd.read_csv(Path(row["run_dir"]) / "predictions.csv") for row in rows]
    parts = [frame.assign(repeat=row["repeat"], fold=row["fold"]) for frame, row in zip(frames, rows, strict=True)]
    oof = pd.concat(parts, ignore_index=True)
    atomic_write(cv_dir / OOF_FILE, lambda handle: oof.to_csv(handle, index=False, lineterminator="\n"))
    return CrossValidation(cv_dir, pooled_metrics(oof, classes), pd.DataFrame(rows), oof)


def reevaluate_out_of_fold(
    cv_dir: Path, tta: bool = False, device: str = "auto", engine: str = "auto"
) -> CrossValidation:
    """Each fold's best model on its own held-out fold again, here with test-time augmentation, pooled the same way.

    Written as a sibling cross-validation directory (`<cv_dir>-tta`) with the same folds, so `plantlib compare`
    pairs it image by image with the original. Nothing is trained.
    """
    from plantlib.checkpoint import BEST_CHECKPOINT
    from plantlib.inference.predictor import evaluate_split, load_model

    cv_dir = Path(cv_dir)
    saved = read_cv_info(cv_dir)
    if saved.get("status") != "finished":
        raise ConfigError(f"{cv_dir} is not a finished cross-validation; finish it with plantlib cv --resume {cv_dir}")
    target = cv_dir.with_name(f"{cv_dir.name}-{'tta' if tta else 'reevaluated'}")
    target.mkdir(parents=True, exist_ok=True)
    rows, frames, classes = [], [], []
    for repeat in range(saved["repeats"]):
        for fold in range(saved["folds"]):
            run_dir = cv_dir / f"repeat{repeat}-fold{fold}"
            loaded = load_model(run_dir / BEST_CHECKPOINT, device=device, engine=engine, tta=tta)
            metrics, frame = evaluate_split(loaded, "test", save=False)
            classes = loaded.class_names
            frames.append(frame)
            rows.append(
                {"accuracy": metrics["accuracy"], "f1": metrics["f1"], "n": metrics["n"]}
                | {"run_dir": str(run_dir), "repeat": repeat, "fold": fold}
            )
    result = _summarise(target, rows, classes, frames)
    summary = {**saved, "tta": tta, "source": str(cv_dir), "pooled": _headline(result.metrics)}
    summary["per_fold"] = _fold_spread(result.folds)
    write_json(target / CV_FILE, summary)
    assignment = (cv_dir / "folds.csv").read_text(encoding="utf-8")  # the same folds, for whoever pairs the two
    atomic_write(target / "folds.csv", lambda handle: handle.write(assignment))
    return CrossValidation(target, result.metrics, result.folds, result.oof)


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


def pooled_predictions(oof: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One prediction per pool image: its out-of-fold probabilities averaged over repeats (an ensemble of the
    repeats when there are several: label it as one; `pooled_metrics` gives the repeat-averaged scores)."""
    columns = [f"p_{c}" for c in classes]
    mean = oof.groupby("path", sort=True)[columns].mean()
    true = oof.groupby("path", sort=True)["true"].first()
    return predictions_frame(
        list(mean.index), true.map({c: i for i, c in enumerate(classes)}).to_numpy(), mean.to_numpy(), classes
    )


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "accuracy", "f1", "roc_auc", "log_loss", "ece")
    return {**{k: metrics.get(k) for k in keys}, "ci95": metrics.get("ci95")}


def _flat_headline(metrics: dict[str, Any]) -> dict[str, float]:
    flat = {k: float(v) for k, v in _headline(metrics).items() if isinstance(v, (int, float))}
    for key, bounds in (metrics.get("ci95") or {}).items():
        if bounds:
            flat[f"{key}_ci_low"], flat[f"{key}_ci_high"] = bounds
    return flat


def _fold_spread(folds: pd.DataFrame) -> dict[str, Any]:
    return {
        name: {"mean": float(folds[name].mean()), "sd": float(folds[name].std(ddof=1)) if len(folds) > 1 else 0.0}
        for name in ("accuracy", "f1")
    }
