"""One measurement per process: `python -m benchmarks.measure NAME '{json args}'` prints one JSON line.

A fresh process per measurement gives each its own peak RSS and allocator state, and keeps one recipe's
warm caches from flattering the next. `benchmarks.bench` runs them and builds the tables.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from plantlib.checkpoint import find_checkpoint
from plantlib.config import RunConfig
from plantlib.data import PreparedData, prepare_data
from plantlib.paths import artifacts_dir

BENCH_DIR = artifacts_dir() / "bench"
LATENCY_IMAGES = 30  # single-image predictions timed (median)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def steady(seconds: list[float]) -> float:
    """Median epoch time, leaving out the first epoch (warm-up) when there are more."""
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def bench_config(**changes: Any) -> RunConfig:
    """The default recipe with the benchmark's output directory; `changes` override single fields."""
    return RunConfig(output_dir=str(BENCH_DIR / "runs"), **changes)


def train_images(data: PreparedData) -> int:
    return int((data.split["split"] == "train").sum())


# ------------------------------------------------------------------------------------------ training epochs


def epochs(recipe: str, batch_size: int, epochs: int = 3, device: str = "cpu") -> dict[str, Any]:
    """`epochs` epochs (train + validation) of full fine-tuning at `batch_size`, then eval throughput."""
    config = bench_config(
        batch_size=batch_size, epochs=epochs, early_stopping_patience=None, frozen_blocks=0, device=device
    )
    data = prepare_data(config, show_progress=False)
    n_train = train_images(data)
    eval_images = int((data.split["split"] != "train").sum())
    if recipe == "reference":
        from benchmarks.reference import evaluate_reference, train_reference

        result = train_reference(data, epochs=epochs, batch_size=batch_size, device=device)
        epoch_s, train_s = result.epoch_seconds, result.train_seconds
        eval_s = evaluate_reference(result.model, data, batch_size, device=device)
        accuracy = result.test_accuracy
    else:
        from plantlib.training.trainer import Trainer

        trainer = Trainer.build(config, data=data, show_progress=False)
        trained = trainer.fit()
        epoch_s = [row["seconds"] for row in trained.history]
        train_s = [row["train_seconds"] for row in trained.history]
        accuracy = trained.test_metrics["accuracy"]
        started = time.perf_counter()
        for split in ("val", "test"):
            trainer.loss_and_accuracy(split)
        eval_s = time.perf_counter() - started
    return {
        "recipe": recipe,
        "batch_size": batch_size,
        "device": device,
        "epoch_seconds": epoch_s,
        "steady_epoch_s": steady(epoch_s),
        "train_images_per_s": n_train / steady(train_s),
        "eval_images_per_s": eval_images / eval_s,
        "test_accuracy": accuracy,
        "peak_rss_mb": peak_rss_mb(),
    }


# --------------------------------------------------------------------------- time to accuracy, inference


def default_run(device: str = "cpu") -> dict[str, Any]:
    """plantlib's default recipe end to end (data check, model build, training, test), as `plantlib train`."""
    from plantlib.training.trainer import Trainer

    started, cpu_started = time.perf_counter(), cpu_seconds()
    config = bench_config(device=device)
    trained = Trainer.build(config, show_progress=False).fit()
    wall = time.perf_counter() - started
    return {
        "recipe": "plantlib default",
        "cpu_seconds": cpu_seconds() - cpu_started,
        "config": {k: config.to_dict()[k] for k in ("epochs", "batch_size", "frozen_blocks", "freeze_bn")},
        "seconds": wall,
        "epochs": len(trained.history),
        "epoch_seconds": [row["seconds"] for row in trained.history],
        "test_accuracy": trained.test_metrics["accuracy"],
        "test_f1": trained.test_metrics["f1"],
        "checkpoint": str(find_checkpoint(trained.run_dir)),
        "peak_rss_mb": peak_rss_mb(),
    }


def cpu_seconds() -> float:
    """CPU time of this process and its finished children: steadier than wall time when the machine is shared."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cross_validation(folds: int = 5, device: str = "cpu") -> dict[str, Any]:
    """The default recipe's K-fold CV in one process: images decoded once and weights read once for every fold."""
    from plantlib.experiments.cv import cross_validate

    started, cpu_started = time.perf_counter(), cpu_seconds()
    result = cross_validate(bench_config(device=device, tracking="off"), folds=folds, show_progress=False)
    return {
        "folds": folds,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": cpu_seconds() - cpu_started,
        "accuracy": result.metrics["accuracy"],
        "n": result.metrics["n"],
        "cv_dir": str(result.cv_dir),
        "peak_rss_mb": peak_rss_mb(),
    }


def _latency_ms(predict_one: Callable[[Path], Any], files: list[Path]) -> float:
    predict_one(files[0])  # warm-up: first call allocates and picks kernels
    times = []
    for file in files[:LATENCY_IMAGES]:
        started = time.perf_counter()
        predict_one(file)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def inference(recipe: str, checkpoint: str | None = None, device: str = "cpu", tta: bool = False) -> dict[str, Any]:
    """Single-image latency (decode + preprocess + forward, fresh file each time) and batched throughput.

    `tta` measures plantlib with test-time augmentation (three forward passes per image).
    """
    data = prepare_data(bench_config(), show_progress=False)
    files = data.frame("test")["file"].tolist()
    engine = "torch"
    if recipe == "reference":
        from benchmarks.reference import reference_batch_predict, reference_model, reference_predict_one

        model = reference_model(len(data.classes), device)
        predict_one = lambda file: reference_predict_one(model, file, device)  # noqa: E731
        predict_all = lambda: reference_batch_predict(model, files, device=device)  # noqa: E731
    else:
        from plantlib.inference.predictor import load_model

        # Probabilities from the Python API (as the notebooks' predict widget), like the reference's functions.
        loaded = load_model(Path(checkpoint), device=device, tta=tta)
        predict_one = lambda file: loaded.probabilities([file])  # noqa: E731
        predict_all = lambda: loaded.probabilities(files)  # noqa: E731
        engine = loaded.engine
    latency = _latency_ms(predict_one, files)
    predict_all()  # warm-up
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        predict_all()
        rates.append(len(files) / (time.perf_counter() - started))
    return {
        "recipe": recipe,
        "tta": tta,
        "device": device,
        "engine": engine,
        "single_image_ms": latency,
        "batched_images_per_s": statistics.median(rates),
        "peak_rss_mb": peak_rss_mb(),
    }


def reference_full(epochs: int = 25, device: str = "cpu") -> dict[str, Any]:
    """The tutorial recipe as written: 25 epochs at batch 4, best validation weights, then the test split."""
    from benchmarks.reference import train_reference

    started = time.perf_counter()
    data = prepare_data(bench_config(), show_progress=False)
    result = train_reference(data, epochs=epochs, batch_size=4, device=device)
    return {
        "recipe": "reference",
        "seconds": time.perf_counter() - started,
        "epochs": epochs,
        "epoch_seconds": result.epoch_seconds,
        "test_accuracy": result.test_accuracy,
        "peak_rss_mb": peak_rss_mb(),
    }


# ------------------------------------------------------------------------------------------------- scaling


def scaling(factor: int, epochs: int = 2, cache_memory_mb: float | None = None) -> dict[str, Any]:
    """The default recipe on the training split replicated `factor` times (synthetic augmented copies)."""
    from benchmarks.replicate import replicate_training_split
    from plantlib.training.trainer import Trainer, build_image_cache

    changes: dict[str, Any] = {"epochs": epochs, "early_stopping_patience": None}
    if cache_memory_mb is not None:
        changes["cache_memory_mb"] = cache_memory_mb
    config = bench_config(**changes)
    data = replicate_training_split(prepare_data(config, show_progress=False), factor, BENCH_DIR / "replicated")
    cache = build_image_cache(config)
    trained = Trainer.build(config, data=data, show_progress=False, image_cache=cache).fit()
    train_s = [row["train_seconds"] for row in trained.history]
    return {
        "factor": factor,
        "train_images": train_images(data),
        "epoch_seconds": [row["seconds"] for row in trained.history],
        "first_epoch_s": trained.history[0]["seconds"],
        "steady_epoch_s": steady([row["seconds"] for row in trained.history]),
        "train_images_per_s": train_images(data) / steady(train_s),
        "test_accuracy": trained.test_metrics["accuracy"],
        "cache": cache.stats(),
        "peak_rss_mb": peak_rss_mb(),
    }


# ------------------------------------------------------------------------------------------------ tracking


def tracking(tracked: bool, epochs: int = 3) -> dict[str, Any]:
    """The default recipe for `epochs` epochs with MLflow tracking on (a fresh store) or off.

    Besides epoch times, the seconds the training thread spends inside the tracking hooks are timed directly:
    that is the cost tracking adds to the loop, free of the run-to-run noise of comparing two trainings.
    """
    from plantlib.experiments import tracking_callbacks
    from plantlib.training.trainer import Callback, Trainer

    store = BENCH_DIR / "tracking" / time.strftime("%Y%m%d-%H%M%S")
    config = bench_config(
        epochs=epochs,
        early_stopping_patience=None,
        tracking="on" if tracked else "off",
        tracking_uri=f"sqlite:///{store / 'mlflow.db'}",
        experiment="bench",
    )
    store.mkdir(parents=True, exist_ok=True)
    data = prepare_data(config, show_progress=False)
    hook_seconds: dict[str, list[float]] = {}

    class Timed(Callback):
        """Runs the tracking callbacks and times each hook call on the training thread."""

        def __init__(self, inner: list[Callback]) -> None:
            self.inner = inner

        def _timed(self, hook: str, *args: Any) -> None:
            started = time.perf_counter()
            for callback in self.inner:
                getattr(callback, hook)(*args)
            hook_seconds.setdefault(hook, []).append(time.perf_counter() - started)

        def on_fit_start(self, trainer: Trainer) -> None:
            self._timed("on_fit_start", trainer)

        def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
            self._timed("on_epoch_end", trainer, record)

        def on_fit_end(self, trainer: Trainer, result: Any) -> None:
            self._timed("on_fit_end", trainer, result)

    started = time.perf_counter()
    trained = Trainer.build(config, data=data, show_progress=False, callbacks=[Timed(tracking_callbacks(config))]).fit()
    return {
        "tracked": tracked,
        "epoch_seconds": [row["seconds"] for row in trained.history],
        "steady_epoch_s": steady([row["seconds"] for row in trained.history]),
        "hook_seconds": hook_seconds,
        "wall_seconds": time.perf_counter() - started,
        "test_accuracy": trained.test_metrics["accuracy"],
    }


MEASUREMENTS: dict[str, Callable[..., dict[str, Any]]] = {
    "epochs": epochs,
    "default_run": default_run,
    "inference": inference,
    "reference_full": reference_full,
    "scaling": scaling,
    "tracking": tracking,
    "cross_validation": cross_validation,
}


def main() -> None:
    os.environ.setdefault("PLANTLIB_PROGRESS", "off")
    name, arguments = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    torch.manual_seed(0)
    result = MEASUREMENTS[name](**arguments)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
