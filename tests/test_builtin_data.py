"""The built-in dataset from the real mirror: 400 verified images, a 280/60/60 split, no leaks."""

import shutil
from pathlib import Path

import pytest

from plantlib.config import RunConfig
from plantlib.data import fetch_dataset, prepare_data
from plantlib.paths import builtin_data_dir, manifest_path
from tests.conftest import real_mirror, requires_mirror

pytestmark = [requires_mirror, pytest.mark.real_data]


@pytest.fixture
def builtin_copy(isolated_project: Path) -> Path:
    shutil.copy(Path(__file__).resolve().parents[1] / "data" / "manifest.csv", manifest_path())
    return builtin_data_dir()


def test_builtin_data_fetches_verifies_and_splits_280_60_60(builtin_copy: Path, monkeypatch) -> None:
    monkeypatch.setenv("PLANTLIB_DATA_SOURCE", str(real_mirror()))
    first = fetch_dataset(show_progress=False)
    assert len(first.fetched) == 400
    assert fetch_dataset(show_progress=False).fetched == []

    prepared = prepare_data(RunConfig(), show_progress=False)  # data_dir None: the built-in dataset
    assert prepared.data_dir == builtin_copy
    counts = prepared.report()["split_counts"]
    assert counts == {
        "train": {"dandelion": 140, "grass": 140},
        "val": {"dandelion": 30, "grass": 30},
        "test": {"dandelion": 30, "grass": 30},
    }
    assert prepared.split.groupby("group")["split"].nunique().max() == 1
    assert prepared.report()["groups_crossing_splits"] == []
