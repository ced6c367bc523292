"""The benchmark's reference recipe runs (one batch on tiny data) so `make bench` cannot rot unnoticed."""

from pathlib import Path

from benchmarks.bench_epoch import steady
from benchmarks.reference import train_reference
from plantlib.data import prepare_data
from tests.conftest import tiny_config


def test_reference_recipe_trains_validates_and_tests(tiny_dataset: Path, tmp_path: Path) -> None:
    data = prepare_data(tiny_config(tiny_dataset, tmp_path / "runs"), show_progress=False)
    result = train_reference(data, epochs=2, batch_size=4, workers=0, max_batches=1)
    assert len(result.epoch_seconds) == 2 and len(result.val_accuracy) == 2
    assert 0.0 <= result.test_accuracy <= 1.0 and result.seconds > 0


def test_steady_epoch_time_leaves_out_the_warm_up() -> None:
    assert steady([9.0, 2.0, 4.0]) == 3.0 and steady([5.0]) == 5.0
