"""Linear probe: frozen-backbone embeddings and a logistic regression on the folds fine-tuning uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plantlib.experiments.backbones import finetuning_gain
from plantlib.experiments.compare import compare_paths
from plantlib.experiments.cv import assign_folds, cross_validate
from plantlib.experiments.probe import PROBE_KIND, _probe_fold, probe_cross_validate
from plantlib.runs import EMBEDDINGS_FILE
from tests.conftest import tiny_config, write_dataset


def synthetic_pool(n_per_class: int = 40, dims: int = 16, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Two classes whose features differ in mean along the first axis: a linear probe separates them."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(["a", "b"], n_per_class)
    features = rng.normal(size=(len(labels), dims))
    features[:, 0] += np.where(labels == "a", -2.0, 2.0)
    pool = pd.DataFrame({"path": [f"{label}/{i}.jpg" for i, label in enumerate(labels)], "label": labels})
    pool["group"] = np.arange(len(pool))
    return assign_folds(pool, folds=4, repeats=1, split_seed=3), features


def test_a_probe_fold_learns_and_never_sees_its_held_out_labels() -> None:
    assigned, features = synthetic_pool()
    frame, row = _probe_fold(features, assigned, ["a", "b"], (0, 1), seed=0)
    held_out = assigned["fold_r0"] == 1
    assert sorted(frame["path"]) == sorted(assigned.loc[held_out, "path"])
    assert row["accuracy"] > 0.85 and row["n"] == int(held_out.sum())
    flipped = assigned.copy()  # the held-out images' labels change: their predicted probabilities must not
    flipped.loc[held_out, "label"] = flipped.loc[held_out, "label"].map({"a": "b", "b": "a"})
    again, _ = _probe_fold(features, flipped, ["a", "b"], (0, 1), seed=0)
    assert np.allclose(frame["p_a"].to_numpy(), again["p_a"].to_numpy())


@pytest.fixture(scope="module")
def cvs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("probe")
    data_dir = write_dataset(root / "d", {"ant": 12, "bee": 12})
    config = tiny_config(data_dir, root / "cv", backbone="resnet18", pretrained=False, image_size=48, epochs=1)
    tuned = cross_validate(config, folds=3, show_progress=False)
    probe = probe_cross_validate(config, folds=3)
    return {"config": config, "tuned": tuned.cv_dir, "probe": probe.cv_dir, "probe_result": probe}


def test_the_probe_is_a_cross_validation_on_the_fine_tuned_folds(cvs: dict) -> None:
    probe_dir, tuned_dir = cvs["probe"], cvs["tuned"]
    assert (probe_dir / "folds.csv").read_text() == (tuned_dir / "folds.csv").read_text()
    oof, tuned_oof = pd.read_csv(probe_dir / "oof.csv"), pd.read_csv(tuned_dir / "oof.csv")
    assert sorted(oof["path"]) == sorted(tuned_oof["path"])  # every pool image once, as fine-tuning held them out
    keys = ["path", "repeat", "fold"]

    def held_out(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[keys].sort_values(keys).reset_index(drop=True)

    assert held_out(oof).equals(held_out(tuned_oof))  # each image held out in the same fold by both
    info = json.loads((probe_dir / "cv.json").read_text())
    assert info["status"] == "finished" and info["kind"] == PROBE_KIND
    assert info["content_key"] != json.loads((tuned_dir / "cv.json").read_text())["content_key"]
    saved = np.load(probe_dir / EMBEDDINGS_FILE)
    folds = pd.read_csv(probe_dir / "folds.csv")
    assert saved["features"].shape == (len(oof), 512) and list(saved["paths"]) == list(folds["path"])


def test_a_finished_probe_is_reused_and_rerun_fits_again(cvs: dict) -> None:
    again = probe_cross_validate(cvs["config"], folds=3)
    assert again.cv_dir == cvs["probe"]
    assert again.metrics["accuracy"] == cvs["probe_result"].metrics["accuracy"]
    fresh = probe_cross_validate(cvs["config"], folds=3, rerun=True)
    assert fresh.cv_dir != cvs["probe"]
    assert fresh.metrics["accuracy"] == cvs["probe_result"].metrics["accuracy"]  # deterministic


def test_fine_tuning_is_tested_against_its_probe_under_the_rule(cvs: dict) -> None:
    gain = finetuning_gain({"resnet18": cvs["tuned"]}, {"resnet18": cvs["probe"]})
    assert gain is not None and len(gain.pairs) == 1
    row = gain.pairs.iloc[0]
    assert row["a"] == "resnet18 fine-tuned" and row["b"] == "resnet18 linear probe"
    assert row["test"].startswith("corrected") and row["ci_low"] <= row["difference"] <= row["ci_high"]
    assert "Holm's correction over 1 pair" in gain.sentence
    assert finetuning_gain({"resnet18": cvs["tuned"]}, {}) is None
    plain = compare_paths([cvs["tuned"], cvs["probe"]])  # `plantlib compare` takes a probe like any CV
    assert plain.pairs.iloc[0]["difference"] == pytest.approx(row["difference"])
