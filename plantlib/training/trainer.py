"""The Trainer: takes a run's parts (`training.build.build_run`) and owns the loop, checkpoints and callbacks.

Each epoch reseeds augmentation and shuffling from (seed, epoch), so a run resumed from `last.pt` draws the
same batches as an uninterrupted one and reaches the same weights and history. The Trainer knows nothing of
tracking or tuning: it calls `Callback` hooks, so many Trainers can run one after another in one process.
Building one does no file or network I/O; its run directory is made when `fit` starts (or given).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from plantlib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, store_calibration
from plantlib.config import RunConfig
from plantlib.data import DataWarning, DecodedImageCache, PreparedData
from plantlib.distributed import barrier, broadcast
from plantlib.errors import DiskFullError, PlantlibError
from plantlib.evaluation.calibration import (
    apply_temperature,
    calibration_metrics,
    temperature_calibration,
    temperature_of,
)
from plantlib.evaluation.metrics import compute_metrics, predictions_frame, save_evaluation, softmax_probabilities
from plantlib.processes import this_process
from plantlib.runs import BEST_CHECKPOINT, LAST_CHECKPOINT, RunDir, read_run_info
from plantlib.runtime import epoch_seed
from plantlib.training.build import RunParts, build_run, describe_run, run_facts
from plantlib.training.loop import StagedModel, loss_and_accuracy, split_logits, train_one_epoch
from plantlib.training.optim import steps_per_epoch_scheduler
from plantlib.training.state import checkpoint_payload, restore_parts
from plantlib.training.stopping import EarlyStopping, build_early_stopping


class StopTraining(Exception):
    """Raised by a callback to end a run early on purpose; run.json records `status` (e.g. "pruned")."""

    def __init__(self, status: str, reason: str = "") -> None:
        super().__init__(reason or status)
        self.status = status


class Callback:
    """Hooks the Trainer calls; override the ones you need (tracking, pruning, live plots, fault injection)."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch of this `fit` (after the run directory and run.json exist)."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After an epoch's checkpoints and history are written; raising here stops the run."""

    def on_fit_end(self, trainer: Trainer, result: TrainingResult) -> None:
        """After the test split is evaluated and run.json says finished; `result.test_metrics` is None (and the
        run directory holds no metrics.json or predictions.csv) when `fit(evaluate_test=False)` left it out."""

    def on_fit_failed(self, trainer: Trainer, status: str) -> None:
        """When fit ends by an exception: "interrupted" (Ctrl-C), "failed", or a `StopTraining` status."""


class EpochEndFunction(Callback):
    """A plain function `f(trainer, record)` used as an `on_epoch_end` hook."""

    def __init__(self, function: Callable[[Trainer, dict[str, Any]], None]) -> None:
        self.function = function

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.function(trainer, record)


CallbackLike = Callback | Callable[["Trainer", dict[str, Any]], None]


def as_callbacks(items: Sequence[CallbackLike]) -> list[Callback]:
    return [item if isinstance(item, Callback) else EpochEndFunction(item) for item in items]


@dataclass
class TrainingResult:
    run_dir: Path
    history: list[dict[str, Any]]
    best_epoch: int
    best_metric: float | None
    stopped_early: bool
    seconds: float
    test_metrics: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def best_record(self) -> dict[str, Any] | None:
        """The history record of the epoch `best.pt` holds (None before any epoch finished)."""
        rows = [row for row in self.history if int(row["epoch"]) == self.best_epoch]
        return rows[-1] if rows else None


# ------------------------------------------------------------------------------------------------ the Trainer


class Trainer:
    """Owns one run's loop: epochs, checkpoints, resume, the test evaluation, run.json and the callbacks."""

    def __init__(self, parts: RunParts, run_dir: Path | None = None, callbacks: Sequence[CallbackLike] = ()) -> None:
        """`run_dir` None: a new run directory is made when `fit` starts."""
        self.parts = parts
        self.run_dir: Path | None = Path(run_dir) if run_dir is not None else None
        self.callbacks = as_callbacks(callbacks)
        self.staged = StagedModel(parts.model, parts.device, parts.dist)
        self.stopping = build_early_stopping(parts.config)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 1
        self.saved_epoch = 0  # the epoch last.pt holds
        self.elapsed_s = 0.0
        self.status = "created"
        self.test_metrics: dict[str, Any] | None = None
        self.evaluate_test = True  # set by `fit`; False keeps the test split out of view (tuning trials)
        self.annotations: dict[str, Any] = {}  # facts callbacks add to run.json (e.g. where it is tracked)

    @classmethod
    def build(
        cls,
        config: RunConfig,
        data: PreparedData | None = None,
        run_dir: Path | None = None,
        callbacks: Sequence[CallbackLike] = (),
        show_progress: bool = True,
        image_cache: DecodedImageCache | None = None,
    ) -> Trainer:
        """Build the parts of a run of `config` (`build_run`) and a Trainer for them."""
        return cls(build_run(config, data, image_cache, show_progress), run_dir, callbacks)

    # What callbacks read: the run's config, model and classes.
    @property
    def config(self) -> RunConfig:
        return self.parts.config

    @property
    def model(self) -> torch.nn.Module:
        return self.parts.model

    @property
    def classes(self) -> list[str]:
        return self.parts.classes

    @property
    def epochs(self) -> int:
        return self.parts.epochs

    @property
    def is_main_process(self) -> bool:
        """Rank 0 (or a single-process run): the one process that writes files and prints."""
        return self.parts.dist.is_main

    def log(self, message: str) -> None:
        """Print on rank 0 only, so a distributed run logs each line once."""
        if self.is_main_process:
            print(message, flush=True)

    def annotate(self, **values: Any) -> None:
        """Add facts to run.json (now, and in every later write): how callbacks record what they did."""
        self.annotations.update(values)
        self._write_info(self.status)

    def facts(self) -> dict[str, Any]:
        parts = self.parts
        sizes = parts.loaders.sizes
        return run_facts(parts.config, parts.data, sizes, parts.model, parts.device, parts.dist, parts.batch_size)

    # -- the loop ------------------------------------------------------------------------------------------
    def fit(self, evaluate_test: bool = True) -> TrainingResult:
        """Train from `start_epoch` to the end (or an early stop), checkpointing every epoch; then test.

        `evaluate_test=False` never looks at the test split: no test metrics or predictions are computed, saved,
        or handed to callbacks (a hyperparameter search must choose without seeing test scores).
        """
        self.evaluate_test = evaluate_test
        if self.run_dir is None:
            self.run_dir = create_run_dir(self.parts)
        self._write_info("running")
        self.log(describe_run(self.run_dir, self.facts(), self.start_epoch, self.epochs))
        try:
            for callback in self.callbacks:
                callback.on_fit_start(self)
            for epoch in range(self.start_epoch, self.epochs + 1):
                record = self.run_epoch(epoch)
                for callback in self.callbacks:
                    callback.on_epoch_end(self, record)
                if self.stopping.should_stop:
                    self.log(
                        f"early stop: {self.config.early_stopping_monitor} has not improved for "
                        f"{self.stopping.bad_epochs} epochs"
                    )
                    break
            self.calibrate()
            if evaluate_test:
                self.test_metrics = self.test()
        except BaseException as error:
            self._stopped(error)
            raise
        self._write_info("finished")
        result = self.result()
        for callback in self.callbacks:
            callback.on_fit_end(self, result)
        return result

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch, validate, checkpoint, record; the epoch's history row."""
        parts, config = self.parts, self.parts.config
        started = time.perf_counter()
        network = self.staged.enter(epoch, config)
        seed = epoch_seed(config.seed, epoch)
        torch.manual_seed(seed + 7919 * parts.dist.rank)  # each process draws its own augmentations
        parts.loaders.train.generator.manual_seed(seed + 1)
        if parts.loaders.train_sampler is not None:
            parts.loaders.train_sampler.set_epoch(epoch)
        optimization = parts.optimization
        lr = optimization.optimizer.param_groups[-1]["lr"]
        description = f"epoch {epoch}/{self.epochs}"
        train_loss, train_accuracy = train_one_epoch(
            network,
            parts.loaders.train,
            optimization,
            parts.device,
            parts.train_dtype,
            parts.dist,
            parts.max_batches,
            description,
        )
        train_seconds = time.perf_counter() - started
        val_loss, val_accuracy = self.loss_and_accuracy("val")
        monitored = val_loss if config.early_stopping_monitor == "val_loss" else val_accuracy
        if not steps_per_epoch_scheduler(optimization.scheduler):
            optimization.scheduler.step(monitored)
        improved = self.stopping.update(monitored, epoch)
        seconds = time.perf_counter() - started
        self.elapsed_s += seconds
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": lr,
            "seconds": round(seconds, 3),
            "train_seconds": round(train_seconds, 3),
            "backbone_trainable": self.staged.backbone_trainable,
        }
        self._record(epoch, record, improved)
        self.log(
            f"{description}  train loss {train_loss:.4f} acc {train_accuracy:.3f}  "
            f"val loss {val_loss:.4f} acc {val_accuracy:.3f}  lr {lr:.2e}  {seconds:.1f}s"
            + ("  *best" if improved else "")
        )
        return record

    def _record(self, epoch: int, record: dict[str, Any], improved: bool) -> None:
        """Append the epoch to the history, then write best.pt (when it improved), last.pt and history.json."""
        self.history.append(record)
        if improved:
            self._save(BEST_CHECKPOINT, epoch)
        self._save(LAST_CHECKPOINT, epoch)
        self.saved_epoch = epoch
        if self.is_main_process:
            RunDir(self.run_dir).write_history(self.history)

    def split_logits(self, split: str) -> torch.Tensor:
        """Logits of every evaluated image of `split` ("val" or "test") in split order, without augmentation."""
        parts = self.parts
        total = len(parts.loaders.targets[split])
        loader = parts.loaders.evaluation[split]
        return split_logits(parts.model, loader, total, parts.device, parts.eval_dtype, parts.dist)

    def loss_and_accuracy(self, split: str) -> tuple[float, float]:
        """Mean loss and accuracy over a split with the current weights, each image counted once."""
        return loss_and_accuracy(self.split_logits(split), self.parts.loaders.targets[split])

    # -- checkpoints -------------------------------------------------------------------------------------
    def _save(self, name: str, epoch: int) -> None:
        """Rank 0 writes (the unwrapped model: the file loads in one process); the others wait for it. Only
        last.pt resumes, so best.pt holds no optimiser state."""
        if self.is_main_process:
            resumable = name == LAST_CHECKPOINT
            payload = checkpoint_payload(self.parts, epoch, self.stopping, self.history, self.elapsed_s, resumable)
            save_checkpoint(Path(self.run_dir) / name, payload)
        barrier(self.parts.dist)

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue from a `last.pt`: weights, optimiser, scheduler, history and early-stopping state."""
        restore_parts(self.parts, checkpoint)
        self.stopping = EarlyStopping(**checkpoint["early_stopping"])
        self.history = list(checkpoint["history"])
        self.elapsed_s = float(checkpoint.get("elapsed_s", 0.0))
        self.saved_epoch = int(checkpoint["epoch"])
        self.start_epoch = self.saved_epoch + 1

    @classmethod
    def resume(
        cls,
        run_dir: Path,
        callbacks: Sequence[CallbackLike] = (),
        show_progress: bool = True,
        data: PreparedData | None = None,
        image_cache: DecodedImageCache | None = None,
    ) -> Trainer:
        """A Trainer that continues `run_dir` from its `last.pt` (from epoch 1 when no epoch was saved yet)."""
        run = RunDir(run_dir)
        trainer = cls.build(resumable_config(run.path), data, run.path, callbacks, show_progress, image_cache)
        if not run.last_checkpoint.is_file():
            if run.read_info():  # it started before (a run made by the launcher has no run.json yet)
                trainer.log(f"{run.path}: {saved_without_last(run.path)}; training from epoch 1")
            return trainer
        trainer.restore(load_checkpoint(run.last_checkpoint))
        if trainer.start_epoch > trainer.epochs or trainer.stopping.should_stop:
            trainer.log(f"{run.path}: all epochs were trained before the interruption; testing the best checkpoint")
        return trainer

    # -- after training ------------------------------------------------------------------------------------
    def calibrate(self) -> None:
        """Fit temperature scaling and the conformal scores on the validation split with best.pt's weights and store
        them in best.pt (`calibration`), before the test split is looked at. With no validation image best.pt stays
        uncalibrated, and a warning says so."""
        parts = self.parts
        barrier(parts.dist)
        best_file = RunDir(self.run_dir).best_checkpoint
        targets = parts.loaders.targets["val"]
        if len(targets) == 0:
            if self.is_main_process:
                warnings.warn(
                    "the validation split is empty, so best.pt stays uncalibrated (temperature 1, no prediction "
                    "sets); give the run validation images (val_fraction) to calibrate it",
                    DataWarning,
                    stacklevel=2,
                )
            return
        self.model.load_state_dict(load_checkpoint(best_file, map_location=parts.device)["model"])
        logits = self.split_logits("val")
        if self.is_main_process:
            store_calibration(best_file, temperature_calibration(logits.numpy(), targets.cpu().numpy()))
        barrier(parts.dist)

    def test(self) -> dict[str, Any]:
        """Evaluate `best.pt` on the test split with its calibration; save metrics (the uncalibrated ECE and log
        loss beside them) and per-image predictions in the run dir."""
        parts = self.parts
        barrier(parts.dist)
        best = load_checkpoint(RunDir(self.run_dir).best_checkpoint, map_location=parts.device)
        self.model.load_state_dict(best["model"])
        logits = self.split_logits("test")
        raw = softmax_probabilities(logits)
        calibration = best.get("calibration")
        probs = apply_temperature(logits.numpy(), temperature_of(calibration)) if calibration else raw
        rows = parts.loaders.rows["test"]
        metrics = compute_metrics(rows["target"].to_numpy(), probs, self.classes)
        metrics |= calibration_metrics(rows["target"].to_numpy(), raw, probs, calibration, self.classes)
        if self.is_main_process:
            frame = predictions_frame(rows["path"].tolist(), rows["target"].to_numpy(), probs, self.classes)
            save_evaluation(self.run_dir, metrics, frame)
        return metrics

    def result(self) -> TrainingResult:
        stopping = self.stopping
        return TrainingResult(
            run_dir=Path(self.run_dir),
            history=self.history,
            best_epoch=stopping.best_epoch,
            best_metric=stopping.best,
            stopped_early=stopping.should_stop,
            seconds=self.elapsed_s,
            test_metrics=self.test_metrics,
        )

    def _stopped(self, error: BaseException) -> None:
        """Record an early end honestly in run.json, say what last.pt holds, and tell the callbacks."""
        if isinstance(error, StopTraining):
            status = error.status
        else:
            status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        with contextlib.suppress(DiskFullError):  # on a full disk run.json may not be writable either
            self._write_info(status)
        if isinstance(error, (KeyboardInterrupt, DiskFullError)):
            saved = f"last.pt holds epoch {self.saved_epoch}" if self.saved_epoch else "no epoch was saved yet"
            self.log(f"\n{status}; {saved}. Resume with: plantlib train --resume {self.run_dir}")
        for callback in self.callbacks:
            callback.on_fit_failed(self, status)

    def _write_info(self, status: str) -> None:
        self.status = status
        if not self.is_main_process or self.run_dir is None:
            return
        info = {
            "status": status,
            **self.facts(),
            **progress_facts(self.history, self.stopping, self.elapsed_s),
            **self.annotations,
        }
        if status == "running":  # who runs it: a reader tells a run whose process died from one still going
            info["process"] = this_process()
        if not self.evaluate_test:
            info["test_evaluated"] = False
        if self.test_metrics is not None:
            info["test"] = test_headline(self.test_metrics)
        RunDir(self.run_dir).write_info(info)


def create_run_dir(parts: RunParts) -> Path:
    """A new run directory holding config.json, made by rank 0 and shared with the other ranks."""
    made = RunDir.create(parts.config).path if parts.dist.is_main else None
    return Path(broadcast(made, parts.dist))


def progress_facts(history: list[dict[str, Any]], stopping: EarlyStopping, elapsed_s: float) -> dict[str, Any]:
    """run.json's account of the training so far: epochs, the best epoch and its monitored value, timings."""
    return {
        "epochs_done": len(history),
        "best_epoch": stopping.best_epoch,
        "best_" + stopping.monitor: stopping.best,
        "train_seconds": round(elapsed_s, 2),
        "seconds_per_epoch": round(elapsed_s / max(1, len(history)), 2),
    }


def test_headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """run.json's test summary: headline metrics and their intervals."""
    headline = {key: metrics.get(key) for key in ("accuracy", "f1", "roc_auc", "ece", "n") if key in metrics}
    return {**headline, "ci95": metrics.get("ci95")}


def saved_without_last(run_dir: Path) -> str:
    """What a run directory without `last.pt` still holds, for the resume message: the epoch `best.pt` holds
    (weights only: resuming needs last.pt's optimiser and scheduler state) or the epochs history.json records."""
    run = RunDir(run_dir)
    if run.best_checkpoint.is_file():
        try:
            epoch = load_checkpoint(run.best_checkpoint).get("epoch")
        except CheckpointError:
            return f"{LAST_CHECKPOINT} is missing (resuming needs it) and {BEST_CHECKPOINT} cannot be read"
        return (
            f"{LAST_CHECKPOINT} is missing; {BEST_CHECKPOINT} holds epoch {epoch}, but weights only "
            f"(resuming needs {LAST_CHECKPOINT}, which also holds the optimiser and scheduler state)"
        )
    try:
        epochs = [int(row["epoch"]) for row in run.read_history()]
    except (ValueError, TypeError, KeyError):
        epochs = []
    if epochs:
        history = run.history_file.name
        return f"{history} records epoch {max(epochs)}, but {LAST_CHECKPOINT} and {BEST_CHECKPOINT} are missing"
    return "no epoch was saved yet"


def resumable_config(run_dir: Path) -> RunConfig:
    """The saved config of a run that can be resumed; a clear error for anything else."""
    run = RunDir(run_dir)
    if not run.is_run():
        raise PlantlibError(f"cannot resume {run.path}: it is not a run directory (no {run.config_file.name})")
    if read_run_info(run.path).get("status") == "finished":
        raise PlantlibError(f"run {run.path} has already finished; start a new run instead of --resume")
    return run.read_config()


def result_from_run_dir(run_dir: Path) -> TrainingResult:
    """The `TrainingResult` of a finished run, read back from its files (e.g. after a torchrun job)."""
    run = RunDir(run_dir)
    info, config, history = run.read_info(), run.read_config(), run.read_history()
    return TrainingResult(
        run_dir=run.path,
        history=history,
        best_epoch=int(info.get("best_epoch", 0)),
        best_metric=info.get("best_" + config.early_stopping_monitor),
        stopped_early=len(history) < (1 if config.fast else config.epochs),
        seconds=float(info.get("train_seconds", 0.0)),
        test_metrics=run.read_metrics(),
    )
