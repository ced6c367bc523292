"""Duplicate grouping and the stratified, group-preserving, reusable split."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from plantlib.config import RunConfig
from plantlib.data import find_duplicates, make_split, prepare_data, scan_dataset
from plantlib.errors import DataError
from tests.conftest import pattern_image, write_dataset


@pytest.fixture
def dataset_with_copies(tmp_path: Path) -> Path:
    root = write_dataset(tmp_path / "dups", {"a": 20, "b": 20})
    shutil.copy(root / "a" / "0000.jpg", root / "a" / "exact-copy.jpg")
    pattern_image(1000).resize((60, 45)).save(root / "a" / "smaller-copy.jpg", quality=70)  # near copy of b/0000
    pattern_image(1000).resize((200, 150)).save(root / "b" / "larger-copy.png")
    return root


def test_exact_and_near_duplicates_are_grouped(dataset_with_copies: Path) -> None:
    images = scan_dataset(dataset_with_copies, show_progress=False).images
    report = find_duplicates(images, max_distance=6)
    assert report.exact_groups == [["a/0000.jpg", "a/exact-copy.jpg"]]
    near = sorted(map(sorted, report.near_groups))
    assert ["a/smaller-copy.jpg", "b/0000.jpg", "b/larger-copy.png"] in near
    assert ["a/0000.jpg", "a/exact-copy.jpg"] in near
    assert len(set(report.group_of.values())) == len(images) - 3


def test_near_duplicate_groups_never_cross_splits(dataset_with_copies: Path) -> None:
    images = scan_dataset(dataset_with_copies, show_progress=False).images
    report = find_duplicates(images)
    # The fixture's copies, named independently of the grouping code: each set must land in one split.
    copies = [{"a/0000.jpg", "a/exact-copy.jpg"}, {"a/smaller-copy.jpg", "b/0000.jpg", "b/larger-copy.png"}]
    for together in copies:
        assert len({report.group_of[path] for path in together}) == 1
    for seed in range(10):
        split = make_split(images, report.group_of, 0.2, 0.2, seed)
        where = dict(zip(split["path"], split["split"], strict=True))
        for together in copies:
            assert len({where[path] for path in together}) == 1, (seed, {path: where[path] for path in together})
        sizes = split.groupby("group").size()
        assert sorted(sizes[sizes > 1]) == [2, 3]  # the two groups of copies, kept whole
        assert split.groupby("group")["split"].nunique().max() == 1
        assert set(split["split"]) == {"train", "val", "test"}


def _synthetic(n_per_class: int) -> tuple[pd.DataFrame, dict[str, int]]:
    paths = [f"{c}/{i}.jpg" for c in ("x", "y") for i in range(n_per_class)]
    images = pd.DataFrame({"path": paths, "label": [p[0] for p in paths]})
    return images, {p: i for i, p in enumerate(paths)}


def test_split_is_stratified_exact_and_seeded() -> None:
    images, groups = _synthetic(200)
    split = make_split(images, groups, 0.15, 0.15, seed=42)
    counts = pd.crosstab(split["split"], split["label"])
    assert counts.loc["train"].tolist() == [140, 140]
    assert counts.loc["val"].tolist() == [30, 30] and counts.loc["test"].tolist() == [30, 30]
    assert split.equals(make_split(images, groups, 0.15, 0.15, seed=42))
    other = make_split(images, groups, 0.15, 0.15, seed=7)
    assert set(other[other["split"] == "test"]["path"]) != set(split[split["split"] == "test"]["path"])


def test_prepare_data_saves_and_reuses_the_split(tiny_dataset: Path) -> None:
    config = RunConfig(data_dir=str(tiny_dataset), val_fraction=0.25, test_fraction=0.25)
    first = prepare_data(config, show_progress=False)
    assert first.split_was_new and first.split_file.is_file()
    assert first.split_file.is_relative_to(Path(__import__("os").environ["PLANTLIB_ROOT"]) / "data")
    second = prepare_data(config, show_progress=False)
    assert not second.split_was_new and second.split.equals(first.split)
    assert prepare_data(config.replace(new_split=True), show_progress=False).split_was_new
    report = second.report()
    assert report["split_counts"]["test"] == {"cat": 3, "dog": 3}
    assert second.frame("train")["target"].tolist().count(0) == 6


def test_a_stale_split_is_refused_with_the_way_out(tiny_dataset: Path) -> None:
    config = RunConfig(data_dir=str(tiny_dataset))
    prepare_data(config, show_progress=False)
    (tiny_dataset / "cat" / "0003.jpg").unlink()
    with pytest.raises(DataError, match=r"1 listed images are gone .* new_split=True \(CLI: --new-split\)"):
        prepare_data(config, show_progress=False)
    assert len(prepare_data(config.replace(new_split=True), show_progress=False).split) == 23
