"""Split-conformal prediction sets on synthetic scores: the finite-sample rule, its guarantee, and the summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import softmax

from plantlib.errors import ConfigError
from plantlib.evaluation.conformal import (
    check_coverage,
    conformal_threshold,
    lac_scores,
    prediction_sets,
    resplit_coverage,
    set_labels,
    set_metrics,
    set_table,
)
from plantlib.evaluation.metrics import proportion_ci


def calibrated_draw(rng: np.random.Generator, n: int, classes: int = 3, scale: float = 2.0):
    """A model that is calibrated by construction: each label is drawn from the probabilities it reports."""
    probs = softmax(rng.normal(scale=scale, size=(n, classes)), axis=1)
    labels = (probs.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return probs, labels


def test_sets_keep_every_class_within_the_finite_sample_quantile() -> None:
    rng = np.random.default_rng(1)
    probs, labels = calibrated_draw(rng, 120)
    scores = lac_scores(probs[:40], labels[:40])
    assert scores == pytest.approx(1 - probs[np.arange(40), labels[:40]])
    threshold = conformal_threshold(scores, 0.9)
    assert threshold == np.sort(scores)[math.ceil(41 * 0.9) - 1]  # the 37th smallest of 40
    sets = prediction_sets(scores, probs[40:], 0.9)
    assert sets.shape == (80, 3) and sets.dtype == bool
    assert np.array_equal(sets, 1 - probs[40:] <= threshold)
    assert set_labels(np.array([[True, False, True], [False, False, False]]), ["a", "b", "c"]) == ["a|c", ""]


@pytest.mark.parametrize(("n_cal", "same_as_crepes"), [(40, True), (25, True), (19, False)])
def test_sets_match_crepes_except_where_it_keeps_one_rank_more(n_cal: int, same_as_crepes: bool) -> None:
    """crepes keeps a class when its p-value >= 1 - coverage; the rule says >. They differ only where
    (n + 1) * coverage is a whole number (19 + 1 images at 90%), where crepes' sets are larger."""
    from crepes import ConformalClassifier
    from crepes.extras import hinge

    probs, labels = calibrated_draw(np.random.default_rng(n_cal), n_cal + 200)
    scores = lac_scores(probs[:n_cal], labels[:n_cal])
    assert scores == pytest.approx(hinge(probs[:n_cal], np.arange(3), labels[:n_cal]))
    ours = prediction_sets(scores, probs[n_cal:], 0.9)
    theirs = ConformalClassifier().fit(scores).predict_set(1 - probs[n_cal:], confidence=0.9, smoothing=False)
    assert np.array_equal(ours, theirs.astype(bool)) is same_as_crepes
    assert np.all(ours <= theirs.astype(bool))
    if n_cal == 19:
        assert conformal_threshold(scores, 0.9) == np.sort(scores)[17]  # ceil(20 * 0.9) = 18th smallest, not 19th


def test_too_few_calibration_images_give_every_class() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5])  # ceil(6 * 0.9) = 6 > 5: no finite threshold meets 90%
    assert conformal_threshold(scores, 0.9) == float("inf")
    assert prediction_sets(scores, np.array([[0.99, 0.01], [0.5, 0.5]]), 0.9).all()
    assert not prediction_sets(scores, np.array([[0.99, 0.01]]), 0.5)[0, 1]


@pytest.mark.parametrize("coverage", [0.8, 0.9])
def test_coverage_holds_the_guarantee_over_many_seeded_draws(coverage: float) -> None:
    """With continuous scores the mean coverage over calibration draws is exactly ceil((n+1)c)/(n+1): at least c,
    and above what the naive quantile (level c, no +1) gives, which a wrong rule would land near."""
    rng = np.random.default_rng(7)
    n_cal, n_test, draws = 20, 40, 1500
    covered, sizes = [], []
    for _ in range(draws):
        probs, labels = calibrated_draw(rng, n_cal + n_test)
        sets = prediction_sets(lac_scores(probs[:n_cal], labels[:n_cal]), probs[n_cal:], coverage)
        covered.append(sets[np.arange(n_test), labels[n_cal:]].mean())
        sizes.append(sets.sum(axis=1).mean())
    mean, sem = float(np.mean(covered)), float(np.std(covered) / np.sqrt(draws))
    expected = math.ceil((n_cal + 1) * coverage) / (n_cal + 1)
    assert mean >= coverage - 3 * sem
    assert abs(mean - expected) < 4 * sem + 0.002, (mean, expected, sem)
    naive = math.ceil(n_cal * coverage) / (n_cal + 1)
    assert expected - naive > 8 * sem  # the test can tell the two rules apart
    assert 1 < np.mean(sizes) < 3


def test_set_metrics_report_coverage_and_size_with_intervals_per_class() -> None:
    sets = np.array([[True, False], [True, True], [False, True], [True, False], [False, True]])
    targets = np.array([0, 1, 0, 0, 1])
    summary = set_metrics(sets, targets, ["ant", "bee"], 0.9, n_bootstrap=200)
    assert summary["n"] == 5 and summary["coverage"] == pytest.approx(4 / 5)
    assert summary["coverage_ci95"] == pytest.approx(list(proportion_ci(4, 5)))
    assert summary["mean_set_size"] == pytest.approx(6 / 5) and summary["single_label_share"] == pytest.approx(0.8)
    low, high = summary["mean_set_size_ci95"]
    assert 1 <= low <= 6 / 5 <= high <= 2
    assert summary["per_class"]["ant"]["n"] == 3 and summary["per_class"]["ant"]["coverage"] == pytest.approx(2 / 3)
    assert summary["per_class"]["bee"]["coverage"] == 1.0
    table = set_table(summary)
    assert table["images"].tolist() == ["all images", "ant", "bee"] and table["n"].tolist() == [5, 3, 2]
    assert table["coverage"].iloc[0].startswith("0.800 (95% CI")


def test_resplits_average_to_the_guarantee() -> None:
    probs, labels = calibrated_draw(np.random.default_rng(3), 120)
    result = resplit_coverage(probs, labels, 0.9, splits=100, seed=0)
    assert result["n_calibration"] == 60 and result["n_test"] == 60
    assert result["coverage"] >= 0.9 - 3 * result["coverage_sem"]
    assert set(result["per_class"]) == {0, 1, 2}
    assert result["mean_set_size"] > 1


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, "0.9"])
def test_a_coverage_outside_zero_to_one_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        check_coverage(bad)  # type: ignore[arg-type]
