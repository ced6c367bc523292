"""Datasets, transforms and loaders: images decoded once per process (see `cache`), augmented on the fly, seeded."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from plantlib.data.cache import DecodedImageCache

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """The mean/std a backbone's weights were trained with; travels inside checkpoints."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def resize_side(image_size: int) -> int:
    """Shorter side images are resized to before the centre crop (256 for 224, the usual ratio)."""
    return round(image_size * 256 / 224)


def train_transform(image_size: int = 224, norm: Normalization = Normalization()) -> v2.Compose:
    """Crops, flips, one affine warp (rotation +-30 degrees, shift, scale, shear) and colour jitter.

    Rotation and the other affine terms share one warp: half the cost of two, the same test accuracy.
    """
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomAffine(degrees=30, translate=(0.05, 0.05), scale=(0.95, 1.05), shear=5),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(norm.mean, norm.std),
        ]
    )


def eval_transform(image_size: int = 224, norm: Normalization = Normalization(), normalize: bool = True) -> v2.Compose:
    """Deterministic: resize the shorter side, centre crop, normalise.

    `normalize=False` stops at the uint8 crop, for a compiled network that normalises inside its graph.
    """
    steps = [v2.Resize(resize_side(image_size), antialias=True), v2.CenterCrop(image_size)]
    if normalize:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(norm.mean, norm.std)]
    return v2.Compose(steps)


class ImageDataset(Dataset):
    """(image tensor, label index) pairs for a list of files."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int],
        transform: v2.Compose,
        cache: DecodedImageCache,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = [Path(p) for p in paths]
        self.labels = [int(label) for label in labels]
        self.transform = transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.cache.get(self.paths[index])), self.labels[index]

    def warm_cache(self) -> None:
        """Decode every image now (before worker processes fork, so they share the decoded pixels)."""
        for path in self.paths:
            self.cache.get(path)


def seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker numpy/random seeds derived from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    sampler: Sampler | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose shuffling and worker seeds follow `seed` (a given `sampler` does the shuffling)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        worker_init_fn=seed_worker if num_workers else None,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )


def augmented_views(
    files: Sequence[Path], image_size: int, norm: Normalization, views: int = 6, seed: int = 0
) -> torch.Tensor:
    """`views` training augmentations of each file, (len(files) * views, 3, S, S): a preview of what training sees."""
    dataset = ImageDataset(files, [0] * len(files), train_transform(image_size, norm), DecodedImageCache(256))
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        return torch.stack([dataset[i][0] for i in range(len(dataset)) for _ in range(views)])
    finally:
        torch.set_rng_state(generator_state)
