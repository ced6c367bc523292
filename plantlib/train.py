"""The Trainer: fit loop, optimiser and scheduler, early stopping, checkpoints and exact resume.

Each epoch reseeds augmentation and shuffling from (seed, epoch), so a run resumed from `last.pt` draws the
same batches as an uninterrupted one and reaches the same weights and history.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from plantlib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from plantlib.config import RunConfig
from plantlib.data import (
    DecodedImageCache,
    ImageDataset,
    PreparedData,
    eval_transform,
    make_loader,
    prepare_data,
    train_transform,
)
from plantlib.data.dataset import resize_side
from plantlib.distributed import (
    all_sum,
    barrier,
    broadcast,
    device_for,
    init_distributed,
    launched_by_torchrun,
    per_rank_batch_size,
    shard,
    unshard,
)
from plantlib.errors import ConfigError, PlantlibError
from plantlib.evaluate import (
    compute_metrics,
    predict_logits,
    predictions_frame,
    save_evaluation,
    softmax_probabilities,
)
from plantlib.io import write_json
from plantlib.models import (
    Classifier,
    build_model,
    frozen_modules,
    model_size_mb,
    normalization_for,
    parameter_counts,
    resolve_frozen_blocks,
    set_backbone_trainable,
    weights_source,
)
from plantlib.paths import artifacts_dir
from plantlib.progress import progress
from plantlib.runs import new_run_dir, read_run_info, write_run_info
from plantlib.runtime import (
    autocast_dtype,
    epoch_seed,
    keep_freed_memory,
    loader_workers,
    maybe_autocast,
    resolve_device,
    rng_state,
    seed_everything,
)


class Callback(Protocol):
    """Hook called after every epoch (live plots in notebooks, fault injection in tests)."""

    def __call__(self, trainer: Trainer, record: dict[str, Any]) -> None: ...


@dataclass
class EarlyStopping:
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs."""

    monitor: str = "val_loss"
    patience: int | None = 5
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record this epoch's value; True when it is the best so far."""
        sign = -1.0 if self.monitor.endswith("loss") else 1.0
        improved = self.best is None or sign * (value - self.best) > self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience


@dataclass
class TrainingResult:
    run_dir: Path
    history: list[dict[str, Any]]
    best_epoch: int
    best_metric: float | None
    stopped_early: bool
    seconds: float
    test_metrics: dict[str, Any] | None = field(default=None, repr=False)


def build_optimizer(model: Classifier, config: RunConfig) -> torch.optim.Optimizer:
    """Two parameter groups: the backbone learns `backbone_lr_factor` times slower than the new head."""
    groups = [
        {"params": list(model.backbone.parameters()), "lr": config.learning_rate * config.backbone_lr_factor},
        {"params": list(model.head.parameters()), "lr": config.learning_rate},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=config.momentum, weight_decay=config.weight_decay)
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(groups, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig, steps_per_epoch: int, epochs: int) -> Any:
    """A scheduler stepped after every batch, except `plateau`, which steps on the monitored value per epoch."""
    total = max(1, epochs * steps_per_epoch)
    warmup = config.warmup_epochs * steps_per_epoch
    if config.scheduler == "plateau":
        mode = "min" if config.early_stopping_monitor.endswith("loss") else "max"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=config.gamma, patience=1)
    if config.scheduler == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
        if config.scheduler == "cosine":
            done = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
            return warm * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * done)))
        if config.scheduler == "step":
            return warm * config.gamma ** (step // (config.step_size * steps_per_epoch))
        return warm

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_one_epoch(trainer: Trainer, loader: DataLoader, epoch: int) -> tuple[float, float]:
    """One pass over the training loader (this process's share under DDP); mean loss and accuracy over all."""
    model, config, net = trainer.model, trainer.config, trainer.train_model
    model.train()
    if not trainer.backbone_trainable:
        model.backbone.eval()  # a frozen backbone is a fixed feature extractor
    else:
        for module in frozen_modules(model, config.frozen_blocks):
            module.eval()  # frozen leading blocks: fixed feature extractors too
        if config.freeze_bn:
            # Pretrained statistics beat ones re-estimated from a few hundred augmented images.
            for module in model.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
    total_loss, correct, seen = 0.0, 0, 0
    limit = trainer.max_batches or len(loader)
    bar = progress(total=min(limit, len(loader)), desc=f"epoch {epoch}/{trainer.epochs}", unit="batch", leave=False)
    with bar:
        for batch_index, (images, targets) in enumerate(loader):
            if batch_index >= limit:
                break
            images = images.to(trainer.device, memory_format=torch.channels_last, non_blocking=True)
            targets = targets.to(trainer.device, non_blocking=True)
            with maybe_autocast(trainer.device, trainer.train_dtype):
                logits = net(images)
                loss = trainer.loss_fn(logits.float(), targets)
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.scaler.scale(loss).backward()
            if config.grad_clip is not None:
                trainer.scaler.unscale_(trainer.optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            trainer.scaler.step(trainer.optimizer)
            trainer.scaler.update()
            if not isinstance(trainer.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                trainer.scheduler.step()
            total_loss += loss.item() * len(targets)
            correct += (logits.argmax(1) == targets).sum().item()
            seen += len(targets)
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
    total_loss, correct, seen = all_sum([total_loss, correct, seen], trainer.dist)
    return total_loss / max(seen, 1), correct / max(seen, 1)


def split_logits(trainer: Trainer, split: str) -> torch.Tensor:
    """Logits of every evaluated image of `split` in split order; under DDP each rank computes its shard."""
    local = predict_logits(trainer.model, trainer.eval_loaders[split], trainer.device, trainer.eval_dtype)
    return torch.from_numpy(unshard(local.numpy(), len(trainer.eval_targets[split]), trainer.dist))


def evaluate_epoch(trainer: Trainer, split: str = "val") -> tuple[float, float]:
    """Mean loss and accuracy over a split, without augmentation or gradient, each image counted once."""
    logits, targets = split_logits(trainer, split), trainer.eval_targets[split]
    loss = nn.functional.cross_entropy(logits, targets).item()
    return loss, (logits.argmax(1) == targets).double().mean().item()


class Trainer:
    """Owns one run: data, model, optimiser, scheduler, early stopping and the run directory."""

    def __init__(
        self,
        config: RunConfig,
        data: PreparedData | None = None,
        run_dir: Path | None = None,
        callbacks: Sequence[Callback] = (),
        show_progress: bool = True,
    ) -> None:
        self.config = config
        self.callbacks = list(callbacks)
        self.epochs = 1 if config.fast else config.epochs
        self.max_batches = config.max_batches or (2 if config.fast else None)
        self.device = (
            device_for(config.device, int(os.environ.get("LOCAL_RANK", "0")))
            if launched_by_torchrun()
            else resolve_device(config.device)
        )
        self.dist = init_distributed(self.device, config.dist_timeout_s)
        self.batch_size = per_rank_batch_size(config.batch_size, self.dist)
        if config.sync_bn and not (self.dist.enabled and self.device.type == "cuda"):
            raise ConfigError("sync_bn=True needs a distributed run on CUDA GPUs (NCCL); drop it for this run")
        self.train_dtype = autocast_dtype(config.precision, self.device, training=True)
        self.eval_dtype = autocast_dtype(config.precision, self.device, training=False)
        self.data = data or self._prepare_data(show_progress)
        self.classes = self.data.classes
        self.normalization = normalization_for(config.backbone)

        keep_freed_memory()
        seed_everything(config.seed)
        # Fixed BatchNorm (freeze_bn, or a head-only run) is folded into the convolutions: same function, faster.
        self.bn_folded = config.freeze_bn or config.finetune == "head"
        self.model = build_model(
            config.backbone,
            len(self.classes),
            config.pretrained,
            head=config.head,
            dropout=config.dropout,
            fold_bn=self.bn_folded,
        ).to(self.device, memory_format=torch.channels_last)
        frozen_modules(self.model, config.frozen_blocks)  # an impossible frozen_blocks fails before any work
        self.frozen_blocks = resolve_frozen_blocks(config.backbone, config.frozen_blocks)
        if config.sync_bn:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.train_model: nn.Module = self.model  # wrapped in DistributedDataParallel per stage under torchrun
        self._wrapped_trainable: bool | None = None
        self.image_cache = cache = DecodedImageCache(
            max_side=resize_side(config.image_size),
            memory_budget_mb=config.cache_memory_mb,
            spill_dir=artifacts_dir() / "cache",
        )
        self.train_set = self._dataset("train", train_transform(config.image_size, self.normalization), cache)
        self.val_set = self._dataset("val", eval_transform(config.image_size, self.normalization), cache)
        self.test_set = self._dataset("test", eval_transform(config.image_size, self.normalization), cache)
        if len(self.train_set) == 0 or len(self.val_set) == 0:
            raise PlantlibError(
                f"the split leaves {len(self.train_set)} training and {len(self.val_set)} validation images; "
                "add images or change val_fraction/test_fraction"
            )
        self.train_sampler = (
            DistributedSampler(self.train_set, self.dist.world_size, self.dist.rank, shuffle=True, seed=config.seed)
            if self.dist.enabled
            else None
        )
        share = len(self.train_sampler) if self.train_sampler else len(self.train_set)
        self.num_workers = loader_workers(config.num_workers, self.device)
        pin = self.device.type == "cuda"
        if self.num_workers:
            for dataset in (self.train_set, self.val_set, self.test_set):
                dataset.warm_cache()  # decode once here; forked workers then share the pixels
        self.train_loader = make_loader(
            self.train_set,
            self.batch_size,
            shuffle=True,
            seed=config.seed,
            num_workers=self.num_workers,
            drop_last=share % self.batch_size == 1,  # BatchNorm cannot train on one image
            sampler=self.train_sampler,
            pin_memory=pin,
        )
        self.eval_loaders: dict[str, DataLoader] = {}
        self.eval_targets: dict[str, torch.Tensor] = {}
        for split, dataset in (("val", self.val_set), ("test", self.test_set)):
            evaluated = self._evaluated_part(dataset)
            self.eval_targets[split] = torch.tensor([dataset.labels[i] for i in range(len(evaluated))])
            self.eval_loaders[split] = make_loader(
                shard(evaluated, self.dist),
                self.batch_size,
                shuffle=False,
                seed=config.seed,
                num_workers=self.num_workers,
                pin_memory=pin,
            )

        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        # fp16 gradients underflow without loss scaling; the scaler is a pass-through for fp32 and bf16.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.train_dtype == torch.float16)
        self.optimizer = build_optimizer(self.model, config)
        steps = min(len(self.train_loader), self.max_batches or len(self.train_loader))
        self.scheduler = build_scheduler(self.optimizer, config, steps, self.epochs)
        self.early_stopping = EarlyStopping(
            config.early_stopping_monitor, config.early_stopping_patience, config.early_stopping_min_delta
        )
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 1
        self.elapsed_s = 0.0
        self.backbone_trainable = True
        if run_dir is None:
            created = new_run_dir(config.backbone, config.output_dir) if self.dist.is_main else None
            run_dir = broadcast(created, self.dist)  # one run directory for the whole job, made by rank 0
            if self.dist.is_main:
                config.to_json(run_dir / "config.json")
        self.run_dir = Path(run_dir)

    @property
    def val_loader(self) -> DataLoader:
        return self.eval_loaders["val"]

    @property
    def test_loader(self) -> DataLoader:
        return self.eval_loaders["test"]

    def log(self, message: str) -> None:
        """Print on rank 0 only, so a distributed run logs each line once."""
        if self.dist.is_main:
            print(message, flush=True)

    def _prepare_data(self, show_progress: bool) -> PreparedData:
        """Rank 0 fetches, scans and splits first; the other ranks then read what it wrote."""
        if not self.dist.enabled:
            return prepare_data(self.config, show_progress=show_progress)
        data = prepare_data(self.config, show_progress=show_progress) if self.dist.is_main else None
        barrier(self.dist)
        return data or prepare_data(self.config.replace(new_split=False), show_progress=False)

    def _evaluated_part(self, dataset: ImageDataset) -> Dataset:
        """The images an evaluation covers: all, or the first `max_batches` global batches (smoke runs)."""
        if not self.max_batches:
            return dataset
        return Subset(dataset, range(min(len(dataset), self.max_batches * self.config.batch_size)))

    def _dataset(self, split: str, transform: Any, cache: DecodedImageCache) -> ImageDataset:
        rows = self.data.frame(split)
        return ImageDataset(rows["file"].tolist(), rows["target"].tolist(), transform, cache)

    # -- the loop ------------------------------------------------------------------------------------------
    def fit(self) -> TrainingResult:
        """Train from `start_epoch` to the end (or early stop), checkpointing every epoch; then test."""
        self._write_info("running")
        self.log(self.describe())
        try:
            for epoch in range(self.start_epoch, self.epochs + 1):
                record = self._run_epoch(epoch)
                for callback in self.callbacks:
                    callback(self, record)
                if self.early_stopping.should_stop:
                    self.log(
                        f"early stop: {self.config.early_stopping_monitor} has not improved for "
                        f"{self.early_stopping.bad_epochs} epochs"
                    )
                    break
        except KeyboardInterrupt:
            self._write_info("interrupted")
            done = self.history[-1]["epoch"] if self.history else 0
            self.log(
                f"\ninterrupted after epoch {done}; last.pt is saved. Resume with: "
                f"plantlib train --resume {self.run_dir}"
            )
            raise
        test_metrics = self.test()
        self._write_info("finished", test_metrics)
        return TrainingResult(
            run_dir=self.run_dir,
            history=self.history,
            best_epoch=self.early_stopping.best_epoch,
            best_metric=self.early_stopping.best,
            stopped_early=self.early_stopping.should_stop,
            seconds=self.elapsed_s,
            test_metrics=test_metrics,
        )

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        started = time.perf_counter()
        self._set_stage(epoch)
        seed = epoch_seed(self.config.seed, epoch)
        torch.manual_seed(seed + 7919 * self.dist.rank)  # each process draws its own augmentations
        self.train_loader.generator.manual_seed(seed + 1)
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(epoch)
        lr = self.optimizer.param_groups[-1]["lr"]
        train_loss, train_accuracy = train_one_epoch(self, self.train_loader, epoch)
        train_seconds = time.perf_counter() - started
        val_loss, val_accuracy = evaluate_epoch(self, "val")
        monitored = val_loss if self.config.early_stopping_monitor == "val_loss" else val_accuracy
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(monitored)
        improved = self.early_stopping.update(monitored, epoch)
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
            self._save("best.pt", epoch)
        self._save("last.pt", epoch)
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
        if self.dist.enabled and self._wrapped_trainable is not trainable:
            # DDP registers the parameters that need gradients when it is built: rebuild it per stage.
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids)
            self._wrapped_trainable = trainable

    # -- checkpoints -------------------------------------------------------------------------------------
    def checkpoint_payload(self, epoch: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "best_metric": self.early_stopping.best,
            "early_stopping": vars(self.early_stopping).copy(),
            "history": list(self.history),
            "elapsed_s": self.elapsed_s,
            "config": self.config.to_dict(),
            "class_names": list(self.classes),
            "backbone": self.config.backbone,
            "head": self.config.head,
            "bn_folded": self.bn_folded,
            "image_size": self.config.image_size,
            "normalization": {"mean": list(self.normalization.mean), "std": list(self.normalization.std)},
            "rng": rng_state(),
        }

    def _save(self, name: str, epoch: int) -> None:
        """Rank 0 writes (the unwrapped model: the file loads in one process); the others wait for it."""
        if self.dist.is_main:
            save_checkpoint(self.run_dir / name, self.checkpoint_payload(epoch))
        barrier(self.dist)

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue from a `last.pt`: weights, optimiser, scheduler, history and early-stopping state."""
        if checkpoint["backbone"] != self.config.backbone or checkpoint["class_names"] != list(self.classes):
            raise CheckpointError(
                f"checkpoint is for backbone {checkpoint['backbone']} with classes {checkpoint['class_names']}, "
                f"but this run uses {self.config.backbone} with classes {self.classes}"
            )
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.early_stopping = EarlyStopping(**checkpoint["early_stopping"])
        self.history = list(checkpoint["history"])
        self.elapsed_s = float(checkpoint.get("elapsed_s", 0.0))
        self.start_epoch = int(checkpoint["epoch"]) + 1

    @classmethod
    def resume(cls, run_dir: Path, callbacks: Sequence[Callback] = (), show_progress: bool = True) -> Trainer:
        """A Trainer that continues `run_dir` from its `last.pt`."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.json").is_file():
            raise PlantlibError(f"cannot resume {run_dir}: it is not a run directory (no config.json)")
        if read_run_info(run_dir).get("status") == "finished":
            raise PlantlibError(f"run {run_dir} has already finished; start a new run instead of --resume")
        config = RunConfig.from_json(run_dir / "config.json")
        checkpoint = load_checkpoint(run_dir / "last.pt")
        trainer = cls(config, run_dir=run_dir, callbacks=callbacks, show_progress=show_progress)
        trainer.restore(checkpoint)
        if trainer.start_epoch > trainer.epochs or trainer.early_stopping.should_stop:
            trainer.log(f"{run_dir}: all epochs were trained before the interruption; testing the best checkpoint")
        return trainer

    # -- after training ------------------------------------------------------------------------------------
    def test(self) -> dict[str, Any]:
        """Evaluate `best.pt` on the test split; save metrics and per-image predictions in the run dir."""
        barrier(self.dist)
        best = load_checkpoint(self.run_dir / "best.pt", map_location=self.device)
        self.model.load_state_dict(best["model"])
        probs = softmax_probabilities(split_logits(self, "test"))
        rows = self.data.frame("test").head(len(probs))
        metrics = compute_metrics(rows["target"].to_numpy(), probs, self.classes)
        if self.dist.is_main:
            frame = predictions_frame(rows["path"].tolist(), rows["target"].to_numpy(), probs, self.classes)
            save_evaluation(self.run_dir, metrics, frame)
        return metrics

    def describe(self) -> str:
        counts = parameter_counts(self.model)
        weights = weights_source(self.config.backbone) if self.config.pretrained else "random init"
        return (
            f"run {self.run_dir}\n"
            f"backbone {self.config.backbone} ({weights}), "
            f"{counts['total'] / 1e6:.2f} M parameters, {model_size_mb(self.model):.1f} MB\n"
            f"data {len(self.train_set)} train / {len(self.val_set)} val / {len(self.test_set)} test images, "
            f"classes {self.classes}; device {self.device}; epochs {self.start_epoch}..{self.epochs}; "
            f"{self.frozen_blocks} leading backbone blocks frozen"
            + (
                f"\ndistributed: {self.dist.world_size} processes ({self.dist.backend}), global batch "
                f"{self.config.batch_size} = {self.batch_size} per process, learning rate {self.config.learning_rate:g}"
                if self.dist.enabled
                else ""
            )
        )

    def _write_info(self, status: str, test_metrics: dict[str, Any] | None = None) -> None:
        if not self.dist.is_main:
            return
        info = {
            "status": status,
            "backbone": self.config.backbone,
            "pretrained": self.config.pretrained,
            "weights": weights_source(self.config.backbone) if self.config.pretrained else "random init",
            "data_dir": str(self.data.data_dir),
            "split_file": str(self.data.split_file),
            "classes": list(self.classes),
            "sizes": {"train": len(self.train_set), "val": len(self.val_set), "test": len(self.test_set)},
            "parameters": parameter_counts(self.model),
            "model_size_mb": round(model_size_mb(self.model), 3),
            "device": str(self.device),
            "frozen_blocks": self.frozen_blocks,
            "epochs_done": len(self.history),
            "best_epoch": self.early_stopping.best_epoch,
            "best_" + self.config.early_stopping_monitor: self.early_stopping.best,
            "train_seconds": round(self.elapsed_s, 2),
            "seconds_per_epoch": round(self.elapsed_s / max(1, len(self.history)), 2),
            "distributed": {
                "world_size": self.dist.world_size,
                "backend": self.dist.backend,
                "global_batch_size": self.config.batch_size,
                "per_process_batch_size": self.batch_size,
                "learning_rate": self.config.learning_rate,
                "sync_bn": self.config.sync_bn,
            },
        }
        if test_metrics is not None:
            info["test"] = {
                k: test_metrics.get(k) for k in ("accuracy", "f1", "roc_auc", "ece", "n") if k in test_metrics
            }
            info["test"]["ci95"] = test_metrics.get("ci95")
        write_run_info(self.run_dir, info)


def train(config: RunConfig, callbacks: Sequence[Callback] = (), show_progress: bool = True) -> TrainingResult:
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
