"""Test-time augmentation, ensembles (also of a cross-validation's fold models), MixUp/CutMix, the LR finder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import log_loss

from plantlib.config import RunConfig
from plantlib.errors import ConfigError
from plantlib.evaluation.metrics import compute_metrics, metrics_side_by_side
from plantlib.experiments.compare import load_evaluated, pairwise_table
from plantlib.experiments.cv import cross_validate, reevaluate_out_of_fold
from plantlib.inference.ensemble import Ensemble, load_predictor
from plantlib.inference.predictor import evaluate_split, load_model, with_flips
from plantlib.training.lr_find import find_learning_rate, suggest_learning_rate
from plantlib.training.optim import BatchMixing
from plantlib.training.trainer import Trainer
from tests.conftest import run_cli, tiny_config, write_dataset


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("better")
    data = write_dataset(root / "d", {"ant": 12, "bee": 12})
    runs = [
        Trainer.build(tiny_config(data, root / "runs", epochs=1, seed=seed), show_progress=False).fit().run_dir
        for seed in (1, 2)
    ]
    return runs[0], runs[1], data


def test_flips_average_the_probabilities_of_the_image_and_its_mirror_images() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    images = torch.rand(5, 3, 8, 8)
    net(images)  # materialise the lazy layer
    views = [images, images.flip(-1), images.flip(-2)]
    expected = torch.stack([torch.softmax(net(v), 1) for v in views]).mean(0)
    assert torch.allclose(torch.softmax(with_flips(net)(images), 1), expected, atol=1e-6)
    symmetric = images + images.flip(-1) + images.flip(-2) + images.flip(-1).flip(-2)
    assert not torch.allclose(torch.softmax(net(symmetric), 1), expected)
    assert torch.allclose(torch.softmax(with_flips(net)(symmetric), 1), torch.softmax(net(symmetric), 1), atol=1e-6)


def test_tta_evaluation_runs_three_views_on_either_engine(two_runs: tuple[Path, Path, Path]) -> None:
    run, _, _ = two_runs
    plain, _ = evaluate_split(load_model(run, engine="torch"), "test", save=False)
    torch_tta, frame = evaluate_split(load_model(run, engine="torch", tta=True), "test", save=False)
    openvino_tta, _ = evaluate_split(load_model(run, engine="openvino", tta=True), "test", save=False)
    assert torch_tta["n"] == plain["n"] == len(frame)
    assert torch_tta["log_loss"] != plain["log_loss"]  # the mirror images changed the probabilities
    assert openvino_tta["log_loss"] == pytest.approx(torch_tta["log_loss"], abs=1e-4)
    table = metrics_side_by_side({"plain": plain, "tta": torch_tta})
    assert list(table["evaluation"]) == ["plain", "tta"] and table["accuracy"].str.contains("95% CI").all()


def test_an_ensemble_averages_its_members_and_saves_apart_from_them(two_runs: tuple[Path, Path, Path]) -> None:
    first, second, data = two_runs
    ensemble = load_predictor([first, second], engine="torch")
    assert isinstance(ensemble, Ensemble)
    files = sorted((data / "ant").glob("*.jpg"))[:4]
    members = [load_model(run, engine="torch").probabilities(files) for run in (first, second)]
    assert np.allclose(ensemble.probabilities(files), np.mean(members, axis=0))
    metrics, _ = evaluate_split(ensemble, "test")
    assert (first / "ensemble-of-2" / "metrics.json").is_file()
    assert json.loads((first / "metrics.json").read_text())["n"] == metrics["n"]  # the member's own files stay
    result = run_cli("predict", str(first), str(data / "bee"), "--ensemble", str(second), "--tta")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(".jpg") == 12


def test_members_of_different_classes_are_refused(two_runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    first, _, _ = two_runs
    other_data = write_dataset(tmp_path / "o", {"cat": 8, "dog": 8})
    other = Trainer.build(tiny_config(other_data, tmp_path / "runs", epochs=1), show_progress=False).fit().run_dir
    with pytest.raises(ConfigError, match="must share their classes"):
        load_predictor([first, other], engine="torch")


def test_fold_models_as_one_ensemble_meet_the_test_split_and_tta_reevaluates_out_of_fold(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d", {"ant": 12, "bee": 12})
    config = tiny_config(data, tmp_path / "cv", backbone="resnet18", pretrained=False, image_size=48, epochs=1)
    cv = cross_validate(config, folds=3, show_progress=False)
    ensemble = load_predictor([cv.cv_dir], engine="torch")
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 3
    metrics, frame = evaluate_split(ensemble, "test")
    test_images = set(pd.read_csv(Path(cv.folds["run_dir"][0]) / "split.csv").query("split == 'excluded'")["path"])
    assert set(frame["path"]) == test_images and metrics["n"] == len(test_images)
    assert (cv.cv_dir / "ensemble" / "metrics.json").is_file()
    named = load_evaluated(cv.cv_dir / "ensemble")  # what `plantlib compare CV_DIR/ensemble RUN_DIR` calls it
    assert named.name.startswith("fold ensemble of resnet18") and named.name.endswith(f"({cv.cv_dir.name})")
    assert len(named.predictions) == metrics["n"]

    tta = reevaluate_out_of_fold(cv.cv_dir, tta=True, engine="torch")
    assert tta.cv_dir.name == f"{cv.cv_dir.name}-tta"
    oof = pd.read_csv(tta.cv_dir / "oof.csv")
    assert sorted(oof["path"]) == sorted(cv.oof["path"]) and tta.metrics["n"] == cv.metrics["n"]
    pairs = pairwise_table([load_evaluated(cv.cv_dir, "plain"), load_evaluated(tta.cv_dir, "tta")])
    assert pairs["n"].iloc[0] == cv.metrics["n"]


def test_batch_mixing_gives_soft_targets_and_mixed_images() -> None:
    torch.manual_seed(0)
    images, targets = torch.rand(8, 3, 16, 16), torch.tensor([0, 1] * 4)
    for mixup, cutmix in ((0.4, 0.0), (0.0, 1.0), (0.4, 1.0)):
        mixed, soft = BatchMixing(mixup, cutmix, 1.0, num_classes=2)(images, targets)
        assert soft.shape == (8, 2) and torch.allclose(soft.sum(1), torch.ones(8))
        assert not torch.equal(mixed, images) and (soft.max(1).values < 1).any()
    unmixed, hard = BatchMixing(0.4, 0.0, 0.0, num_classes=2)(images, targets)
    assert torch.equal(unmixed, images) and torch.equal(hard.argmax(1), targets) and (hard.max(1).values == 1).all()
    with pytest.raises(ConfigError, match="mix_probability"):
        RunConfig(mixup_alpha=0.2, mix_probability=1.5)


def test_a_mixed_run_resumes_to_the_same_weights(two_runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, _, data = two_runs
    config = tiny_config(data, tmp_path / "runs", epochs=3, mixup_alpha=0.4, cutmix_alpha=1.0, mix_probability=0.8)
    reference = Trainer.build(config, show_progress=False).fit()

    def stop_after_epoch_1(trainer: Trainer, record: dict) -> None:
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    interrupted = Trainer.build(config, callbacks=[stop_after_epoch_1], show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    resumed = Trainer.resume(interrupted.run_dir, show_progress=False).fit()
    final = torch.load(resumed.run_dir / "last.pt", weights_only=False)["model"]
    expected = torch.load(reference.run_dir / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    unmixed = Trainer.build(config.replace(mixup_alpha=0.0, cutmix_alpha=0.0), show_progress=False).fit()
    assert unmixed.history[0]["train_loss"] != reference.history[0]["train_loss"]  # mixing took part


def test_the_lr_finder_suggests_the_steepest_descent_and_saves_its_plot(two_runs: tuple[Path, Path, Path]) -> None:
    rates = list(np.logspace(-6, 0, 40))
    losses = [1.0 if r < 1e-4 else (0.2 if r > 1e-2 else 1.0 - 0.8 * (np.log10(r) + 4) / 2) for r in rates]
    losses[-3:] = [3.0, 6.0, 12.0]  # the blow-up at the end is a rise, never a suggestion
    suggested = suggest_learning_rate(rates, losses)
    assert suggested is not None and 1e-4 <= suggested <= 1e-2
    assert suggest_learning_rate(rates, list(np.linspace(0.2, 3.0, 40))) is None  # only rising: no suggestion

    _, _, data = two_runs
    result = find_learning_rate(tiny_config(data, data.parent / "runs", batch_size=4), 1e-6, 10.0, steps=30)
    assert 10 <= len(result.losses) <= 30 and all(np.isfinite(result.losses))
    assert result.learning_rates == sorted(result.learning_rates) and result.learning_rates[0] == pytest.approx(1e-6)
    assert (result.out_dir / "lr_find.png").is_file() and (result.out_dir / "lr_find.json").is_file()


def test_log_loss_and_ece_intervals_surround_their_values_and_narrow_with_n() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 1600):
        y = rng.integers(0, 2, n)
        p_true = np.clip(rng.normal(0.8, 0.1, n), 0.05, 0.99)
        probs = np.where(y[:, None] == np.arange(2), p_true[:, None], 1 - p_true[:, None])
        metrics = compute_metrics(y, probs, ["a", "b"])
        assert metrics["log_loss"] == pytest.approx(log_loss(y, probs))
        low, high = metrics["ci95"]["log_loss"]
        assert low < metrics["log_loss"] < high
        assert metrics["ci95"]["ece"][0] < metrics["ci95"]["ece"][1]
        widths.append(high - low)
    assert widths[1] < widths[0] / 2.5
