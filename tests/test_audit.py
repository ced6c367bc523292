"""The label audit (confident learning on out-of-fold probabilities, outliers, near-duplicates) and the label
overrides file that acts on it without touching an image."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli, tiny_config

from plantlib import cli
from plantlib.data import prepare_data
from plantlib.data.overrides import OVERRIDES_FILE, read_overrides
from plantlib.errors import DataError
from plantlib.experiments.audit import (
    audit_cv,
    detection_scores,
    explain_top,
    near_duplicate_pairs,
    outlier_scores,
    rank_label_issues,
    read_audit,
)
from plantlib.experiments.content_key import data_fingerprint
from plantlib.experiments.cv import cross_validate
from plantlib.runs import CvDir


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.jpg")}


def noisy_probabilities(n: int, classes: int, flip_share: float, seed: int) -> tuple[np.ndarray, np.ndarray, set]:
    """Given labels with a seeded share flipped, and probabilities of a decent model that knows the true labels."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, size=n)
    logits = rng.normal(0.0, 1.0, size=(n, classes))
    logits[np.arange(n), truth] += 2.5  # right most of the time, not always
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    flipped = rng.choice(n, size=round(flip_share * n), replace=False)
    given = truth.copy()
    given[flipped] = (truth[flipped] + rng.integers(1, classes, size=len(flipped))) % classes
    return given, probs, set(flipped.tolist())


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_label_flips_are_found_better_than_chance(seed: int) -> None:
    given, probs, planted = noisy_probabilities(n=300, classes=3, flip_share=0.1, seed=seed)
    quality, is_issue = rank_label_issues(given, probs)
    flagged = set(np.flatnonzero(is_issue).tolist())
    scores = detection_scores(flagged, planted, n=len(given))
    # Better than a random pick of the same size: the whole 95% interval of precision above the planted share.
    assert scores["precision_ci95"][0] > scores["chance_precision"]
    assert scores["recall"] > 0.5
    # The ranking puts flipped labels first: mean rank of the flips well ahead of the others.
    ranks = quality.argsort().argsort()
    assert ranks[list(planted)].mean() < 0.5 * ranks[[i for i in range(len(given)) if i not in planted]].mean()


def test_outliers_and_near_duplicates_in_an_embedding_space() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 16)) + 5.0
    features[7] = -features[7]  # far from the cloud
    features[12] = features[3] + rng.normal(scale=1e-4, size=16)  # a near copy of image 3
    paths = [f"c/{i:02d}.jpg" for i in range(40)]
    scores = outlier_scores(features)
    assert int(np.argmin(scores)) == 7
    pairs, radius = near_duplicate_pairs(features, paths)
    assert radius > 0
    assert list(zip(pairs["path_a"], pairs["path_b"], strict=True)) == [("c/03.jpg", "c/12.jpg")]


def write_overrides(path: Path, rows: list[tuple[str, str]]) -> Path:
    frame = pd.DataFrame(rows, columns=["path", "label"]).assign(reason="checked by eye")
    path.write_text(frame.to_csv(index=False), encoding="utf-8")
    return path


def test_overrides_relabel_and_exclude_deterministically_and_leave_images_alone(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = file_hashes(tiny_dataset)
    plain = prepare_data(tiny_config(tiny_dataset, tmp_path / "runs"), show_progress=False)
    write_overrides(tiny_dataset.parent / OVERRIDES_FILE, [("cat/0003.jpg", "dog"), ("dog/0005.jpg", "exclude")])
    config = tiny_config(tiny_dataset, tmp_path / "runs")  # label_overrides=None: the file beside the folder
    first = prepare_data(config, show_progress=False)
    again = prepare_data(config.replace(new_split=True), show_progress=False)

    labels = dict(zip(first.split["path"], first.split["label"], strict=True))
    assert labels["cat/0003.jpg"] == "dog" and "dog/0005.jpg" not in labels
    assert len(first.split) == len(plain.split) - 1
    pd.testing.assert_frame_equal(first.split, again.split)  # made afresh: the same split
    assert first.split_file != plain.split_file and "overrides" in first.split_file.name
    assert plain.split_file.is_file()  # the split without overrides is kept, not called stale
    report = first.report()["label_overrides"]
    assert report["applied"] == 2 and report["excluded"] == ["dog/0005.jpg"]
    assert report["sha256"] == read_overrides(tiny_dataset.parent / OVERRIDES_FILE).sha256
    assert data_fingerprint(first) != data_fingerprint(plain)  # a CV with overrides is never reused without
    assert file_hashes(tiny_dataset) == before  # nothing moved, renamed, rewritten or deleted

    off = prepare_data(config.replace(label_overrides=""), show_progress=False)
    pd.testing.assert_frame_equal(off.split, plain.split)

    capsys.readouterr()
    assert cli.main(["scan", "--data-dir", str(tiny_dataset), "--val-fraction", "0.25", "--test-fraction", "0.25"]) == 0
    assert "overrides    2 applied from" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("cat/9999.jpg", "dog")], "is not a usable image"),
        ([("cat/0001.jpg", "horse")], "use one of cat, dog or exclude"),
        ([("cat/0001.jpg", "dog"), ("./cat/0001.jpg", "exclude")], "more than once"),
    ],
)
def test_bad_override_rows_are_one_line_errors(
    tiny_dataset: Path, tmp_path: Path, rows: list[tuple[str, str]], message: str
) -> None:
    overrides = write_overrides(tmp_path / "fixes.csv", rows)
    config = tiny_config(tiny_dataset, tmp_path / "runs", label_overrides=str(overrides))
    with pytest.raises(DataError, match=message) as raised:
        prepare_data(config, show_progress=False)
    assert "\n" not in str(raised.value) and "fixes.csv" in str(raised.value)


def test_override_file_errors_reach_the_cli_as_one_line(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    no_label = tmp_path / "no-label.csv"
    no_label.write_text("path,class\ncat/0001.jpg,dog\n", encoding="utf-8")
    for bad in (no_label, tmp_path / "missing.csv"):
        assert cli.main(["scan", "--data-dir", str(tiny_dataset), "--label-overrides", str(bad)]) == 2
        stderr = capsys.readouterr().err
        assert len(stderr.strip().splitlines()) == 1 and "path,label" in stderr


def test_audit_of_a_tiny_cross_validation_end_to_end(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = file_hashes(tiny_dataset)
    result = cross_validate(tiny_config(tiny_dataset, tmp_path / "cv", epochs=1), folds=3, quiet=True)
    audit = audit_cv(result.cv_dir)

    images = audit.images
    assert sorted(images["path"]) == sorted(file_hashes(tiny_dataset))  # the pool and the test split
    held_out_by_all = images.loc[images["fold"] == -1, "path"]  # the test split: no fold model trained on it
    assert sorted(held_out_by_all) == sorted(set(images["path"]) - set(result.oof["path"]))
    assert audit.info["n_outside_pool"] == len(held_out_by_all) > 0
    assert list(images["rank"]) == list(range(1, len(images) + 1))
    assert images["label_quality"].is_monotonic_increasing
    assert set(images["suggested"]) <= {"cat", "dog"} and images["outlier_score"].between(0, 1).all()
    assert audit.info["n"] == len(images) and len(audit.info["label_issue_share_ci95"]) == 2
    cv = CvDir(result.cv_dir)
    assert all(path.is_file() for path in (cv.audit_file, cv.audit_pairs_file, cv.audit_info_file))

    stamp = cv.audit_file.stat().st_mtime_ns
    reused = audit_cv(result.cv_dir)  # saved and up to date: read back, not computed again
    assert cv.audit_file.stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(reused.images, read_audit(result.cv_dir).images)
    assert list(reused.images["path"]) == list(images["path"])

    gallery = explain_top(audit, 2)
    assert [caption.split(" ")[0] for _, _, caption in gallery] == ["#1", "#2"]
    assert gallery[0][1].size == gallery[0][0].size  # the heat-map overlay of the crop

    shown = run_cli("audit", str(result.cv_dir), "--top", "3")  # as a user runs it
    assert shown.returncode == 0, shown.stderr
    assert images["path"].iloc[0] in shown.stdout and "label_overrides.csv" in shown.stdout
    assert "suspected label issue" in shown.stdout
    capsys.readouterr()
    assert cli.main(["audit", str(tmp_path)]) == 2
    assert "not a cross-validation directory" in capsys.readouterr().err
    assert file_hashes(tiny_dataset) == before
