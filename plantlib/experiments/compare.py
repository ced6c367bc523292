"""Is A better than B? Paired comparisons of configurations evaluated on the same images.

Each configuration is a cross-validation directory (its pooled out-of-fold predictions) or a run directory
(its test-split predictions). Pairs are compared image by image: the accuracy difference with a paired
bootstrap 95% interval, and McNemar's exact test on the images exactly one of them gets right. A difference is
called only when its interval excludes zero; otherwise the verdict says "not distinguishable at 95%".
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from plantlib.errors import PlantlibError
from plantlib.evaluate import class_columns, compute_metrics
from plantlib.experiments.cv import OOF_FILE, pooled_predictions
from plantlib.io import read_json
from plantlib.runs import is_cv_dir, read_cv_info, read_run_info

NOT_DISTINGUISHABLE = "not distinguishable at 95%"


@dataclass
class Evaluated:
    """One configuration's predictions on a set of images, with a name for tables."""

    name: str
    predictions: pd.DataFrame  # path, true, predicted, p_<class>...
    source: Path


def load_evaluated(path: Path, name: str | None = None) -> Evaluated:
    """A CV directory's pooled out-of-fold predictions, or a run directory's test-split predictions."""
    path = Path(path)
    if is_cv_dir(path):
        oof = pd.read_csv(path / OOF_FILE)
        predictions = pooled_predictions(oof, class_columns(oof))
        config = read_cv_info(path)["config"]
    elif (path / "predictions.csv").is_file():  # a run, or an ensemble's evaluation (no config of its own)
        predictions = pd.read_csv(path / "predictions.csv")
        config = read_json(path / "config.json")  # {} when missing
        if not config:
            return Evaluated(name or ensemble_name(path), predictions, path)
    else:
        raise PlantlibError(f"{path} is neither a cross-validation directory nor a finished run directory")
    return Evaluated(name or configuration_name(config, path), predictions, path)


def ensemble_name(path: Path) -> str:
    """An ensemble's evaluation is named after what it averages: a CV's fold models, or `ensemble (folder)`."""
    if is_cv_dir(path.parent):
        config = read_cv_info(path.parent)["config"]
        return f"fold ensemble of {configuration_name(config, path.parent)}"
    return f"ensemble ({path.name})"


# Where and how a run executes, not what it learns: left out of a configuration's name.
_NOT_RECIPE = {
    "data_dir",
    "split_file",
    "new_split",
    "output_dir",
    "device",
    "precision",
    "num_workers",
    "tracking",
    "tracking_uri",
    "experiment",
    "tracking_parent",
    "backbone",
    "max_batches",
    "fast",
}


def configuration_name(config: dict, path: Path, most: int = 3) -> str:
    """ "backbone, field=value… (folder)": the recipe fields that differ from the defaults tell two CVs apart."""
    from plantlib.config import RunConfig

    defaults = RunConfig().to_dict()
    changed = [
        f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in config.items()
        if key in defaults and key not in _NOT_RECIPE and value != defaults[key]
    ]
    shown = ", ".join([str(config.get("backbone", "?")), *changed[:most]]) + (" …" if len(changed) > most else "")
    return f"{shown} ({path.name})"


def paired_bootstrap_ci(
    correct_a: np.ndarray, correct_b: np.ndarray, n_bootstrap: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of accuracy(A) - accuracy(B), resampling images (the same ones for both)."""
    difference = correct_a.astype(np.float64) - correct_b.astype(np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(difference), size=(n_bootstrap, len(difference)))
    means = difference[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def mcnemar_exact_p(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value: a binomial test on the images exactly one of A and B gets right."""
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def verdict(name_a: str, name_b: str, ci: tuple[float, float]) -> str:
    if ci[0] > 0:
        return f"{name_a} better than {name_b}"
    if ci[1] < 0:
        return f"{name_a} worse than {name_b}"
    return NOT_DISTINGUISHABLE


def _correct(evaluated: Evaluated, paths: list[str]) -> np.ndarray:
    frame = evaluated.predictions.set_index("path").loc[paths]
    return (frame["true"] == frame["predicted"]).to_numpy()


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


def summary_table(items: Sequence[Evaluated]) -> pd.DataFrame:
    """Per configuration: n, accuracy and macro F1 with their 95% CIs."""
    rows = []
    for item in items:
        classes = class_columns(item.predictions)
        y_true = item.predictions["true"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        metrics = compute_metrics(y_true, item.predictions[[f"p_{c}" for c in classes]].to_numpy(), classes)
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


def pairwise_table(items: Sequence[Evaluated], n_bootstrap: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """For each pair: accuracy difference, its paired-bootstrap 95% CI, McNemar's exact p, and the verdict."""
    if len(items) < 2:
        raise PlantlibError("compare needs two or more configurations")
    paths = _same_images(items)
    rows = []
    for a, b in itertools.combinations(items, 2):
        correct_a, correct_b = _correct(a, paths), _correct(b, paths)
        ci = paired_bootstrap_ci(correct_a, correct_b, n_bootstrap, seed)
        rows.append(
            {
                "a": a.name,
                "b": b.name,
                "n": len(paths),
                "difference": float(correct_a.mean() - correct_b.mean()),
                "ci_low": ci[0],
                "ci_high": ci[1],
                "only_a_right": int(np.sum(correct_a & ~correct_b)),
                "only_b_right": int(np.sum(~correct_a & correct_b)),
                "mcnemar_p": mcnemar_exact_p(correct_a, correct_b),
                "verdict": verdict(a.name, b.name, ci),
            }
        )
    return pd.DataFrame(rows)


def best_configuration(summary: pd.DataFrame, pairs: pd.DataFrame) -> str | None:
    """The configuration better than every other one at 95%, or None when no single winner is supported."""
    for name in summary["configuration"]:
        mine = pairs[(pairs["a"] == name) | (pairs["b"] == name)]
        wins = [(row.a == name and row.ci_low > 0) or (row.b == name and row.ci_high < 0) for row in mine.itertuples()]
        if wins and all(wins):
            return str(name)
    return None


def _with_ci(value: float, low: float, high: float) -> str:
    return f"{value:.3f} ({low:.3f}–{high:.3f})"


def cv_table(cv_dirs: Sequence[Path], measure_speed: bool = True) -> pd.DataFrame:
    """One compact row per cross-validated configuration: pooled scores with CIs, size, time, inference speed.

    Scores are strings "value (low–high)" so the table stays narrow enough for a report page.
    """
    from plantlib.inference import inference_ms_per_image

    items = [load_evaluated(Path(d)) for d in cv_dirs]
    summary = summary_table(items)
    rows = []
    for cv_dir, item, score in zip(cv_dirs, items, summary.itertuples(), strict=True):
        saved = read_cv_info(cv_dir)
        fold_runs = sorted(p for p in Path(cv_dir).iterdir() if (p / "run.json").is_file())
        infos = [read_run_info(run) for run in fold_runs]
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
                "ms/image": round(inference_ms_per_image(fold_runs[0]), 1) if measure_speed else float("nan"),
                "name": item.name,
            }
        )
    return pd.DataFrame(rows)
