"""The verdict rule, stated once: which test decides "A differs from B", and the interval that agrees with it.

Rule: a difference is claimed only when its test rejects "no difference" at 5% after Holm's correction over
every pair shown together; otherwise the pair is "not distinguishable at 95%". A configuration is named the
winner only when it beats every other one under that rule.

The test depends on what is compared:
- cross-validated recipes (the unit is a fold of a repeat): the corrected resampled t-test of Nadeau & Bengio
  (2003), as repeated k-fold in Bouckaert & Frank (2004), on per-fold accuracy differences. Its variance term
  (1/(k·r) + n_test/n_train) accounts for overlapping training sets, so training randomness (seed, augmentation,
  order) and the choice of folds count, not only which images were held out.
- two fixed models on one split (the unit is an image): McNemar's exact test on the images exactly one of them
  gets right.
Each pair's interval is computed at the confidence level Holm's procedure used for it (see `holm_levels`), from
the same distribution as its p-value, so an interval excludes 0 exactly when the verdict claims a difference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from plantlib.evaluation.metrics import proportion_ci

ALPHA = 0.05
NOT_DISTINGUISHABLE = "not distinguishable at 95%"
RULE = (
    "A difference is claimed only when its test rejects at 5% after Holm's correction over all pairs shown "
    "(corrected resampled t-test on per-fold differences for cross-validations, exact McNemar for runs on one "
    "split); intervals are at the level Holm used for each pair, so they exclude 0 exactly when a difference "
    "is claimed."
)


@dataclass(frozen=True)
class PairTest:
    """One pair's raw test: the mean difference A − B, its p-value, and how to invert the test into an interval."""

    difference: float
    p_value: float
    method: str  # "corrected t-test" or "McNemar exact"
    units: int  # folds × repeats, or images
    interval: Callable[[float], tuple[float, float]]  # confidence level -> (low, high), inverting the same test


def corrected_t_test(differences: Sequence[float], test_train_ratio: float) -> PairTest:
    """Nadeau–Bengio corrected resampled t-test of per-fold differences (k folds × r repeats, df = k·r − 1).

    `test_train_ratio` is n_test / n_train of one fold (≈ 1 / (k − 1)). The naive t-test divides the variance by
    k·r only and rejects far too often, because the folds' training sets overlap.
    """
    values = np.asarray(differences, dtype=np.float64)
    units = len(values)
    if units < 2:
        raise ValueError("the corrected t-test needs two or more folds")
    mean = float(values.mean())
    variance = float(values.var(ddof=1))
    scale = float(np.sqrt((1.0 / units + test_train_ratio) * variance))
    df = units - 1
    # With no spread (every fold differs by the same amount, usually 0) the test is decided by the mean alone.
    constant = 1.0 if mean == 0.0 else 0.0
    p_value = constant if scale == 0.0 else float(2 * stats.t.sf(abs(mean) / scale, df))

    def interval(confidence: float) -> tuple[float, float]:
        half = float(stats.t.ppf(0.5 + confidence / 2, df)) * scale
        return mean - half, mean + half

    return PairTest(mean, p_value, "corrected t-test", units, interval)


def mcnemar_test(only_a_right: int, only_b_right: int, n: int) -> PairTest:
    """Exact McNemar: a two-sided binomial test of the discordant images (statsmodels' `mcnemar(exact=True)`).

    The interval for accuracy(A) − accuracy(B) = (b − c)/n inverts the same exact test: a Clopper–Pearson interval
    for the share b/(b + c) of discordant images A gets right, scaled by (b + c)/n (conditional on b + c).
    """
    from statsmodels.stats.contingency_tables import mcnemar

    b, c = int(only_a_right), int(only_b_right)
    discordant = b + c
    p_value = 1.0 if discordant == 0 else float(mcnemar([[0, b], [c, 0]], exact=True).pvalue)

    def interval(confidence: float) -> tuple[float, float]:
        if discordant == 0:
            return 0.0, 0.0
        low, high = proportion_ci(b, discordant, confidence)
        return discordant / n * (2 * low - 1), discordant / n * (2 * high - 1)

    return PairTest((b - c) / n, p_value, "McNemar exact", n, interval)


def holm_levels(p_values: Sequence[float], alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Holm's step-down procedure: (rejected, adjusted p-values, per-pair alpha for intervals).

    The pair at rank j (p-values ascending, m pairs) is tested at alpha/(m − j + 1) while every smaller p-value was
    rejected; pairs after the first acceptance get that step's level. An interval at 1 − level then excludes 0
    exactly for the rejected pairs.
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return np.zeros(0, bool), np.zeros(0), np.zeros(0)
    order = np.argsort(p, kind="stable")
    # Holm's adjusted p-values: (m − rank)·p of the sorted p-values, made monotone (statsmodels' `multipletests`
    # gives the same numbers, a test checks, but runs a full garbage collection on every call).
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
    rejected = adjusted <= alpha
    levels = np.empty(m)
    stopped_at: float | None = None
    for rank, index in enumerate(order):
        step = alpha / (m - rank)
        if stopped_at is None and not rejected[index]:
            stopped_at = step
        levels[index] = step if stopped_at is None else stopped_at
    return rejected, adjusted, levels


def verdict_words(name_a: str, name_b: str, difference: float, rejected: bool) -> str:
    if not rejected:
        return NOT_DISTINGUISHABLE
    return f"{name_a} {'better' if difference > 0 else 'worse'} than {name_b}"
