"""Is A better than B? Comparisons of configurations evaluated on the same images, under one verdict rule.

Each configuration is a cross-validation directory (its out-of-fold predictions, fold by fold) or a run directory
(its test-split predictions). The rule and its tests live in `plantlib.experiments.stats`: cross-validations are
compared as recipes, fold by fold (corrected resampled t-test), runs on one split image by image (exact McNemar);
Holm's correction covers every pair shown together. Configurations that were not evaluated alike (other folds,
fold seed, repeat count or images) are refused, as is a mix of cross-validations and single runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plantlib.errors import PlantlibError
from plantlib.evaluation.metrics import arrays_from_predictions, class_columns, compute_metrics
from plantlib.experiments.cv import pooled_metrics
from plantlib.experiments.stats import (
    ALPHA,
    NOT_DISTINGUISHABLE,
    RULE,
    PairTest,
    corrected_t_test,
    holm_levels,
    mcnemar_test,
    verdict_words,
)
from plantlib.runs import CvDir, RunDir, is_cv_dir, read_cv_info

__all__ = ["NOT_DISTINGUISHABLE", "RULE"]


@dataclass
class Evaluated:
    """One configuration's predictions on a set of images, with a name for tables."""

    name: str
    predictions: pd.DataFrame  # path, true, predicted, p_<class>...; a CV's also repeat and fold, per repeat
    source: Path
    cv: dict[str, Any] | None = None  # a cross-validation's cv.json; None for a run on one split


def load_evaluated(path: Path, name: str | None = None) -> Evaluated:
    """A CV directory's out-of-fold predictions (every repeat), or a run directory's test-split predictions."""
    path = Path(path)
    cv, run = CvDir(path), RunDir(path)
    if cv.exists():
        info = cv.read_info()
        if info.get("status", "finished") != "finished":
            raise PlantlibError(
                f"{path} is not a finished cross-validation; finish it with plantlib cv --resume {path}"
            )
        return Evaluated(name or configuration_name(info["config"], path), cv.read_oof(), path, info)
    if not run.predictions_file.is_file():
        raise PlantlibError(f"{path} is neither a cross-validation directory nor a finished run directory")
    config = run.read_config_values()  # {} for an ensemble's evaluation: it has no config of its own
    label = name or (configuration_name(config, path) if config else ensemble_name(path))
    return Evaluated(label, run.read_predictions(), path)


def ensemble_name(path: Path) -> str:
    """An ensemble's evaluation is named after what it averages: a CV's fold models, or `ensemble (folder)`."""
    if is_cv_dir(path.parent):
        config = read_cv_info(path.parent)["config"]
        return f"fold ensemble of {configuration_name(config, path.parent)}"
    return f"ensemble ({path.name})"


# Recipe fields that say nothing in a name: where the images are (the folder names the configuration already)
# and the backbone, which leads the name anyway.
_UNNAMED_RECIPE_FIELDS = ("data_dir", "split_file", "new_split", "backbone")


def configuration_name(config: dict, path: Path, most: int = 3) -> str:
    """ "backbone, field=value… (folder)": the recipe fields that differ from the defaults tell two CVs apart."""
    from plantlib.config import RECIPE_FIELDS, RunConfig

    defaults = RunConfig().to_dict()
    named = [key for key in RECIPE_FIELDS if key not in _UNNAMED_RECIPE_FIELDS]
    changed = [
        f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in config.items()
        if key in named and value != defaults[key]
    ]
    shown = ", ".join([str(config.get("backbone", "?")), *changed[:most]]) + (" …" if len(changed) > most else "")
    return f"{shown} ({path.name})"


def _correct(predictions: pd.DataFrame) -> pd.Series:
    return predictions["true"] == predictions["predicted"]


def _same_images(items: Sequence[Evaluated]) -> list[str]:
    reference = set(items[0].predictions["path"])
    for other in items[1:]:
        paths = set(other.predictions["path"])
        if paths != reference:
            extra, missing = sorted(paths - reference)[:3], sorted(reference - paths)[:3]
            raise PlantlibError(
                f"{other.name} and {items[0].name} were not evaluated on the same images ({len(paths ^ reference)} "
                f"differ, e.g. {extra or missing}); compare CV runs with the same folds or runs on the same split"
            )
    return sorted(reference)


# What two cross-validations must share to be compared fold by fold, with the flag that sets each.
_CV_SETTINGS = {"folds": "--folds", "repeats": "--repeats (or --seeds)", "include_test": "--include-test"}


def check_comparable(items: Sequence[Evaluated]) -> list[str]:
    """Refuse, in one line naming the mismatch, configurations that were not evaluated alike; their images."""
    if len(items) < 2:
        raise PlantlibError("compare needs two or more configurations")
    kinds = {item.name: item.cv is not None for item in items}
    if len(set(kinds.values())) > 1:
        cv_name = next(name for name, is_cv in kinds.items() if is_cv)
        run_name = next(name for name, is_cv in kinds.items() if not is_cv)
        raise PlantlibError(
            f"{cv_name} is a cross-validation and {run_name} a run on one split; compare CVs with CVs, runs with runs"
        )
    first = items[0]
    if first.cv is not None:
        for other in items[1:]:
            for key, flag in (*_CV_SETTINGS.items(), ("fold_seed", "--split-seed")):
                mine, theirs = _cv_setting(first, key), _cv_setting(other, key)
                if mine != theirs:
                    raise PlantlibError(
                        f"{first.name} has {key}={mine} and {other.name} has {key}={theirs}; "
                        f"rerun one with the same {flag} so both are evaluated on the same folds"
                    )
    paths = _same_images(items)
    if first.cv is not None:
        reference = _fold_keys(first)
        for other in items[1:]:
            if not _fold_keys(other).equals(reference):
                raise PlantlibError(
                    f"{first.name} and {other.name} hold out different images in some fold; "
                    "rerun one with the same --split-seed, --folds and --repeats"
                )
    return paths


def _cv_setting(item: Evaluated, key: str) -> Any:
    cv = item.cv or {}
    if key == "fold_seed" and "fold_seed" not in cv:  # cross-validations from before the seed was recorded
        config = cv.get("config", {})
        return config.get("split_seed") if config.get("split_seed") is not None else config.get("seed")
    return cv.get(key, 1 if key == "repeats" else None)


def _fold_keys(item: Evaluated) -> pd.DataFrame:
    """(path, repeat, fold) of every held-out prediction, sorted: equal frames mean equal folds."""
    frame = item.predictions[["path", "repeat", "fold"]]
    return frame.sort_values(["repeat", "path"]).reset_index(drop=True)


def _fold_accuracies(item: Evaluated) -> pd.Series:
    """Accuracy of each (repeat, fold) on its held-out images."""
    frame = item.predictions.assign(correct=_correct(item.predictions))
    return frame.groupby(["repeat", "fold"])["correct"].mean()


def _cv_pair(a: Evaluated, b: Evaluated) -> PairTest:
    accuracy_a, accuracy_b = _fold_accuracies(a), _fold_accuracies(b)
    sizes = a.predictions.groupby(["repeat", "fold"]).size()
    pool = len(a.predictions) / a.predictions["repeat"].nunique()
    ratio = float(np.mean(sizes / (pool - sizes)))  # held-out / trained-on images of a fold
    return corrected_t_test((accuracy_a - accuracy_b.loc[accuracy_a.index]).to_numpy(), ratio)


def _run_pair(a: Evaluated, b: Evaluated, paths: list[str]) -> tuple[PairTest, int, int]:
    correct_a = _correct(a.predictions.set_index("path").loc[paths]).to_numpy()
    correct_b = _correct(b.predictions.set_index("path").loc[paths]).to_numpy()
    only_a, only_b = int(np.sum(correct_a & ~correct_b)), int(np.sum(~correct_a & correct_b))
    return mcnemar_test(only_a, only_b, len(paths)), only_a, only_b


def summary_table(items: Sequence[Evaluated]) -> pd.DataFrame:
    """Per configuration: n, accuracy and macro F1 with their 95% CIs (repeats averaged, never ensembled)."""
    rows = []
    for item in items:
        classes = class_columns(item.predictions)
        if item.cv is not None:
            metrics = pooled_metrics(item.predictions, classes)
        else:
            metrics = compute_metrics(*arrays_from_predictions(item.predictions, classes), classes)
        ci = metrics["ci95"]
        rows.append(
            {
                "configuration": item.name,
                "n": metrics["n"],
                "accuracy": metrics["accuracy"],
                "accuracy_ci_low": ci["accuracy"][0],
                "accuracy_ci_high": ci["accuracy"][1],
                "f1": metrics["f1"],
                "f1_ci_low": ci["f1_macro"][0],
                "f1_ci_high": ci["f1_macro"][1],
            }
        )
    return pd.DataFrame(rows)


def pairwise_table(items: Sequence[Evaluated], alpha: float = ALPHA) -> pd.DataFrame:
    """Every pair under the verdict rule: difference A − B, its Holm-level interval, raw and Holm p, verdict."""
    check_comparable(items)
    return paired_table(list(itertools.combinations(items, 2)), alpha)


def paired_table(pairs: Sequence[tuple[Evaluated, Evaluated]], alpha: float = ALPHA) -> pd.DataFrame:
    """The given pairs under the verdict rule, Holm's correction over exactly these pairs (each checked comparable)."""
    if not pairs:
        raise PlantlibError("name at least one pair of configurations to compare")
    rows = []
    for a, b in pairs:
        paths = check_comparable([a, b])
        if a.cv is not None:
            test, only_a, only_b = _cv_pair(a, b), None, None
        else:
            test, only_a, only_b = _run_pair(a, b, paths)
        rows.append(
            {"a": a.name, "b": b.name, "n": len(paths), "units": test.units, "test": test.method}
            | {"difference": test.difference, "p_value": test.p_value, "only_a_right": only_a}
            | {"only_b_right": only_b, "_test": test}
        )
    rejected, adjusted, levels = holm_levels([row["p_value"] for row in rows], alpha)
    for row, reject, p_holm, level in zip(rows, rejected, adjusted, levels, strict=True):
        confidence = 1.0 - float(level)
        low, high = row.pop("_test").interval(confidence)
        row.update(ci_low=low, ci_high=high, ci_level=confidence, p_holm=float(p_holm))
        row["verdict"] = verdict_words(row["a"], row["b"], row["difference"], bool(reject))
    columns = ["a", "b", "n", "units", "test", "difference", "ci_low", "ci_high", "ci_level", "p_value", "p_holm"]
    columns += ["only_a_right", "only_b_right", "verdict"]
    frame = pd.DataFrame(rows)[columns]
    if pairs[0][0].cv is not None:
        frame = frame.drop(columns=["only_a_right", "only_b_right"])
    return frame


def best_configuration(summary: pd.DataFrame, pairs: pd.DataFrame) -> str | None:
    """The configuration the rule calls better than every other one, or None when no single winner is supported."""
    for name in summary["configuration"]:
        mine = pairs[(pairs["a"] == name) | (pairs["b"] == name)]
        wins = [
            row.verdict == verdict_words(row.a, row.b, 1.0 if row.a == name else -1.0, True)
            for row in mine.itertuples()
        ]
        if wins and all(wins):
            return str(name)
    return None


def verdict_sentence(pairs: pd.DataFrame, winner: str | None) -> str:
    """One sentence that says exactly which pairs differ, consistent with the table and the winner."""
    count = len(pairs)
    correction = f"Holm's correction over {count} pair{'s' if count != 1 else ''}"
    differing = [row.verdict for row in pairs.itertuples() if row.verdict != NOT_DISTINGUISHABLE]
    if winner is not None:
        return f"{winner} is better than every other configuration at 95% ({correction})."
    if differing:
        rest = count - len(differing)
        return f"No configuration beats all others; {'; '.join(differing)} ({correction})" + (
            f"; the other {rest} pair{'s are' if rest != 1 else ' is'} not distinguishable." if rest else "."
        )
    return f"No pair differs: {'both configurations are' if count == 1 else f'all {count} pairs are'} " + (
        f"not distinguishable at 95% ({correction})."
    )


@dataclass
class Comparison:
    """The tables and the verdict of one comparison."""

    summary: pd.DataFrame
    pairs: pd.DataFrame
    winner: str | None
    sentence: str


def compare_items(items: Sequence[Evaluated]) -> Comparison:
    pairs = pairwise_table(items)
    summary = summary_table(items)
    winner = best_configuration(summary, pairs)
    return Comparison(summary, pairs, winner, verdict_sentence(pairs, winner))


def compare_paths(paths: Sequence[Path], names: Sequence[str] | None = None) -> Comparison:
    """`plantlib compare`: CV or run directories, optionally with display names."""
    chosen = list(names) if names is not None else [None] * len(paths)
    return compare_items([load_evaluated(Path(p), n) for p, n in zip(paths, chosen, strict=True)])


def _with_ci(value: float, low: float, high: float) -> str:
    return f"{value:.3f} ({low:.3f}–{high:.3f})"


def cv_table(cv_dirs: Sequence[Path], measure_speed: bool = True) -> pd.DataFrame:
    """One compact row per cross-validated configuration: pooled scores with CIs, size, time, inference speed.

    Scores are strings "value (low–high)" so the table stays narrow enough for a report page.
    """
    from plantlib.inference.predictor import inference_ms_per_image

    items = [load_evaluated(Path(d)) for d in cv_dirs]
    summary = summary_table(items)
    rows = []
    for cv_dir, item, score in zip(cv_dirs, items, summary.itertuples(), strict=True):
        saved = read_cv_info(cv_dir)
        fold_runs = CvDir(Path(cv_dir)).fold_runs()
        infos = [run.read_info() for run in fold_runs]
        rows.append(
            {
                "backbone": saved["config"]["backbone"],
                "accuracy (95% CI)": _with_ci(score.accuracy, score.accuracy_ci_low, score.accuracy_ci_high),
                "macro F1 (95% CI)": _with_ci(score.f1, score.f1_ci_low, score.f1_ci_high),
                "n": score.n,
                "folds": saved["folds"],
                "params (M)": round(infos[0]["parameters"]["total"] / 1e6, 2),
                "size (MB)": round(infos[0]["model_size_mb"], 1),
                "train s/fold": round(float(np.mean([i.get("train_seconds", 0.0) for i in infos])), 1),
                "ms/image": round(inference_ms_per_image(fold_runs[0].path), 1) if measure_speed else float("nan"),
                "name": item.name,
            }
        )
    return pd.DataFrame(rows)
