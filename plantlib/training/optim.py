"""Optimisation pieces of a run: loss, optimiser, learning-rate schedule, loss scaler and batch mixing.

Everything one training step needs besides the model and the batch, bundled so `loop.train_step` takes one
argument for it; early stopping is not here (`training.stopping`): it decides when the loop ends, not how a
step learns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from plantlib.config import RunConfig
from plantlib.models.backbones import Classifier


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


def steps_per_epoch_scheduler(scheduler: Any) -> bool:
    """True for schedules stepped after every batch; ReduceLROnPlateau steps once per epoch on the metric."""
    return not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


@dataclass
class Optimization:
    """What one training step needs besides the model and the batch: loss, optimiser, schedule, loss scaler."""

    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # None: the caller sets the rate itself (the learning-rate range test)
    scaler: torch.amp.GradScaler
    grad_clip: float | None = None
    mix: BatchMixing | None = None  # MixUp / CutMix of training batches; None: off


class BatchMixing:
    """MixUp and/or CutMix (torchvision.transforms.v2) on a share of the training batches.

    Mixed batches get soft targets (class probabilities), which the cross-entropy loss takes as they are. The
    draws come from torch's global generator, which every epoch reseeds from (seed, epoch): a resumed run mixes
    the same batches the same way.
    """

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, probability: float, num_classes: int) -> None:
        from torchvision.transforms import v2

        choices = [v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha > 0 else []
        choices += [v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha > 0 else []
        if not choices:
            raise ValueError("BatchMixing needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.mixer = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)
        self.probability = probability
        self.num_classes = num_classes

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if float(torch.rand(())) >= self.probability:
            return images, torch.nn.functional.one_hot(targets, self.num_classes).to(images.dtype)
        return self.mixer(images, targets)


def build_optimization(
    model: Classifier,
    config: RunConfig,
    steps_per_epoch: int,
    epochs: int,
    device_type: str,
    train_dtype: torch.dtype | None,
    num_classes: int,
) -> Optimization:
    """Loss, optimiser, scheduler, gradient scaler and batch mixing for one run of `config`."""
    optimizer = build_optimizer(model, config)
    mixing = config.mixup_alpha > 0 or config.cutmix_alpha > 0
    return Optimization(
        loss_fn=torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config, steps_per_epoch, epochs),
        # fp16 gradients underflow without loss scaling; the scaler is a pass-through for fp32 and bf16.
        scaler=torch.amp.GradScaler(device_type, enabled=train_dtype == torch.float16),
        grad_clip=config.grad_clip,
        mix=BatchMixing(config.mixup_alpha, config.cutmix_alpha, config.mix_probability, num_classes)
        if mixing
        else None,
    )
