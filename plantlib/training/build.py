"""The parts of a run, built in named steps with explicit inputs: process and device, data, model, loaders,
optimisation. `build_run` calls them in order and returns `RunParts`; nothing here touches a run directory, so
the Trainer, the learning-rate range test and benchmarks build the same parts and differ only in what they do
with them. Also the run's facts (run.json's description) and the start-up summary.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from plantlib.config import RunConfig
from plantlib.data import (
    DecodedImageCache,
    ImageDataset,
    Normalization,
    PreparedData,
    eval_transform,
    make_loader,
    prepare_data,
    train_transform,
)
from plantlib.data.dataset import resize_side
from plantlib.distributed import (
    DistributedContext,
    barrier,
    device_for,
    init_distributed,
    launched_by_torchrun,
    per_rank_batch_size,
    shard,
)
from plantlib.errors import ConfigError, PlantlibError
from plantlib.models.backbones import (
    Classifier,
    build_model,
    frozen_modules,
    fuses_batchnorm,
    model_size_mb,
    normalization_for,
    parameter_counts,
    resolve_frozen_blocks,
    weights_source,
)
from plantlib.paths import artifacts_dir
from plantlib.runtime import autocast_dtype, keep_freed_memory, loader_workers, resolve_device, seed_everything
from plantlib.training.optim import Optimization, build_optimization


def setup_process(config: RunConfig) -> tuple[torch.device, DistributedContext]:
    """This process's device and its place in a torchrun job (a single-process context otherwise)."""
    if launched_by_torchrun():
        device = device_for(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = resolve_device(config.device)
    dist = init_distributed(device, config.dist_timeout_s)
    if config.sync_bn and not (dist.enabled and device.type == "cuda"):
        raise ConfigError("sync_bn=True needs a distributed run on CUDA GPUs (NCCL); drop it for this run")
    return device, dist


def prepare_run_data(config: RunConfig, dist: DistributedContext, show_progress: bool) -> PreparedData:
    """Rank 0 fetches, scans and splits first; the other ranks then read what it wrote."""
    if not dist.enabled:
        return prepare_data(config, show_progress=show_progress)
    data = prepare_data(config, show_progress=show_progress) if dist.is_main else None
    barrier(dist)
    return data or prepare_data(config.replace(new_split=False), show_progress=False)


def build_image_cache(config: RunConfig) -> DecodedImageCache:
    """Decoded images kept at the size `config`'s transforms start from, within its memory budget."""
    return DecodedImageCache(
        max_side=resize_side(config.image_size),
        memory_budget_mb=config.cache_memory_mb,
        spill_dir=artifacts_dir() / "cache",
    )


@dataclass
class RunLoaders:
    """The batches of one run: shuffled training batches and, per evaluated split, this process's shard."""

    train: DataLoader
    train_sampler: DistributedSampler | None
    evaluation: dict[str, DataLoader]  # "val" and "test"
    targets: dict[str, torch.Tensor]  # every evaluated image's class index, in split order
    rows: dict[str, pd.DataFrame]  # the evaluated images' split rows (path, label, ...)
    sizes: dict[str, int]  # images per split


def build_loaders(
    frames: Mapping[str, pd.DataFrame],
    config: RunConfig,
    normalization: Normalization,
    batch_size: int,
    device: torch.device,
    dist: DistributedContext,
    cache: DecodedImageCache,
    max_batches: int | None,
    num_workers: int,
) -> RunLoaders:
    """Datasets and loaders for the "train", "val" and "test" rows in `frames` (columns file and target)."""
    transforms = {
        "train": train_transform(config.image_size, normalization),
        "val": eval_transform(config.image_size, normalization),
        "test": eval_transform(config.image_size, normalization),
    }
    datasets = {
        split: ImageDataset(frames[split]["file"].tolist(), frames[split]["target"].tolist(), transform, cache)
        for split, transform in transforms.items()
    }
    sizes = {split: len(dataset) for split, dataset in datasets.items()}
    if sizes["train"] == 0 or sizes["val"] == 0:
        raise PlantlibError(
            f"the split leaves {sizes['train']} training and {sizes['val']} validation images; "
            "add images or change val_fraction/test_fraction"
        )
    if num_workers:
        for dataset in datasets.values():
            dataset.warm_cache()  # decode once here; forked workers then share the pixels
    train_set = datasets["train"]
    sampler = (
        DistributedSampler(train_set, dist.world_size, dist.rank, shuffle=True, seed=config.seed)
        if dist.enabled
        else None
    )
    share = len(sampler) if sampler else len(train_set)
    pin = device.type == "cuda"
    train = make_loader(
        train_set,
        batch_size,
        shuffle=True,
        seed=config.seed,
        num_workers=num_workers,
        drop_last=share % batch_size == 1,  # BatchNorm cannot train on one image
        sampler=sampler,
        pin_memory=pin,
    )
    evaluation, targets, rows = {}, {}, {}
    for split in ("val", "test"):
        evaluated = _evaluated_part(datasets[split], max_batches, config.batch_size)
        rows[split] = frames[split].head(len(evaluated))
        targets[split] = torch.tensor(rows[split]["target"].tolist(), dtype=torch.long)
        evaluation[split] = make_loader(
            shard(evaluated, dist), batch_size, shuffle=False, seed=config.seed, num_workers=num_workers, pin_memory=pin
        )
    return RunLoaders(train, sampler, evaluation, targets, rows, sizes)


def _evaluated_part(dataset: ImageDataset, max_batches: int | None, global_batch_size: int) -> Dataset:
    """The images an evaluation covers: all, or the first `max_batches` global batches (smoke runs)."""
    if not max_batches:
        return dataset
    return Subset(dataset, range(min(len(dataset), max_batches * global_batch_size)))


def build_run_model(config: RunConfig, num_classes: int, device: torch.device) -> Classifier:
    """The classifier `config` describes, on `device`; an impossible `frozen_blocks` fails before any work."""
    model = build_model(
        config.backbone,
        num_classes,
        config.pretrained,
        head=config.head,
        dropout=config.dropout,
        # Fixed BatchNorm (freeze_bn, or a head-only run) is folded into the convolutions: same function, faster.
        fuse_bn=fuses_batchnorm(config.freeze_bn, config.finetune),
    ).to(device, memory_format=torch.channels_last)
    frozen_modules(model, config.frozen_blocks)
    if config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


@dataclass
class RunParts:
    """What one run trains with: built by `build_run`, owned by whoever runs the loop (the Trainer)."""

    config: RunConfig
    data: PreparedData
    device: torch.device
    dist: DistributedContext
    model: Classifier
    loaders: RunLoaders
    optimization: Optimization
    epochs: int  # 1 for a smoke run (`fast`)
    max_batches: int | None  # cap on batches per epoch and evaluation (smoke runs, tests)
    batch_size: int  # per process
    train_dtype: torch.dtype | None  # autocast dtype of training steps; None: fp32
    eval_dtype: torch.dtype | None  # autocast dtype of evaluation passes

    @property
    def classes(self) -> list[str]:
        return list(self.data.classes)


def build_run(
    config: RunConfig,
    data: PreparedData | None = None,
    image_cache: DecodedImageCache | None = None,
    show_progress: bool = True,
) -> RunParts:
    """Every part of a run of `config`, seeded; no run directory is made or written.

    `data` skips preparing the data again (a cross-validation fold's own split); `image_cache` lets several runs
    in one process (folds, trials) decode each image once.
    """
    device, dist = setup_process(config)
    batch_size = per_rank_batch_size(config.batch_size, dist)
    data = data or prepare_run_data(config, dist, show_progress)
    max_batches = config.max_batches or (2 if config.fast else None)
    epochs = 1 if config.fast else config.epochs
    train_dtype = autocast_dtype(config.precision, device, training=True)
    keep_freed_memory()
    seed_everything(config.seed)
    model = build_run_model(config, len(data.classes), device)
    loaders = build_loaders(
        {split: data.frame(split) for split in ("train", "val", "test")},
        config,
        normalization_for(config.backbone),
        batch_size,
        device,
        dist,
        image_cache or build_image_cache(config),
        max_batches,
        loader_workers(config.num_workers, device),
    )
    steps = min(len(loaders.train), max_batches or len(loaders.train))
    optimization = build_optimization(model, config, steps, epochs, device.type, train_dtype, len(data.classes))
    eval_dtype = autocast_dtype(config.precision, device, training=False)
    return RunParts(
        config,
        data,
        device,
        dist,
        model,
        loaders,
        optimization,
        epochs,
        max_batches,
        batch_size,
        train_dtype,
        eval_dtype,
    )


def run_facts(
    config: RunConfig,
    data: PreparedData,
    sizes: Mapping[str, int],
    model: Classifier,
    device: torch.device,
    dist: DistributedContext,
    per_process_batch_size: int,
) -> dict[str, Any]:
    """What a run is: the one source of run.json's description, the start-up summary and checkpoint metadata."""
    normalization = normalization_for(config.backbone)
    return {
        "backbone": config.backbone,
        "pretrained": config.pretrained,
        "weights": weights_source(config.backbone) if config.pretrained else "random init",
        "data_dir": str(data.data_dir),
        "split_file": str(data.split_file),
        "classes": list(data.classes),
        "sizes": dict(sizes),
        "held_out_name": data.held_out_name,
        "normalization": {"mean": list(normalization.mean), "std": list(normalization.std)},
        "parameters": parameter_counts(model),
        "model_size_mb": round(model_size_mb(model), 3),
        "device": str(device),
        "frozen_blocks": resolve_frozen_blocks(config.backbone, config.frozen_blocks),
        "distributed": {
            "world_size": dist.world_size,
            "backend": dist.backend,
            "global_batch_size": config.batch_size,
            "per_process_batch_size": per_process_batch_size,
            "learning_rate": config.learning_rate,
            "sync_bn": config.sync_bn,
        },
    }


def describe_run(run_dir: Path, facts: Mapping[str, Any], first_epoch: int, last_epoch: int) -> str:
    """The start-up summary printed by every run, from its facts."""
    sizes, distributed, held_out = facts["sizes"], facts["distributed"], facts["held_out_name"]
    text = (
        f"run {run_dir}\n"
        f"backbone {facts['backbone']} ({facts['weights']}), "
        f"{facts['parameters']['total'] / 1e6:.2f} M parameters, {facts['model_size_mb']:.1f} MB\n"
        f"data {sizes['train']} train / {sizes['val']} val / {sizes['test']} {held_out} images, "
        f"classes {facts['classes']}; device {facts['device']}; epochs {first_epoch}..{last_epoch}; "
        f"{facts['frozen_blocks']} leading backbone blocks frozen"
    )
    if distributed["backend"] is not None:
        text += (
            f"\ndistributed: {distributed['world_size']} processes ({distributed['backend']}), global batch "
            f"{distributed['global_batch_size']} = {distributed['per_process_batch_size']} per process, "
            f"learning rate {distributed['learning_rate']:g}"
        )
    return text
