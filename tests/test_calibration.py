"""Temperature scaling: the fit (against scikit-learn's), what it does to a synthetic model, the paired verdict, and
one tiny real run whose calibration is stored in best.pt and applied by evaluate, predict, the engine and ONNX."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import softmax

from plantlib.checkpoint import load_checkpoint, save_checkpoint, store_calibration
from plantlib.evaluation.calibration import (
    CalibrationError,
    apply_temperature,
    compare_calibration,
    fit_temperature,
    log_loss_verdict,
    temperature_calibration,
    uncalibrated_probabilities,
)
from plantlib.evaluation.metrics import per_image_log_loss
from plantlib.experiments import train
from plantlib.inference.predictor import (
    LoadedModel,
    calibrate_checkpoint,
    evaluate_split,
    load_model,
    predict_files,
    run_data,
)
from tests.conftest import run_cli, tiny_config, write_dataset


def draw(rng: np.random.Generator, n: int, sharpen: float = 1.0, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(logits); the model reports `sharpen` × logits (over-confident when > 1)."""
    logits = rng.normal(scale=2.0, size=(n, classes))
    labels = (softmax(logits, axis=1).cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return sharpen * logits, labels


def test_the_fit_matches_scikit_learns_temperature_scaling() -> None:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    class Logits(ClassifierMixin, BaseEstimator):
        """A fitted 'classifier' whose decision function is the logits it is given."""

        def fit(self, X: np.ndarray, y: np.ndarray) -> Logits:
            self.classes_ = np.unique(y)
            return self

        def decision_function(self, X: np.ndarray) -> np.ndarray:
            return X

        def predict(self, X: np.ndarray) -> np.ndarray:
            return X.argmax(axis=1)

    for seed, sharpen in ((0, 2.5), (1, 0.4)):
        logits, labels = draw(np.random.default_rng(seed), 300, sharpen)
        reference = CalibratedClassifierCV(FrozenEstimator(Logits().fit(logits, labels)), method="temperature")
        reference.fit(logits, labels)
        beta = reference.calibrated_classifiers_[0].calibrators[0].beta_
        assert fit_temperature(logits, labels) == pytest.approx(1 / beta, rel=1e-3)


def test_scaling_lowers_nll_of_an_over_confident_model_and_keeps_every_argmax() -> None:
    rng = np.random.default_rng(2)
    fit_logits, fit_labels = draw(rng, 400, sharpen=3.0)
    test_logits, test_labels = draw(rng, 400, sharpen=3.0)
    temperature = fit_temperature(fit_logits, fit_labels)
    assert 2.4 < temperature < 3.6  # the over-confidence put in
    before, after = apply_temperature(test_logits, 1.0), apply_temperature(test_logits, temperature)
    assert np.array_equal(before.argmax(axis=1), after.argmax(axis=1))
    assert per_image_log_loss(test_labels, after).mean() < per_image_log_loss(test_labels, before).mean() - 0.1
    comparison = compare_calibration(test_labels, before, after, n_bootstrap=300)
    assert comparison["after"]["ece"] < comparison["before"]["ece"]
    assert comparison["log_loss_change"]["claimed"] and comparison["log_loss_change"]["verdict"].startswith(
        "calibration lowers"
    )
    assert uncalibrated_probabilities(after, temperature) == pytest.approx(before, abs=1e-9)


def test_the_verdict_rarely_claims_an_improvement_for_a_calibrated_model() -> None:
    """A/A: T fitted on one draw of an already calibrated model, judged on another (the benchmark runs 1000)."""
    rng = np.random.default_rng(5)
    improvements = 0
    for seed in range(30):
        logits, labels = draw(rng, 120, classes=2)
        temperature = fit_temperature(logits[:60], labels[:60])
        verdict = log_loss_verdict(
            labels[60:], apply_temperature(logits[60:], 1), apply_temperature(logits[60:], temperature), 500, seed
        )
        improvements += verdict["claimed"] and verdict["difference"] < 0
    assert improvements <= 3  # about 2% expected; P(4 or more of 30 at 2%) < 0.4%


def test_images_all_classified_right_leave_the_temperature_at_one() -> None:
    logits = np.array([[3.0, 0.0], [0.0, 2.0], [4.0, 1.0]])
    with pytest.raises(CalibrationError, match="no finite temperature"):
        fit_temperature(logits, np.array([0, 1, 0]))
    entry = temperature_calibration(logits, np.array([0, 1, 0]))
    assert entry["temperature"] == 1.0 and "no finite temperature" in entry["note"]
    assert entry["n"] == 3 and len(entry["conformal_scores"]) == 3


# ---------------------------------------------------------------------------------------------- one real run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("calibration")
    data = write_dataset(root / "data", {"ant": 16, "bee": 16})
    config = tiny_config(data, root / "runs", backbone="resnet18", pretrained=False, epochs=2, image_size=48)
    return train(config, show_progress=False).run_dir


def copied(run_dir: Path, tmp_path: Path, temperature: float | None = None) -> Path:
    """A copy of the run to change; with `temperature`, its best.pt calibrated to that value (scores kept)."""
    copy = Path(shutil.copytree(run_dir, tmp_path / run_dir.name))
    if temperature is not None:
        entry = load_checkpoint(copy / "best.pt")["calibration"]
        store_calibration(copy / "best.pt", {**entry, "temperature": temperature})
    return copy


def test_training_stores_the_validation_fit_and_reports_before_and_after(run_dir: Path, tmp_path: Path) -> None:
    entry = load_checkpoint(run_dir / "best.pt")["calibration"]
    loaded = load_model(run_dir, engine="torch")
    n_val = len(run_data(loaded).frame("val"))
    assert entry["method"] == "temperature" and entry["fitted_on"] == "val" and entry["n"] == n_val
    assert entry["temperature"] > 0 and len(entry["conformal_scores"]) == n_val
    # The same fit again from the saved run (`plantlib calibrate`): the stored numbers are the validation split's.
    refit = calibrate_checkpoint(copied(run_dir, tmp_path) / "best.pt", engine="torch")
    assert refit["temperature"] == pytest.approx(entry["temperature"], rel=1e-3)
    assert refit["conformal_scores"] == pytest.approx(entry["conformal_scores"], abs=1e-4)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["calibration"]["temperature"] == pytest.approx(entry["temperature"])
    assert {"ece", "log_loss", "ci95", "reliability"} <= set(metrics["uncalibrated"])
    assert metrics["calibration"]["log_loss_change"]["verdict"]
    assert metrics["prediction_sets"]["n"] == metrics["n"] and metrics["prediction_sets"]["target_coverage"] == 0.9


def test_evaluate_predict_engine_and_onnx_apply_the_temperature(run_dir: Path, tmp_path: Path) -> None:
    run = copied(run_dir, tmp_path, temperature=2.5)
    raw = load_model(run, engine="torch", calibrated=False)
    calibrated = load_model(run, engine="torch")
    compiled = load_model(run, engine="openvino")
    assert (raw.temperature, calibrated.temperature, compiled.temperature) == (1.0, 2.5, 2.5)
    _, raw_frame = evaluate_split(raw, "test", save=False)
    metrics, frame = evaluate_split(calibrated, "test", save=False)
    columns = ["p_ant", "p_bee"]
    p_raw, p_cal = raw_frame[columns].to_numpy(), frame[columns].to_numpy()
    logits = np.log(p_raw)
    assert p_cal == pytest.approx(apply_temperature(logits, 2.5), abs=1e-5)
    assert (frame["predicted"] == raw_frame["predicted"]).all()
    assert metrics["uncalibrated"]["log_loss"] == pytest.approx(per_image_log_loss(*_targets(raw_frame)).mean(), 1e-4)
    files = [Path(raw.config.data_dir) / path for path in frame["path"]]
    assert compiled.probabilities(files) == pytest.approx(p_cal, abs=1e-5)

    out = tmp_path / "plain.csv"
    result = run_cli(
        "predict", str(run / "best.pt"), *map(str, files), "--no-calibration", "--out", str(out), "--engine", "torch"
    )
    assert result.returncode == 0, result.stderr
    assert pd.read_csv(out)[columns].to_numpy() == pytest.approx(p_raw, abs=1e-5)

    import onnx
    import onnxruntime

    from plantlib.inference.export import export_run

    model_file = export_run(run, out_dir=tmp_path / "export")[0]
    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    onnx_probs = session.run(None, {"images": _uint8_crops(calibrated, files)})
    assert onnx_probs[0] == pytest.approx(p_cal, abs=1e-4)
    metadata = {p.key: p.value for p in onnx.load(str(model_file)).metadata_props}
    assert float(metadata["temperature"]) == 2.5
    assert json.loads(metadata["calibration"])["conformal_scores"] == pytest.approx(calibrated.conformal_scores)


def _targets(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    names = ["ant", "bee"]
    return frame["true"].map(names.index).to_numpy(), frame[[f"p_{n}" for n in names]].to_numpy()


def _uint8_crops(loaded: LoadedModel, files: list[Path]) -> np.ndarray:
    """The uint8 centre crops (N x 3 x H x W) the ONNX graph takes."""
    from plantlib.data import eval_transform

    transform = eval_transform(loaded.image_size, loaded.normalization, normalize=False)
    cache = loaded.image_cache()
    return torch.stack([transform(cache.get(Path(f))) for f in files]).numpy()


def test_predict_coverage_adds_sets_and_refuses_what_it_cannot_do(run_dir: Path, tmp_path: Path) -> None:
    loaded = load_model(run_dir, engine="torch")
    data_dir = Path(loaded.config.data_dir)
    frame = predict_files(loaded, [data_dir / "ant", data_dir / "bee"], coverage=0.9)
    assert set(frame["prediction_set"]) <= {"ant", "bee", "ant|bee", ""}
    assert all(row.predicted in row.prediction_set.split("|") for row in frame.itertuples() if row.prediction_set)

    out = tmp_path / "sets.csv"
    result = run_cli(
        "predict", str(run_dir), str(data_dir / "ant"), "--coverage", "0.9", "--out", str(out), "--engine", "torch"
    )
    assert result.returncode == 0, result.stderr
    assert "prediction_set" in pd.read_csv(out, keep_default_na=False).columns
    bad = run_cli("predict", str(run_dir), str(data_dir / "ant"), "--coverage", "90", "--engine", "torch")
    assert bad.returncode == 2 and "strictly between 0 and 1" in bad.stderr

    old = copied(run_dir, tmp_path)
    payload = load_checkpoint(old / "best.pt")
    del payload["calibration"]
    save_checkpoint(old / "best.pt", payload)  # as a checkpoint written before calibration existed
    assert load_model(old, engine="torch").temperature == 1.0
    refused = run_cli("predict", str(old), str(data_dir / "ant"), "--coverage", "0.9", "--engine", "torch")
    assert refused.returncode == 2 and "retrain, or run: plantlib calibrate" in refused.stderr
    assert run_cli("calibrate", str(old)).returncode == 0
    assert load_model(old, engine="torch").conformal_scores is not None
