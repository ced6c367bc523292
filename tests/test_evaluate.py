"""Metrics on hand-computable cases, the intervals (exact and bootstrap), calibration, predictions and saved files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score
from statsmodels.stats.proportion import proportion_confint
from torch.utils.data import DataLoader, TensorDataset

from plantlib.evaluation.metrics import (
    PROBABILITY_CLIP,
    bootstrap_resamples,
    compute_metrics,
    expected_calibration_error,
    format_metrics,
    metrics_table,
    misclassified,
    predict_probabilities,
    predictions_frame,
    proportion_ci,
    save_evaluation,
)

CLASSES = ["dandelion", "grass"]


def one_hot_probs(predicted: list[int], n_classes: int = 2, confidence: float = 1.0) -> np.ndarray:
    """Probabilities whose argmax is `predicted`, with `confidence` on the chosen class."""
    probs = np.full((len(predicted), n_classes), (1 - confidence) / (n_classes - 1))
    probs[np.arange(len(predicted)), predicted] = confidence
    return probs


def random_case(n: int = 80, n_classes: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes)) + 1.5 * np.eye(n_classes)[y_true]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true, probs


def test_perfect_predictions_get_an_accuracy_interval_that_admits_doubt() -> None:
    """10 right out of 10 is no proof of a perfect model: the exact interval is 0.69-1, not the bootstrap's 1-1."""
    y_true = np.array([0, 1] * 5)
    metrics = compute_metrics(y_true, one_hot_probs(list(y_true)), CLASSES, n_bootstrap=200)
    assert metrics["n"] == 10
    assert metrics["accuracy"] == metrics["precision"] == metrics["recall"] == metrics["f1"] == 1.0
    assert metrics["roc_auc"] == 1.0
    low, high = metrics["ci95"]["accuracy"]
    assert low == pytest.approx(0.6915, abs=1e-4) and high == 1.0
    assert metrics["ci95"]["f1_macro"] == [1.0, 1.0]  # a bootstrap, documented to collapse at the edge
    np.testing.assert_allclose(metrics["ci95"]["log_loss"], [0.0, 0.0], atol=1e-12)
    assert metrics["ci95"]["ece"] == [0.0, 0.0]
    assert metrics["ci95_method"]["accuracy"].startswith("exact")
    assert metrics["ece"] == pytest.approx(0.0)
    assert metrics["confusion_matrix"] == [[5, 0], [0, 5]]


@pytest.mark.parametrize(("correct", "n"), [(10, 10), (0, 10), (1, 2), (57, 60), (333, 340)])
def test_accuracy_interval_is_clopper_pearson(correct: int, n: int) -> None:
    reference = proportion_confint(correct, n, alpha=0.05, method="beta")
    np.testing.assert_allclose(proportion_ci(correct, n), reference, atol=1e-9)
    y_true = np.zeros(n, dtype=int)
    probs = one_hot_probs([0] * correct + [1] * (n - correct), confidence=0.9)
    metrics = compute_metrics(y_true, probs, CLASSES, n_bootstrap=50)
    np.testing.assert_allclose(metrics["ci95"]["accuracy"], reference, atol=1e-9)


def test_accuracy_interval_covers_a_near_perfect_model() -> None:
    """At n = 60 and a true accuracy of 0.98 the old percentile bootstrap covered about 70% of the time."""
    n, p = 60, 0.98
    intervals = np.array([proportion_ci(k, n) for k in range(n + 1)])
    correct = np.random.default_rng(0).binomial(n, p, size=4000)
    covered = (intervals[correct, 0] <= p) & (p <= intervals[correct, 1])
    assert covered.mean() >= 0.93


@pytest.mark.parametrize(
    ("successes", "n", "confidence", "message"),
    [(3, 0, 0.95, "n must"), (11, 10, 0.95, "successes"), (2.5, 10, 0.95, "whole"), (3, 10, 95, "confidence")],
)
def test_proportion_ci_names_the_bad_value(successes: float, n: int, confidence: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        proportion_ci(successes, n, confidence)


def test_log_loss_and_its_interval_clip_probabilities_alike() -> None:
    """Confidently wrong on every image: each costs -log(PROBABILITY_CLIP), in the estimate and every resample."""
    y_true = np.zeros(5, dtype=int)
    metrics = compute_metrics(y_true, one_hot_probs([1] * 5), CLASSES, n_bootstrap=100)
    worst = -np.log(PROBABILITY_CLIP)
    assert metrics["log_loss"] == pytest.approx(worst, rel=1e-12)
    np.testing.assert_allclose(metrics["ci95"]["log_loss"], [worst, worst], rtol=1e-12)


def test_known_confusion_matrix_and_per_class_scores() -> None:
    y_true = np.array([0, 0, 0, 1, 1])
    probs = one_hot_probs([0, 1, 0, 1, 1], confidence=0.9)
    metrics = compute_metrics(y_true, probs, CLASSES, n_bootstrap=0)
    assert metrics["confusion_matrix"] == [[2, 1], [0, 2]]
    np.testing.assert_allclose(metrics["confusion_matrix_normalized"], [[2 / 3, 1 / 3], [0, 1]])
    assert metrics["accuracy"] == pytest.approx(0.8)
    dandelion, grass = metrics["per_class"]["dandelion"], metrics["per_class"]["grass"]
    assert (dandelion["precision"], dandelion["recall"], dandelion["support"]) == (1.0, pytest.approx(2 / 3), 3)
    assert (grass["precision"], grass["recall"], grass["support"]) == (pytest.approx(2 / 3), 1.0, 2)
    assert dandelion["f1"] == pytest.approx(0.8) and grass["f1"] == pytest.approx(0.8)
    assert metrics["f1"] == pytest.approx(0.8)
    assert metrics["ci95"] == {"accuracy": list(proportion_ci(4, 5)), "f1_macro": None, "log_loss": None, "ece": None}
    assert "dandelion" in metrics["classification_report"]
    assert metrics["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.1, 0.9, 0.9, 0.9])))


def test_metrics_are_json_serialisable() -> None:
    y_true, probs = random_case()
    metrics = compute_metrics(y_true, probs, CLASSES, n_bootstrap=50)
    assert json.loads(json.dumps(metrics))["accuracy"] == metrics["accuracy"]


def test_bootstrap_interval_contains_estimate_and_depends_only_on_seed() -> None:
    y_true, probs = random_case(n=120)
    first = compute_metrics(y_true, probs, CLASSES, n_bootstrap=300, seed=1)
    again = compute_metrics(y_true, probs, CLASSES, n_bootstrap=300, seed=1)
    other = compute_metrics(y_true, probs, CLASSES, n_bootstrap=300, seed=2)
    for key, point in (("accuracy", first["accuracy"]), ("f1_macro", first["f1"])):
        low, high = first["ci95"][key]
        assert low <= point <= high
        assert low < high
    assert first["ci95"] == again["ci95"]
    assert first["ci95"] != other["ci95"]


def test_vectorised_bootstrap_matches_sklearn_resample_by_resample() -> None:
    y_true, probs = random_case(n=40, n_classes=3, seed=3)
    y_pred = probs.argmax(axis=1)
    resamples, seed = 60, 7
    picks = np.random.default_rng(seed).integers(0, len(y_true), size=(resamples, len(y_true)))
    f1 = [f1_score(y_true[p], y_pred[p], average="macro", zero_division=0) for p in picks]
    metrics = compute_metrics(y_true, probs, ["a", "b", "c"], n_bootstrap=resamples, seed=seed)
    np.testing.assert_allclose(metrics["ci95"]["f1_macro"], np.percentile(f1, [2.5, 97.5]))


def test_the_bootstrap_draws_the_same_resamples_in_memory_sized_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import plantlib.evaluation.metrics as metrics_module

    whole = np.concatenate(list(bootstrap_resamples(50, 70, seed=4)))
    assert whole.shape == (70, 50) and whole.min() >= 0 and whole.max() < 50
    np.testing.assert_array_equal(whole, np.random.default_rng(4).integers(0, 50, size=(70, 50)))
    monkeypatch.setattr(metrics_module, "_BOOTSTRAP_CELLS_PER_CHUNK", 50 * 30)  # 30 resamples a chunk
    chunks = list(bootstrap_resamples(50, 70, seed=4))
    assert [len(chunk) for chunk in chunks] == [30, 30, 10]
    assert np.concatenate(chunks).shape == (70, 50)


def test_ece_is_zero_when_calibrated_and_the_gap_when_overconfident() -> None:
    y_true = np.array([0] * 8 + [1] * 2)  # 80% right at 80% confidence
    calibrated = one_hot_probs([0] * 10, confidence=0.8)
    ece, reliability = expected_calibration_error(y_true, calibrated)
    assert ece == pytest.approx(0.0)
    assert sum(reliability["count"]) == 10
    overconfident = one_hot_probs([0] * 10, confidence=0.99)
    ece, _ = expected_calibration_error(np.array([0, 1] * 5), overconfident)
    assert ece == pytest.approx(0.49)


def test_reliability_bins_hold_mean_confidence_and_accuracy() -> None:
    probs = one_hot_probs([0, 0, 1, 1], confidence=0.75)
    ece, reliability = expected_calibration_error(np.array([0, 1, 1, 1]), probs, n_bins=4)
    assert reliability["bin_lower"] == [0.0, 0.25, 0.5, 0.75]
    assert reliability["count"] == [0, 0, 4, 0]
    assert reliability["confidence"][2] == pytest.approx(0.75)
    assert reliability["accuracy"] == [None, None, 0.75, None]
    assert ece == pytest.approx(0.0)


def test_a_class_absent_from_labels_and_predictions_does_not_crash() -> None:
    y_true = np.array([0, 1, 0, 1, 1, 0])
    probs = one_hot_probs([0, 1, 1, 1, 0, 0], n_classes=3, confidence=0.7)
    metrics = compute_metrics(y_true, probs, ["a", "b", "c"], n_bootstrap=100)
    assert metrics["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert metrics["confusion_matrix"][2] == [0, 0, 0]
    assert metrics["confusion_matrix_normalized"][2] == [0.0, 0.0, 0.0]
    assert metrics["roc_auc"] is not None
    assert np.isfinite(metrics["log_loss"])
    perfect = compute_metrics(y_true, one_hot_probs(list(y_true), n_classes=3), ["a", "b", "c"], n_bootstrap=50)
    assert perfect["f1"] == perfect["precision"] == perfect["recall"] == 1.0, "absent class must not drag macro F1"
    assert perfect["ci95"]["f1_macro"] == [1.0, 1.0]


def test_roc_auc_is_none_with_one_class_and_matches_sklearn_otherwise() -> None:
    single = compute_metrics(np.zeros(4, dtype=int), one_hot_probs([0, 1, 0, 0], confidence=0.8), CLASSES, 10)
    assert single["roc_auc"] is None
    y_true, probs = random_case(n=90, n_classes=3, seed=5)
    metrics = compute_metrics(y_true, probs, ["a", "b", "c"], n_bootstrap=0)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))
    y_true, probs = random_case(n=50, seed=6)
    assert compute_metrics(y_true, probs, CLASSES, n_bootstrap=0)["roc_auc"] == pytest.approx(
        roc_auc_score(y_true, probs[:, 1])
    )


@pytest.mark.parametrize(
    ("y_true", "probs", "message"),
    [
        (np.array([0, 1]), np.array([[2.0, -1.0], [0.5, 0.3]]), "softmax"),
        (np.array([0, 1]), np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]), "class names"),
        (np.array([0, 2]), np.array([[0.5, 0.5], [0.5, 0.5]]), "outside"),
        (np.array([0]), np.array([[0.5, 0.5], [0.5, 0.5]]), "shape"),
    ],
)
def test_bad_inputs_fail_with_a_message_naming_the_fix(y_true: np.ndarray, probs: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(y_true, probs, CLASSES)


def test_predict_probabilities_matches_manual_softmax_in_loader_order() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    images, targets = torch.randn(10, 4), torch.randint(0, 3, (10,))
    loader = DataLoader(TensorDataset(images, targets), batch_size=4, shuffle=False)
    model.train()
    probs = predict_probabilities(model, loader)
    assert probs.shape == (10, 3) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    with torch.no_grad():
        expected = torch.softmax(model(images), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert model.training, "the model's train mode should be restored"
    with_autocast = predict_probabilities(model, loader, autocast_dtype=torch.bfloat16)
    np.testing.assert_allclose(with_autocast, expected, atol=3e-2)
    np.testing.assert_allclose(with_autocast.sum(axis=1), 1.0, atol=1e-12)


def test_predict_probabilities_rejects_an_empty_loader() -> None:
    empty = DataLoader(TensorDataset(torch.empty(0, 4), torch.empty(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="no batches"):
        predict_probabilities(torch.nn.Linear(4, 2), empty)


def test_predictions_frame_and_most_confidently_wrong_first() -> None:
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    frame = predictions_frame(["a.jpg", "b.jpg", "c.jpg", "d.jpg"], np.array([1, 1, 1, 0]), probs, CLASSES)
    assert list(frame.columns) == ["path", "true", "predicted", "confidence", "correct", "p_dandelion", "p_grass"]
    assert frame["predicted"].tolist() == ["dandelion", "grass", "dandelion", "grass"]
    assert frame["correct"].tolist() == [False, True, False, False]
    np.testing.assert_allclose(frame["confidence"], [0.9, 0.7, 0.6, 0.8])
    wrong = misclassified(frame)
    assert wrong["path"].tolist() == ["a.jpg", "d.jpg", "c.jpg"]
    unlabeled = predictions_frame(["a.jpg", "b.jpg", "c.jpg", "d.jpg"], None, probs, CLASSES)
    assert "true" not in unlabeled.columns and "correct" not in unlabeled.columns
    with pytest.raises(ValueError, match="correct"):
        misclassified(unlabeled)


def test_save_evaluation_writes_parsable_json_and_csv(tmp_path) -> None:
    y_true, probs = random_case(n=20)
    metrics = compute_metrics(y_true, probs, CLASSES, n_bootstrap=20)
    frame = predictions_frame([f"img_{i}.jpg" for i in range(20)], y_true, probs, CLASSES)
    paths = save_evaluation(tmp_path / "eval", metrics, frame, prefix="val")
    assert paths == {
        "metrics": tmp_path / "eval/val_metrics.json",
        "predictions": tmp_path / "eval/val_predictions.csv",
    }
    assert json.loads(paths["metrics"].read_text()) == json.loads(json.dumps(metrics))
    pd.testing.assert_frame_equal(pd.read_csv(paths["predictions"]), frame)
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["val_metrics.json", "val_predictions.csv"]


def test_format_metrics_and_table() -> None:
    y_true, probs = random_case(n=60)
    metrics = compute_metrics(y_true, probs, CLASSES, n_bootstrap=100)
    text = format_metrics(metrics)
    headline = text.splitlines()[0]
    for fragment in ("accuracy", "95% CI", "F1", "ROC AUC", "ECE", "n=60"):
        assert fragment in headline
    assert "dandelion" in text and "macro avg" in text
    table = metrics_table(metrics)
    assert list(table.columns) == ["metric", "value", "ci_low", "ci_high", "interval"]
    accuracy = table.set_index("metric").loc["accuracy"]
    assert accuracy["value"] == metrics["accuracy"]
    assert [accuracy["ci_low"], accuracy["ci_high"]] == metrics["ci95"]["accuracy"]
    # every row says how its interval was made, or that none is computed (its bounds are then NaN, never made up)
    methods = dict(zip(table["metric"], table["interval"], strict=True))
    assert methods["accuracy"] == "exact (Clopper-Pearson)" and methods["f1_macro"] == "percentile bootstrap"
    unbounded = table[table["interval"] == "none computed"]
    assert list(unbounded["metric"]) == ["precision_macro", "recall_macro", "roc_auc"]
    assert unbounded[["ci_low", "ci_high"]].isna().all().all() and table[["ci_low", "ci_high"]].notna().sum().sum() == 8
    single = compute_metrics(np.zeros(3, dtype=int), one_hot_probs([0, 0, 1]), CLASSES, n_bootstrap=0)
    assert "ROC AUC" not in format_metrics(single)
    assert np.isnan(metrics_table(single).set_index("metric").loc["roc_auc", "value"])
