"""Split-conformal prediction sets: every class the model finds plausible enough, at a chosen coverage.

The score of a labelled image is 1 − p(its true class) (the LAC or "hinge" score). A set holds each class c with
1 − p(c) within the finite-sample quantile of the calibration images' scores, at level ceil((n + 1)·coverage)/n:
when calibration and new images are exchangeable, the true class is in the set at least `coverage` of the time
(on average over calibration sets; Vovk et al. 2005, Angelopoulos & Bates 2021). Too few calibration images for
the level asked (n < coverage / (1 − coverage)) gives every class: the guarantee cannot be met otherwise.

The rule is a few lines here rather than crepes' `ConformalClassifier`: crepes keeps a class when its p-value is
>= 1 − coverage, not >, so where (n + 1)·coverage is a whole number (n = 19 at 90%) it keeps one rank more than
the rule and covers 95% where 90% was asked. Everywhere else the two agree (a test checks).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from plantlib.errors import ConfigError
from plantlib.evaluation.metrics import bootstrap_resamples, proportion_ci, with_ci

DEFAULT_COVERAGE = 0.9
SET_SEPARATOR = "|"  # between the class names of one set in a table: "dandelion|grass"


def check_coverage(coverage: float) -> float:
    """`coverage` as a float strictly between 0 and 1, or a ConfigError saying so."""
    if not isinstance(coverage, (int, float)) or not 0 < coverage < 1:
        raise ConfigError(f"coverage={coverage!r} must lie strictly between 0 and 1 (0.9 asks for 90% sets)")
    return float(coverage)


def lac_scores(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each labelled image's score, 1 − p(true class): high when the model doubts the truth."""
    probs = np.asarray(probs, dtype=np.float64)
    return 1.0 - probs[np.arange(len(probs)), np.asarray(targets, dtype=np.int64)]


def conformal_threshold(scores: np.ndarray, coverage: float = DEFAULT_COVERAGE) -> float:
    """The largest score a class may have and stay in a set: the ceil((n + 1)·coverage)-th smallest calibration
    score (infinity when that rank exceeds n, i.e. every class is kept)."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    rank = math.ceil((len(scores) + 1) * check_coverage(coverage) - 1e-9)  # 20 × 0.9 must not round up to 19
    return float("inf") if rank > len(scores) else float(scores[rank - 1])


def prediction_sets(scores: np.ndarray, probs: np.ndarray, coverage: float = DEFAULT_COVERAGE) -> np.ndarray:
    """Boolean (N, C): class c is in image i's set. `scores` are the calibration images' `lac_scores`."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0:
        raise ConfigError("conformal sets need the scores of one or more calibration images")
    return 1.0 - np.asarray(probs, dtype=np.float64) <= conformal_threshold(scores, coverage)


def set_labels(sets: np.ndarray, class_names: list[str]) -> list[str]:
    """Each set as text, its class names in model order joined by `SET_SEPARATOR` ("" for an empty set)."""
    return [SET_SEPARATOR.join(name for name, kept in zip(class_names, row, strict=True) if kept) for row in sets]


def _coverage_and_size(sets: np.ndarray, targets: np.ndarray, n_bootstrap: int, seed: int) -> dict[str, Any]:
    """Coverage (exact interval) and mean set size (percentile bootstrap) of some images' sets."""
    n = len(targets)
    covered = sets[np.arange(n), targets]
    sizes = sets.sum(axis=1).astype(np.float64)
    means = [sizes[picks].mean(axis=1) for picks in bootstrap_resamples(n, n_bootstrap, seed)]
    size_ci = [float(x) for x in np.percentile(np.concatenate(means), [2.5, 97.5])] if means else None
    return {
        "n": n,
        "coverage": float(covered.mean()),
        "coverage_ci95": list(proportion_ci(int(covered.sum()), n)),
        "mean_set_size": float(sizes.mean()),
        "mean_set_size_ci95": size_ci,
        "single_label_share": float(np.mean(sizes == 1)),
        "empty_share": float(np.mean(sizes == 0)),
    }


def set_metrics(
    sets: np.ndarray,
    targets: np.ndarray,
    class_names: list[str],
    coverage: float,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Empirical coverage and mean set size on labelled images, with 95% intervals, overall and per true class.

    Coverage is a proportion (exact Clopper–Pearson interval); the mean set size has a percentile bootstrap one.
    The guarantee is marginal: a single class may be covered less often than `coverage`.
    """
    sets, targets = np.asarray(sets, dtype=bool), np.asarray(targets, dtype=np.int64)
    per_class = {
        name: _coverage_and_size(sets[targets == k], targets[targets == k], n_bootstrap, seed)
        for k, name in enumerate(class_names)
        if np.any(targets == k)
    }
    return {
        "target_coverage": float(coverage),
        "score": "lac",
        **_coverage_and_size(sets, targets, n_bootstrap, seed),
        "per_class": per_class,
    }


def set_table(summary: dict[str, Any]) -> pd.DataFrame:
    """`set_metrics` as rows (all images, then each class): n, coverage and mean set size with 95% intervals."""
    rows = [("all images", summary), *summary["per_class"].items()]
    return pd.DataFrame(
        [
            {
                "images": name,
                "n": part["n"],
                "coverage": with_ci(part["coverage"], part["coverage_ci95"]),
                "mean set size": with_ci(part["mean_set_size"], part["mean_set_size_ci95"]),
                "single-label sets": f"{part['single_label_share']:.3f}",
            }
            for name, part in rows
        ]
    )


def resplit_coverage(
    probs: np.ndarray,
    targets: np.ndarray,
    coverage: float = DEFAULT_COVERAGE,
    splits: int = 200,
    calibration_share: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """Coverage and set size averaged over `splits` random calibration/test divisions of labelled images.

    The guarantee is an average over calibration sets, so one division says little; the mean over many shows
    whether it holds (at least `coverage`; at most coverage + 1/(n_cal + 1) without ties). Per true class too.
    """
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets, dtype=np.int64)
    rng = np.random.default_rng(seed)
    n_cal = round(len(targets) * calibration_share)
    if not 0 < n_cal < len(targets):
        raise ConfigError(f"calibration_share={calibration_share} leaves no calibration or no test image")
    covered, sizes, per_class = [], [], {k: ([], []) for k in range(probs.shape[1])}
    for _ in range(splits):
        order = rng.permutation(len(targets))
        cal, test = order[:n_cal], order[n_cal:]
        sets = prediction_sets(lac_scores(probs[cal], targets[cal]), probs[test], coverage)
        hit, size = sets[np.arange(len(test)), targets[test]], sets.sum(axis=1)
        covered.append(hit.mean())
        sizes.append(size.mean())
        for k, (class_hits, class_sizes) in per_class.items():
            mine = targets[test] == k
            if mine.any():
                class_hits.append(hit[mine].mean())
                class_sizes.append(size[mine].mean())
    return {
        "splits": splits,
        "n_calibration": n_cal,
        "n_test": len(targets) - n_cal,
        **_spread("coverage", covered),
        **_spread("mean_set_size", sizes),
        "per_class": {k: {**_spread("coverage", h), **_spread("mean_set_size", s)} for k, (h, s) in per_class.items()},
    }


def _spread(name: str, values: list[float]) -> dict[str, float]:
    """Mean over re-splits, its standard error and the 2.5–97.5% range of single re-splits."""
    array = np.asarray(values, dtype=np.float64)
    low, high = np.percentile(array, [2.5, 97.5]) if len(array) else (np.nan, np.nan)
    sem = float(array.std(ddof=1) / np.sqrt(len(array))) if len(array) > 1 else float("nan")
    return {name: float(array.mean()), f"{name}_sem": sem, f"{name}_range95": [float(low), float(high)]}
