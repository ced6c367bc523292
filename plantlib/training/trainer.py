"""The Trainer: built in named steps (`training.build`, `training.optim`), then a fit loop that fits on a screen.

Each epoch reseeds augmentation and shuffling from (seed, epoch), so a run resumed from `last.pt` draws the
same batches as an uninterrupted one and reaches the same weights and history. The Trainer knows nothing of
tracking or tuning: it calls `Callback` hooks, so many Trainers can run one after another in one process.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from plantlib.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, CheckpointError, load_checkpoint, save_checkpoint
from plantlib.config import RunConfig
from plantlib.data import DecodedImageCache, PreparedData
from plantlib.distributed import barrier, per_rank_batch_size
from plantlib.errors import DiskFullError, PlantlibError
from plantlib.evaluation.metrics import compute_metrics, predictions_frame, save_evaluation, softmax_probabilities
from plantlib.io import write_json
from plantlib.models.backbones import normalization_for, set_backbone_trainable
from plantlib.processes import this_process
from plantlib.runs import read_run_info, write_run_info
from plantlib.runtime import autocast_dtype, epoch_seed, keep_freed_memory, loader_workers, seed_everything
from plantlib.training.build import (
    build_image_cache,
    build_loaders,
    build_run_model,
    create_run_dir,
    describe_run,
    prepare_run_data,
    run_facts,
    setup_process,
)
from plantlib.training.loop import loss_and_accuracy, set_training_mode, split_logits, train_one_epoch
from plantlib.training.optim import EarlyStopping, Optimization, build_optimization, steps_per_epoch_scheduler


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


# ------------------------------------------------------------------------------------------------ the Trainer


class Trainer:
    """Owns one run: builds its parts in named steps, then `fit` trains, checkpoints and tests."""

    def __init__(
        self,
        config: RunConfig,
        data: PreparedData | None = None,
        run_dir: Path | None = None,
        callbacks: Sequence[CallbackLike] = (),
        show_progress: bool = True,
        image_cache: DecodedImageCache | None = None,
    ) -> None:
        """`image_cache` lets several Trainers in one process (folds, trials) decode each image once."""
        self.config = config
        self.callbacks = as_callbacks(callbacks)
        self.epochs = 1 if config.fast else config.epochs
        self.max_batches = config.max_batches or (2 if config.fast else None)
        self.device, self.dist = setup_process(config)
        self.batch_size = per_rank_batch_size(config.batch_size, self.dist)
        self.train_dtype = autocast_dtype(config.precision, self.device, training=True)
        self.eval_dtype = autocast_dtype(config.precision, self.device, training=False)
        self.data = data or prepare_run_data(config, self.dist, show_progress)
        self.classes = self.data.classes

        keep_freed_memory()
        seed_everything(config.seed)
        self.model = build_run_model(config, len(self.classes), self.device)
        # What a training step calls: `model` itself, or its DistributedDataParallel wrapper under torchrun.
        self.parallel_model: nn.Module = self.model
        self._parallel_for_trainable: bool | None = None
        self.image_cache = image_cache or build_image_cache(config)
        self.loaders = build_loaders(
            {split: self.data.frame(split) for split in ("train", "val", "test")},
            config,
            normalization_for(config.backbone),
            self.batch_size,
            self.device,
            self.dist,
            self.image_cache,
            self.max_batches,
            loader_workers(config.num_workers, self.device),
        )
        steps = min(len(self.loaders.train), self.max_batches or len(self.loaders.train))
        self.optimization: Optimization = build_optimization(
            self.model, config, steps, self.epochs, self.device.type, self.train_dtype, len(self.data.classes)
        )
        self.run_dir = Path(run_dir) if run_dir is not None else create_run_dir(config, self.dist)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 1
        self.saved_epoch = 0  # the epoch last.pt holds
        self.elapsed_s = 0.0
        self.backbone_trainable = True
        self.status = "created"
        self.test_metrics: dict[str, Any] | None = None
        self.evaluate_test = True  # set by `fit`; False keeps the test split out of view (tuning trials)
        self.annotations: dict[str, Any] = {}  # facts callbacks add to run.json (e.g. where it is tracked)

    @property
    def is_main_process(self) -> bool:
        """Rank 0 (or a single-process run): the one process that writes files and prints."""
        return self.dist.is_main

    def log(self, message: str) -> None:
        """Print on rank 0 only, so a distributed run logs each line once."""
        if self.dist.is_main:
            print(message, flush=True)

    def annotate(self, **values: Any) -> None:
        """Add facts to run.json (now, and in every later write): how callbacks record what they did."""
        self.annotations.update(values)
        self._write_info(self.status)

    def facts(self) -> dict[str, Any]:
        return run_facts(
            self.config, self.data, self.loaders.sizes, self.model, self.device, self.dist, self.batch_size
        )

    # -- the loop ------------------------------------------------------------------------------------------
    def fit(self, evaluate_test: bool = True) -> TrainingResult:
        """Train from `start_epoch` to the end (or an early stop), checkpointing every epoch; then test.

        `evaluate_test=False` never looks at the test split: no test metrics or predictions are computed, saved,
        or handed to callbacks (a hyperparameter search must choose without seeing test scores).
        """
        self.evaluate_test = evaluate_test
        self._write_info("running")
        self.log(describe_run(self.run_dir, self.facts(), self.start_epoch, self.epochs))
        try:
            for callback in self.callbacks:
                callback.on_fit_start(self)
            for epoch in range(self.start_epoch, self.epochs + 1):
                record = self.run_epoch(epoch)
                for callback in self.callbacks:
                    callback.on_epoch_end(self, record)
                if self.optimization.early_stopping.should_stop:
                    self.log(
                        f"early stop: {self.config.early_stopping_monitor} has not improved for "
                        f"{self.optimization.early_stopping.bad_epochs} epochs"
                    )
                    break
            if evaluate_test:
                self.test_metrics = self.test()
        except BaseException as error:
            self._stopped(error)
            raise
        self._write_info("finished")
        result = self.result(self.test_metrics)
        for callback in self.callbacks:
            callback.on_fit_end(self, result)
        return result

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch, validate, checkpoint, record; the epoch's history row."""
        started = time.perf_counter()
        self._set_stage(epoch)
        seed = epoch_seed(self.config.seed, epoch)
        torch.manual_seed(seed + 7919 * self.dist.rank)  # each process draws its own augmentations
        self.loaders.train.generator.manual_seed(seed + 1)
        if self.loaders.train_sampler is not None:
            self.loaders.train_sampler.set_epoch(epoch)
        optimization = self.optimization
        lr = optimization.optimizer.param_groups[-1]["lr"]
        set_training_mode(self.model, self.backbone_trainable, self.config.frozen_blocks, self.config.freeze_bn)
        train_loss, train_accuracy = train_one_epoch(
            self.parallel_model,
            self.loaders.train,
            optimization,
            self.device,
            self.train_dtype,
            self.dist,
            self.max_batches,
            f"epoch {epoch}/{self.epochs}",
        )
        train_seconds = time.perf_counter() - started
        val_loss, val_accuracy = self.loss_and_accuracy("val")
        monitored = val_loss if self.config.early_stopping_monitor == "val_loss" else val_accuracy
        if not steps_per_epoch_scheduler(optimization.scheduler):
            optimization.scheduler.step(monitored)
        improved = optimization.early_stopping.update(monitored, epoch)
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
            "backbone_trainable": self.backbone_trainable,
        }
        self.history.append(record)
        if improved:
            self._save(BEST_CHECKPOINT, epoch)
        self._save(LAST_CHECKPOINT, epoch)
        self.saved_epoch = epoch
        if self.dist.is_main:
            write_json(self.run_dir / "history.json", self.history)
        self.log(
            f"epoch {epoch}/{self.epochs}  train loss {train_loss:.4f} acc {train_accuracy:.3f}  "
            f"val loss {val_loss:.4f} acc {val_accuracy:.3f}  lr {lr:.2e}  {seconds:.1f}s"
            + ("  *best" if improved else "")
        )
        return record

    def _set_stage(self, epoch: int) -> None:
        mode = self.config.finetune
        trainable = mode == "full" or (mode == "two_stage" and epoch > self.config.head_epochs)
        set_backbone_trainable(self.model, trainable, self.config.frozen_blocks)
        self.backbone_trainable = trainable
        if self.dist.enabled and self._parallel_for_trainable is not trainable:
            # DDP registers the parameters that need gradients when it is built: rebuild it per stage.
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.parallel_model = DistributedDataParallel(self.model, device_ids=device_ids)
            self._parallel_for_trainable = trainable

    def split_logits(self, split: str) -> torch.Tensor:
        """Logits of every evaluated image of `split` ("val" or "test") in split order, without augmentation."""
        total = len(self.loaders.targets[split])
        return split_logits(self.model, self.loaders.evaluation[split], total, self.device, self.eval_dtype, self.dist)

    def loss_and_accuracy(self, split: str) -> tuple[float, float]:
        """Mean loss and accuracy over a split with the current weights, each image counted once."""
        return loss_and_accuracy(self.split_logits(split), self.loaders.targets[split])

    # -- checkpoints -------------------------------------------------------------------------------------
    def checkpoint_payload(self, epoch: int, resumable: bool = True) -> dict[str, Any]:
        """A plain dict: what predicting needs (weights, config, classes, normalisation) and, when `resumable`,
        what `restore` needs too (optimiser, scheduler and scaler state: twice the weights' size with Adam)."""
        optimization = self.optimization
        normalization = normalization_for(self.config.backbone)
        payload: dict[str, Any] = {
            "model": self.model.state_dict(),
            "epoch": epoch,
            "early_stopping": vars(optimization.early_stopping).copy(),
            "history": list(self.history),
            "elapsed_s": self.elapsed_s,
            "config": self.config.to_dict(),
            "class_names": list(self.classes),
            "normalization": {"mean": list(normalization.mean), "std": list(normalization.std)},
        }
        if resumable:
            payload["optimizer"] = optimization.optimizer.state_dict()
            payload["scheduler"] = optimization.scheduler.state_dict()
            payload["scaler"] = optimization.scaler.state_dict()
        return payload

    def _save(self, name: str, epoch: int) -> None:
        """Rank 0 writes (the unwrapped model: the file loads in one process); the others wait for it. Only
        last.pt resumes, so best.pt holds no optimiser state."""
        if self.dist.is_main:
            payload = self.checkpoint_payload(epoch, resumable=name == LAST_CHECKPOINT)
            save_checkpoint(self.run_dir / name, payload)
        barrier(self.dist)

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue from a `last.pt`: weights, optimiser, scheduler, history and early-stopping state."""
        if "optimizer" not in checkpoint:
            raise CheckpointError(f"this checkpoint holds weights only; resume from the run's {LAST_CHECKPOINT}")
        saved = checkpoint["config"]
        if saved["backbone"] != self.config.backbone or checkpoint["class_names"] != list(self.classes):
            raise CheckpointError(
                f"checkpoint is for backbone {saved['backbone']} with classes {checkpoint['class_names']}, "
                f"but this run uses {self.config.backbone} with classes {self.classes}"
            )
        optimization = self.optimization
        self.model.load_state_dict(checkpoint["model"])
        optimization.optimizer.load_state_dict(checkpoint["optimizer"])
        optimization.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            optimization.scaler.load_state_dict(checkpoint["scaler"])
        optimization.early_stopping = EarlyStopping(**checkpoint["early_stopping"])
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
        run_dir = Path(run_dir)
        config = resumable_config(run_dir)
        trainer = cls(config, data, run_dir, callbacks, show_progress, image_cache)
        if not (run_dir / LAST_CHECKPOINT).is_file():
            if read_run_info(run_dir):  # it started before (a run made by the launcher has no run.json yet)
                trainer.log(f"{run_dir}: {saved_without_last(run_dir)}; training from epoch 1")
            return trainer
        trainer.restore(load_checkpoint(run_dir / LAST_CHECKPOINT))
        if trainer.start_epoch > trainer.epochs or trainer.optimization.early_stopping.should_stop:
            trainer.log(f"{run_dir}: all epochs were trained before the interruption; testing the best checkpoint")
        return trainer

    # -- after training ------------------------------------------------------------------------------------
    def test(self) -> dict[str, Any]:
        """Evaluate `best.pt` on the test split; save metrics and per-image predictions in the run dir."""
        barrier(self.dist)
        best = load_checkpoint(self.run_dir / BEST_CHECKPOINT, map_location=self.device)
        self.model.load_state_dict(best["model"])
        probs = softmax_probabilities(self.split_logits("test"))
        rows = self.loaders.rows["test"]
        metrics = compute_metrics(rows["target"].to_numpy(), probs, self.classes)
        if self.dist.is_main:
            frame = predictions_frame(rows["path"].tolist(), rows["target"].to_numpy(), probs, self.classes)
            save_evaluation(self.run_dir, metrics, frame)
        return metrics

    def result(self, test_metrics: dict[str, Any] | None) -> TrainingResult:
        stopping = self.optimization.early_stopping
        return TrainingResult(
            run_dir=self.run_dir,
            history=self.history,
            best_epoch=stopping.best_epoch,
            best_metric=stopping.best,
            stopped_early=stopping.should_stop,
            seconds=self.elapsed_s,
            test_metrics=test_metrics,
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
        if not self.dist.is_main:
            return
        stopping = self.optimization.early_stopping
        info = {
            "status": status,
            **self.facts(),
            "epochs_done": len(self.history),
            "best_epoch": stopping.best_epoch,
            "best_" + self.config.early_stopping_monitor: stopping.best,
            "train_seconds": round(self.elapsed_s, 2),
            "seconds_per_epoch": round(self.elapsed_s / max(1, len(self.history)), 2),
            **self.annotations,
        }
        if status == "running":  # who runs it: a reader tells a run whose process died from one still going
            info["process"] = this_process()
        metrics = self.test_metrics
        if not self.evaluate_test:
            info["test_evaluated"] = False
        if metrics is not None:
            info["test"] = {k: metrics.get(k) for k in ("accuracy", "f1", "roc_auc", "ece", "n") if k in metrics}
            info["test"]["ci95"] = metrics.get("ci95")
        write_run_info(self.run_dir, info)


def saved_without_last(run_dir: Path) -> str:
    """What a run directory without `last.pt` still holds, for the resume message: the epoch `best.pt` holds
    (weights only: resuming needs last.pt's optimiser and scheduler state) or the epochs history.json records."""
    best = Path(run_dir) / BEST_CHECKPOINT
    if best.is_file():
        try:
            epoch = load_checkpoint(best).get("epoch")
        except CheckpointError:
            return f"{LAST_CHECKPOINT} is missing (resuming needs it) and {BEST_CHECKPOINT} cannot be read"
        return (
            f"{LAST_CHECKPOINT} is missing; {BEST_CHECKPOINT} holds epoch {epoch}, but weights only "
            f"(resuming needs {LAST_CHECKPOINT}, which also holds the optimiser and scheduler state)"
        )
    try:
        history = json.loads((Path(run_dir) / "history.json").read_text(encoding="utf-8"))
        epochs = [int(row["epoch"]) for row in history]
    except (OSError, ValueError, TypeError, KeyError):
        epochs = []
    if epochs:
        return f"history.json records epoch {max(epochs)}, but {LAST_CHECKPOINT} and {BEST_CHECKPOINT} are missing"
    return "no epoch was saved yet"


def resumable_config(run_dir: Path) -> RunConfig:
    """The saved config of a run that can be resumed; a clear error for anything else."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise PlantlibError(f"cannot resume {run_dir}: it is not a run directory (no config.json)")
    if read_run_info(run_dir).get("status") == "finished":
        raise PlantlibError(f"run {run_dir} has already finished; start a new run instead of --resume")
    return RunConfig.from_json(run_dir / "config.json")


def train(config: RunConfig, callbacks: Sequence[CallbackLike] = (), show_progress: bool = True) -> TrainingResult:
    """The one-call happy path: prepare data, build the model, fit, test."""
    return Trainer(config, callbacks=callbacks, show_progress=show_progress).fit()


def result_from_run_dir(run_dir: Path) -> TrainingResult:
    """The `TrainingResult` of a finished run, read back from its files (e.g. after a torchrun job)."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    config = RunConfig.from_json(run_dir / "config.json")
    history_file, metrics_file = run_dir / "history.json", run_dir / "metrics.json"
    history = json.loads(history_file.read_text(encoding="utf-8")) if history_file.is_file() else []
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else None
    return TrainingResult(
        run_dir=run_dir,
        history=history,
        best_epoch=int(info.get("best_epoch", 0)),
        best_metric=info.get("best_" + config.early_stopping_monitor),
        stopped_early=len(history) < (1 if config.fast else config.epochs),
        seconds=float(info.get("train_seconds", 0.0)),
        test_metrics=metrics,
    )
