"""The benchmark's parts run on tiny data, so `make bench` cannot rot unnoticed."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.bench import tables, target_checks
from benchmarks.measure import steady
from benchmarks.reference import reference_predict_one, train_reference
from benchmarks.replicate import replicate_training_split
from plantlib.data import prepare_data
from tests.conftest import tiny_config


def test_reference_recipe_trains_validates_and_tests(tiny_dataset: Path, tmp_path: Path) -> None:
    data = prepare_data(tiny_config(tiny_dataset, tmp_path / "runs"), show_progress=False)
    result = train_reference(data, epochs=2, batch_size=4, workers=0, max_batches=1)
    assert len(result.epoch_seconds) == 2 and len(result.val_accuracy) == 2 and len(result.train_seconds) == 2
    assert all(t < e for t, e in zip(result.train_seconds, result.epoch_seconds, strict=True))
    assert 0.0 <= result.test_accuracy <= 1.0 and result.seconds > 0
    probs = reference_predict_one(result.model, data.frame("test")["file"][0])
    assert probs.shape == (1, len(data.classes)) and torch.allclose(probs.sum(), torch.tensor(1.0))


def test_steady_epoch_time_leaves_out_the_warm_up() -> None:
    assert steady([9.0, 2.0, 4.0]) == 3.0 and steady([5.0]) == 5.0


def test_replication_adds_distinct_augmented_training_copies(tiny_dataset: Path, tmp_path: Path) -> None:
    data = prepare_data(tiny_config(tiny_dataset, tmp_path / "runs"), show_progress=False)
    train = data.frame("train")
    bigger = replicate_training_split(data, 3, tmp_path / "copies")
    assert len(bigger.frame("train")) == 3 * len(train)
    assert bigger.frame("val").equals(data.frame("val")) and bigger.frame("test").equals(data.frame("test"))
    copies = sorted((tmp_path / "copies").rglob("*.jpg"))
    assert len(copies) == 2 * len(train)
    assert all(bigger.frame("train")["file"].map(Path.is_file))
    noise, differences = [], []
    for file, label, path in zip(train["file"], train["label"], train["path"], strict=True):
        original = Image.open(file).convert("RGB")
        noise.append(_mean_difference(original, _jpeg_resave(original)))  # what re-encoding alone changes
        pair = [Image.open(tmp_path / "copies" / label / f"{Path(path).stem}-copy{k:02d}.jpg") for k in (1, 2)]
        differences += [_mean_difference(original, pair[0]), _mean_difference(original, pair[1])]
        differences.append(_mean_difference(pair[0], pair[1]))
    # Measured: re-saving changes pixels by about 1 level; the copies differ by 7 to 75 levels, median 60.
    assert min(differences) > 4 * max(noise) and np.median(differences) > 20 * max(noise)
    mtimes = [p.stat().st_mtime_ns for p in copies]
    replicate_training_split(data, 3, tmp_path / "copies")  # reused, not rewritten
    assert [p.stat().st_mtime_ns for p in copies] == mtimes


def _jpeg_resave(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return Image.open(buffer).convert("RGB")


def _mean_difference(image: Image.Image, other: Image.Image) -> float:
    """Mean absolute difference in 8-bit levels, `other` scaled to `image`'s size first."""
    other = other.convert("RGB").resize(image.size, Image.Resampling.BILINEAR)
    return float(np.abs(np.asarray(image, dtype=float) - np.asarray(other, dtype=float)).mean())


def _row(epoch_s: float, rss: float) -> dict:
    return {
        "steady_epoch_s": epoch_s,
        "train_images_per_s": 280 / epoch_s,
        "eval_images_per_s": 100.0,
        "peak_rss_mb": rss,
    }


def test_tables_and_target_checks_report_the_ratios() -> None:
    results = {
        "machine": {"cpu": "test cpu", "cores": 2, "torch": "x"},
        "device": "cpu",
        "batch_sizes": [32],
        "epochs": {"32": {"reference": _row(60.0, 4000), "plantlib": _row(15.0, 1500)}},
        "default_run": {"seconds": 100.0, "test_accuracy": 0.95, "peak_rss_mb": 1900.0},
        "reference_full": {"seconds": 1000.0, "test_accuracy": 0.96, "peak_rss_mb": 1300.0},
        "inference": {
            "reference": {"single_image_ms": 40.0, "batched_images_per_s": 30.0},
            "plantlib": {"single_image_ms": 10.0, "batched_images_per_s": 90.0},
        },
    }
    table = tables(results)
    assert "| s/epoch, batch 32 (train + val) | 60.0 | 15.0 | 4.00× faster |" in table
    assert "| wall time | 1000 s | 100 s | 0.100 of the reference's |" in table
    checks = {what: met for what, met, _ in target_checks(results)}
    assert checks["epoch at batch 32 ≥ 3× faster"] and checks["single image ≤ 20 ms"]
    assert not checks["reference's accuracy in ≤ 1/5 of its time"]  # 0.95 < 0.96: time alone is not enough
    results["default_run"]["peak_rss_mb"] = 2100.0
    assert not {w: m for w, m, _ in target_checks(results)}["peak RSS training (default recipe, batch 32) ≤ 2 GB"]


@pytest.mark.parametrize("factor", [0, -1])
def test_replication_factor_must_be_positive(tiny_dataset: Path, tmp_path: Path, factor: int) -> None:
    data = prepare_data(tiny_config(tiny_dataset, tmp_path / "runs"), show_progress=False)
    with pytest.raises(ValueError, match="factor must be 1 or more"):
        replicate_training_split(data, factor, tmp_path)


def test_the_verdict_benchmark_runs_its_scenarios_through_the_comparison_code() -> None:
    from benchmarks.verdicts import simulate

    rows = simulate(simulations=3, seed=1)
    assert [row["scenario"].split(",")[0] for row in rows][:3] == ["A/A", "A/A", "4 equal configurations"]
    for row in rows:
        rate = float(row["difference claimed (rule)"].split()[0])
        assert 0.0 <= rate <= 1.0 and row["simulations"] >= 1
    large = [row for row in rows if row["scenario"].startswith("A/B large")]
    assert all(float(row["mean accuracy A − B"]) > 0.03 for row in large)  # the planted difference is there
