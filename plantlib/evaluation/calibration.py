"""Temperature scaling: one number T that divides the logits, so that a probability of 0.9 is right 9 times in 10.

T is fitted on held-out images (a run's validation split, or out-of-fold predictions), never on the test split,
by minimising their mean negative log likelihood over log T (Guo et al. 2017; scikit-learn's
`CalibratedClassifierCV(method="temperature")` fits the same thing, a test checks they agree). Dividing every
logit by one positive number never changes which class is largest: accuracy, the confusion matrix and every
argmax stay as they were; only the confidence moves (T > 1 softens an over-confident model, T < 1 sharpens an
under-confident one, e.g. after MixUp/CutMix).

The conformal scores (`plantlib.evaluation.conformal`) are computed on the same validation images, from the
calibrated probabilities. T is fitted first and is one monotone parameter: with two classes the LAC sets do not
depend on it at all (a class's score and the threshold both order images by the logit margin, which T only
rescales), so the split-conformal guarantee holds exactly; with more classes T's fit on the same n images can
move coverage by an amount that shrinks with n, small beside the rule's own 1/(n + 1) slack.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from plantlib.errors import PlantlibError
from plantlib.evaluation.conformal import (
    DEFAULT_COVERAGE,
    conformal_threshold,
    lac_scores,
    prediction_sets,
    set_metrics,
)
from plantlib.evaluation.metrics import (
    bootstrap_resamples,
    expected_calibration_error,
    per_image_log_loss,
    probability_intervals,
    with_ci,
)

# The rule behind every "calibration changed the log loss" sentence, stated once.
CALIBRATION_RULE = (
    "Calibration is said to change the log loss only when the 95% paired bootstrap interval of the mean per-image "
    "difference (calibrated − uncalibrated, same test images) excludes 0; otherwise no change is distinguishable."
)
NO_CHANGE = "no log-loss change distinguishable at 95%"
LOG_TEMPERATURE_BOUNDS = (-5.0, 5.0)  # T from 0.0067 to 148: far beyond any network's need


class CalibrationError(PlantlibError):
    """Temperature scaling cannot be fitted on these images (the message says why and what to do)."""


def _mean_nll(log_temperature: float, logits: np.ndarray, targets: np.ndarray) -> float:
    scaled = log_softmax(logits * np.exp(-log_temperature), axis=1)
    return float(-scaled[np.arange(len(targets)), targets].mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The T > 0 that minimises the mean negative log likelihood of softmax(logits / T) on these images.

    When the model ranks every image's true class strictly first, the likelihood keeps rising as T shrinks and no
    finite T is best: that raises `CalibrationError` (such images cannot say how over-confident the model is).
    """
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(targets) or len(targets) == 0:
        raise CalibrationError(f"need (N, C) logits and N targets, N >= 1; got {logits.shape} and {targets.shape}")
    others = np.where(np.eye(logits.shape[1], dtype=bool)[targets], -np.inf, logits)
    if np.all(logits[np.arange(len(targets)), targets] > others.max(axis=1)):
        raise CalibrationError(
            f"every one of the {len(targets)} images is classified right, so no finite temperature fits best; "
            "calibrate on more (or harder) held-out images"
        )
    best = minimize_scalar(
        _mean_nll, bounds=LOG_TEMPERATURE_BOUNDS, args=(logits, targets), method="bounded", options={"xatol": 1e-9}
    )
    return float(np.exp(best.x))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities softmax(logits / T), float64 (N, C)."""
    return softmax(np.asarray(logits, dtype=np.float64) / float(temperature), axis=1)


def uncalibrated_probabilities(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits) back from calibrated probabilities softmax(logits / T): softmax(T · log p) is exact,
    because log p differs from logits / T by one constant per image (tiny probabilities are floored at 1e-300)."""
    return softmax(float(temperature) * np.log(np.maximum(np.asarray(probs, dtype=np.float64), 1e-300)), axis=1)


def temperature_of(calibration: dict[str, Any] | None) -> float:
    """The temperature a checkpoint's `calibration` entry holds; 1 (no change) when it has none."""
    return float((calibration or {}).get("temperature", 1.0))


def temperature_calibration(logits: np.ndarray, targets: np.ndarray, fitted_on: str = "val") -> dict[str, Any]:
    """What a checkpoint stores under `calibration`: T fitted on these held-out images and their conformal scores.

    The scores (1 − calibrated p(true class), one per image) let `predict --coverage` build sets at any level
    without the data. Images all classified right leave T at 1 (`note` says why); the scores are kept.
    """
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    entry: dict[str, Any] = {"method": "temperature", "fitted_on": fitted_on, "n": len(targets)}
    try:
        entry["temperature"] = fit_temperature(logits, targets)
    except CalibrationError as error:
        entry["temperature"], entry["note"] = 1.0, str(error)
    scores = lac_scores(apply_temperature(logits, entry["temperature"]), targets)
    return entry | {"score": "lac", "conformal_scores": [float(s) for s in scores]}


def log_loss_verdict(
    y_true: np.ndarray, before: np.ndarray, after: np.ndarray, n_bootstrap: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Paired comparison of two probability sets on the same images under `CALIBRATION_RULE`."""
    difference = per_image_log_loss(y_true, after) - per_image_log_loss(y_true, before)
    means = [difference[picks].mean(axis=1) for picks in bootstrap_resamples(len(difference), n_bootstrap, seed)]
    low, high = (float(x) for x in np.percentile(np.concatenate(means), [2.5, 97.5]))
    claimed = low > 0 or high < 0
    mean = float(difference.mean())
    words = NO_CHANGE
    if claimed:
        words = f"calibration {'lowers' if mean < 0 else 'raises'} the log loss by {abs(mean):.3f}"
    return {
        "n": len(difference),
        "difference": mean,
        "ci95": [low, high],
        "claimed": bool(claimed),
        "verdict": words,
        "method": "paired percentile bootstrap of the mean per-image difference (after − before)",
    }


def _probability_summary(y_true: np.ndarray, probs: np.ndarray, n_bootstrap: int, seed: int) -> dict[str, Any]:
    ece, reliability = expected_calibration_error(y_true, probs)
    return {
        "ece": ece,
        "log_loss": float(per_image_log_loss(y_true, probs).mean()),
        "ci95": probability_intervals(y_true, probs, n_bootstrap, seed),
        "reliability": reliability,
    }


def compare_calibration(
    y_true: np.ndarray, before: np.ndarray, after: np.ndarray, n_bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """ECE and log loss before and after calibration on the same images, each with its 95% bootstrap interval
    (as `compute_metrics` makes them), and the paired log-loss verdict."""
    y_true = np.asarray(y_true, dtype=np.int64)
    return {
        "n": len(y_true),
        "before": _probability_summary(y_true, before, n_bootstrap, seed),
        "after": _probability_summary(y_true, after, n_bootstrap, seed),
        "log_loss_change": log_loss_verdict(y_true, before, after, max(n_bootstrap, 1), seed),
        "rule": CALIBRATION_RULE,
    }


def calibration_metrics(
    y_true: np.ndarray,
    raw_probs: np.ndarray,
    probs: np.ndarray,
    calibration: dict[str, Any] | None,
    class_names: list[str],
    coverage: float = DEFAULT_COVERAGE,
) -> dict[str, Any]:
    """What an evaluation adds to its metrics when the model is calibrated: `uncalibrated` (ECE, log loss, CIs,
    reliability), `calibration` (T, where it was fitted, the paired verdict) and `prediction_sets` (coverage and
    mean set size at `coverage`, with CIs, per class) when the checkpoint holds conformal scores."""
    if not calibration:
        return {}
    comparison = compare_calibration(y_true, raw_probs, probs)
    stored = {key: value for key, value in calibration.items() if key != "conformal_scores"}
    extra: dict[str, Any] = {
        "uncalibrated": comparison["before"],
        "calibration": stored | {"log_loss_change": comparison["log_loss_change"]},
    }
    scores = calibration.get("conformal_scores")
    if scores:
        sets = prediction_sets(np.asarray(scores), probs, coverage)
        extra["prediction_sets"] = set_metrics(sets, y_true, class_names, coverage) | {
            "threshold": conformal_threshold(np.asarray(scores), coverage),
            "n_calibration": len(scores),
        }
    return extra


def calibration_table(before: dict[str, Any], after: dict[str, Any], n: int) -> pd.DataFrame:
    """ECE and log loss before and after calibration, with 95% intervals and n, one row each."""
    rows = []
    for label, key in (("ECE", "ece"), ("log loss", "log_loss")):
        rows.append(
            {
                "metric": label,
                "n": n,
                "uncalibrated": with_ci(before[key], (before.get("ci95") or {}).get(key)),
                "calibrated": with_ci(after[key], (after.get("ci95") or {}).get(key)),
            }
        )
    return pd.DataFrame(rows)


def calibration_lines(metrics: dict[str, Any]) -> list[str]:
    """Terminal lines for an evaluation's calibration (before → after, the verdict) and its prediction sets."""
    calibration, before = metrics["calibration"], metrics["uncalibrated"]
    change = calibration["log_loss_change"]
    low, high = change["ci95"]
    lines = [
        f"calibration: temperature {calibration['temperature']:.3f} fitted on {calibration['n']} "
        f"{calibration['fitted_on']} images; n={metrics['n']}",
        f"  ECE {with_ci(before['ece'], before['ci95'].get('ece'))} uncalibrated → "
        f"{with_ci(metrics['ece'], (metrics.get('ci95') or {}).get('ece'))}",
        f"  log loss {with_ci(before['log_loss'], before['ci95'].get('log_loss'))} uncalibrated → "
        f"{with_ci(metrics['log_loss'], (metrics.get('ci95') or {}).get('log_loss'))}: {change['verdict']} "
        f"(difference {change['difference']:+.3f}, 95% CI {low:+.3f} to {high:+.3f})",
    ]
    sets = metrics.get("prediction_sets")
    if sets:
        lines.append(
            f"{sets['target_coverage']:.0%} prediction sets: "
            f"coverage {with_ci(sets['coverage'], sets['coverage_ci95'])}, "
            f"mean set size {with_ci(sets['mean_set_size'], sets['mean_set_size_ci95'])}, "
            f"single label {sets['single_label_share']:.3f}; n={sets['n']}"
        )
    return lines
