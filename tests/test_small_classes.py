"""A small class never silently vanishes from validation and test: the split keeps it, or a warning says why not."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plantlib.config import RunConfig
from plantlib.data import DataWarning, make_split, prepare_data
from plantlib.data.split import save_split
from plantlib.evaluation.metrics import compute_metrics, format_metrics
from plantlib.training.trainer import Trainer
from tests.conftest import tiny_config, write_dataset


def synthetic(counts: dict[str, int]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Images named as `write_dataset` names them, each its own group."""
    paths = [f"{label}/{i:04d}.jpg" for label, n in counts.items() for i in range(n)]
    images = pd.DataFrame({"path": paths, "label": [p.split("/")[0] for p in paths]})
    return images, {p: i for i, p in enumerate(paths)}


@pytest.mark.parametrize("seed", range(5))
def test_every_class_of_three_or_more_images_gets_a_validation_and_a_test_image(seed: int) -> None:
    images, groups = synthetic({"big": 100, "three": 3, "four": 4, "five": 5})
    split = make_split(images, groups, 0.15, 0.15, seed)
    counts = pd.crosstab(split["label"], split["split"])
    assert (counts[["train", "val", "test"]] >= 1).all().all(), counts
    assert counts.loc["big"].to_dict() == {"test": 15, "train": 70, "val": 15}  # rounding unchanged where it worked


def test_the_issue_case_tests_the_small_class_too(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d", {"big": 100, "rare": 3}, size=(40, 30))
    config = tiny_config(data, tmp_path / "runs", backbone="resnet18", pretrained=False, image_size=32, epochs=1)
    config = config.replace(val_fraction=0.15, test_fraction=0.15, batch_size=16)
    result = Trainer.build(config, show_progress=False).fit()
    metrics = result.test_metrics
    assert metrics["n"] == 16 and metrics["per_class"]["rare"]["support"] == 1
    assert metrics["absent_classes"] == []


def test_a_class_too_small_to_split_is_warned_about(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d", {"big": 20, "pair": 2})
    with pytest.warns(DataWarning, match=r"pair \(2 images\): none in val or test.*3 or more"):
        prepared = prepare_data(RunConfig(data_dir=str(data)), show_progress=False)
    assert prepared.report()["classes_missing_from_splits"] == {"pair": ["val", "test"]}


def test_an_old_split_that_lost_a_class_says_to_make_a_new_one(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "d", {"big": 20, "rare": 3})
    images, groups = synthetic({"big": 20, "rare": 3})
    old = make_split(images, groups, 0.15, 0.15, 42)
    old.loc[old["label"] == "rare", "split"] = "train"  # what rounding did before every class got a share
    save_split(old, tmp_path / "old.csv")
    config = RunConfig(data_dir=str(data), split_file=str(tmp_path / "old.csv"))
    with pytest.warns(DataWarning, match=r"rare \(3 images\): none in val or test.*--new-split"):
        prepare_data(config, show_progress=False)


def test_metrics_say_when_a_class_is_absent() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    metrics = compute_metrics(np.array([0, 0, 0]), probs, ["big", "rare"], n_bootstrap=10)
    assert metrics["absent_classes"] == ["rare"]
    assert "no image of class(es) rare in this set" in format_metrics(metrics)
    both = compute_metrics(np.array([0, 0, 1]), probs, ["big", "rare"], n_bootstrap=10)
    assert both["absent_classes"] == [] and "no image of class" not in format_metrics(both)
