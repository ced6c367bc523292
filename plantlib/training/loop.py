"""One training step, one training epoch and one pass of predictions over a split, as plain functions.

Everything they use comes in as an argument, so the Trainer, benchmarks and the experiments layer call the
same code.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from plantlib.config import RunConfig
from plantlib.distributed import DistributedContext, all_sum, unshard
from plantlib.evaluation.metrics import PROBABILITY_CLIP, predict_logits
from plantlib.models.backbones import Classifier, frozen_modules, set_backbone_trainable
from plantlib.progress import progress
from plantlib.runtime import maybe_autocast
from plantlib.training.optim import Optimization, steps_per_epoch_scheduler


def set_training_mode(model: Classifier, backbone_trainable: bool, frozen_blocks: int | None, freeze_bn: bool) -> None:
    """Training mode for what learns; evaluation mode for fixed feature extractors and fixed BatchNorm."""
    model.train()
    if not backbone_trainable:
        model.backbone.eval()  # a frozen backbone is a fixed feature extractor
        return
    for module in frozen_modules(model, frozen_blocks):
        module.eval()  # frozen leading blocks: fixed feature extractors too
    if freeze_bn:
        # Pretrained statistics beat ones re-estimated from a few hundred augmented images.
        for module in model.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


class StagedModel:
    """The network training steps call, per stage of a run: the classifier with the part that learns set by the
    fine-tuning mode (`full`, `head`, or `two_stage`: the head first, then everything), in training mode where it
    learns, wrapped in DistributedDataParallel under torchrun (rebuilt when the part that learns changes)."""

    def __init__(self, model: Classifier, device: torch.device, dist: DistributedContext) -> None:
        self.model, self.device, self.dist = model, device, dist
        self.backbone_trainable = True
        self._network: nn.Module = model
        self._wrapped_for: bool | None = None  # the stage the DDP wrapper was built for

    def enter(self, epoch: int, config: RunConfig) -> nn.Module:
        """Set up `epoch`'s stage of a run of `config`; the network its training steps call."""
        trainable = config.finetune == "full" or (config.finetune == "two_stage" and epoch > config.head_epochs)
        set_backbone_trainable(self.model, trainable, config.frozen_blocks)
        self.backbone_trainable = trainable
        if self.dist.enabled and self._wrapped_for is not trainable:
            # DDP registers the parameters that need gradients when it is built: rebuild it per stage.
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self._network = DistributedDataParallel(self.model, device_ids=device_ids)
            self._wrapped_for = trainable
        set_training_mode(self.model, trainable, config.frozen_blocks, config.freeze_bn)
        return self._network


def train_step(
    network: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    optimization: Optimization,
    device: torch.device,
    dtype: torch.dtype | None,
) -> tuple[float, int, int]:
    """One optimiser step on one batch: mixing, autocast, loss scaling, clipping, per-step schedule.

    The Trainer, the learning-rate range test and benchmarks all step through here. Returns the batch's mean
    loss, how many images it got right (against the mixed targets' strongest class) and the batch size.
    """
    opt = optimization
    images = images.to(device, memory_format=torch.channels_last, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    if opt.mix is not None:
        images, targets = opt.mix(images, targets)  # soft targets: class probabilities per image
    with maybe_autocast(device, dtype):
        logits = network(images)
        loss = opt.loss_fn(logits.float(), targets)
    opt.optimizer.zero_grad(set_to_none=True)
    opt.scaler.scale(loss).backward()
    if opt.grad_clip is not None:
        opt.scaler.unscale_(opt.optimizer)
        nn.utils.clip_grad_norm_(network.parameters(), opt.grad_clip)
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    if opt.scheduler is not None and steps_per_epoch_scheduler(opt.scheduler):
        opt.scheduler.step()
    hard_targets = targets.argmax(1) if targets.dim() == 2 else targets
    return loss.item(), int((logits.argmax(1) == hard_targets).sum().item()), len(targets)


def train_one_epoch(
    network: nn.Module,
    loader: DataLoader,
    optimization: Optimization,
    device: torch.device,
    dtype: torch.dtype | None,
    dist: DistributedContext,
    max_batches: int | None = None,
    description: str = "epoch",
) -> tuple[float, float]:
    """One pass over `loader` (this process's share under DDP); mean loss and accuracy over every process.

    `network` is what the step calls: the classifier, or its DistributedDataParallel wrapper.
    """
    total_loss, correct, seen = 0.0, 0, 0
    limit = min(max_batches or len(loader), len(loader))
    with progress(total=limit, desc=description, unit="batch", leave=False) as bar:
        for batch_index, (images, targets) in enumerate(loader):
            if batch_index >= limit:
                break
            loss, right, count = train_step(network, images, targets, optimization, device, dtype)
            total_loss += loss * count
            correct += right
            seen += count
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
    total_loss, correct, seen = all_sum([total_loss, correct, seen], dist)
    return total_loss / max(seen, 1), correct / max(seen, 1)


def split_logits(
    model: nn.Module,
    loader: DataLoader,
    total: int,
    device: torch.device,
    dtype: torch.dtype | None,
    dist: DistributedContext,
) -> torch.Tensor:
    """Logits of the `total` images behind `loader`, in split order; under DDP each rank computes its shard."""
    local = predict_logits(model, loader, device, dtype)
    return torch.from_numpy(unshard(local.numpy(), total, dist))


def loss_and_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of logits against integer targets (no label smoothing).

    Each image's loss is capped where its probability would be clipped (`evaluate.PROBABILITY_CLIP`), so the
    validation loss a sweep optimises is the log loss every report prints.
    """
    per_image = nn.functional.cross_entropy(logits, targets, reduction="none")
    loss = per_image.clamp(max=-math.log(PROBABILITY_CLIP)).mean().item()
    return loss, (logits.argmax(1) == targets).double().mean().item()
