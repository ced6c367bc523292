"""Baseline: the official PyTorch "Transfer Learning for Computer Vision" tutorial recipe, on plantlib's split.

Kept deliberately plain, as the tutorial writes it: a file dataset decoded with PIL every epoch,
RandomResizedCrop(224) + horizontal flip, SGD(lr=0.001, momentum=0.9), StepLR(7, 0.1), batch 4, 2 workers,
25 epochs, the best validation weights kept. Same backbone and weights as plantlib (EfficientNet-Lite0 with a
new Linear layer), fed with the normalisation those weights were trained with.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from plantlib.data import PreparedData
from plantlib.models.backbones import build_model, normalization_for

BACKBONE = "efficientnet_lite0"


class FileDataset(Dataset):
    """(image, label) read from disk and decoded on every access, like torchvision's ImageFolder."""

    def __init__(self, files: list[Path], targets: list[int], transform: Any) -> None:
        self.files, self.targets, self.transform = files, targets, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[index]) as image:
            return self.transform(image.convert("RGB")), self.targets[index]


def tutorial_transforms() -> dict[str, transforms.Compose]:
    norm = normalization_for(BACKBONE)
    normalize = transforms.Normalize(norm.mean, norm.std)
    return {
        "train": transforms.Compose(
            [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
        ),
        "val": transforms.Compose(
            [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize]
        ),
    }


def loaders(data: PreparedData, batch_size: int = 4, workers: int = 2) -> dict[str, DataLoader]:
    """One DataLoader per split; without persistent workers they are re-created every epoch, as in the tutorial."""
    tfs = tutorial_transforms()
    result = {}
    for split in ("train", "val", "test"):
        rows = data.frame(split)
        dataset = FileDataset(
            rows["file"].tolist(), rows["target"].tolist(), tfs["train" if split == "train" else "val"]
        )
        result[split] = DataLoader(dataset, batch_size=batch_size, shuffle=split == "train", num_workers=workers)
    return result


@dataclass
class ReferenceResult:
    epoch_seconds: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    test_accuracy: float = 0.0
    seconds: float = 0.0
    model: nn.Module | None = None


def reference_model(num_classes: int, device: str = "cpu") -> nn.Module:
    """The tutorial's model: the pretrained backbone with a new Linear layer, as built by plantlib."""
    return build_model(BACKBONE, num_classes, pretrained=True, head="linear", dropout=0.0).to(device)


def run_phase(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: Any | None,
    max_batches: int | None = None,
    device: str = "cpu",
) -> float:
    """One pass; trains when an optimizer is given. Returns accuracy."""
    training = optimizer is not None
    model.train(training)
    correct = seen = 0
    for index, (inputs, labels) in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        inputs, labels = inputs.to(device), labels.to(device)
        with torch.set_grad_enabled(training):
            outputs = model(inputs)
            loss = criterion(outputs, labels)
            if training:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        correct += (outputs.argmax(1) == labels).sum().item()
        seen += len(labels)
    return correct / max(seen, 1)


def train_reference(
    data: PreparedData,
    epochs: int = 25,
    batch_size: int = 4,
    workers: int = 2,
    max_batches: int | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> ReferenceResult:
    """The tutorial's `train_model`: train, validate, keep the best weights; then test them."""
    torch.manual_seed(seed)
    model = reference_model(len(data.classes), device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    phases = loaders(data, batch_size, workers)
    result = ReferenceResult()
    best_accuracy, best_weights = -1.0, copy.deepcopy(model.state_dict())
    started = time.perf_counter()
    for _ in range(epochs):
        epoch_start = time.perf_counter()
        run_phase(model, phases["train"], criterion, optimizer, max_batches, device)
        result.train_seconds.append(time.perf_counter() - epoch_start)
        scheduler.step()
        accuracy = run_phase(model, phases["val"], criterion, None, max_batches, device)
        result.epoch_seconds.append(time.perf_counter() - epoch_start)  # train + validate, as plantlib's epoch
        result.val_accuracy.append(accuracy)
        if accuracy > best_accuracy:
            best_accuracy, best_weights = accuracy, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_weights)
    result.test_accuracy = run_phase(model, phases["test"], criterion, None, device=device)
    result.seconds = time.perf_counter() - started
    result.model = model
    return result


def evaluate_reference(model: nn.Module, data: PreparedData, batch_size: int, device: str = "cpu") -> float:
    """Seconds for one pass over the validation and test splits, as the tutorial evaluates."""
    phases = loaders(data, batch_size)
    criterion = nn.CrossEntropyLoss()
    started = time.perf_counter()
    for split in ("val", "test"):
        run_phase(model, phases[split], criterion, None, device=device)
    return time.perf_counter() - started


def reference_predict_one(model: nn.Module, file: Path, device: str = "cpu") -> torch.Tensor:
    """The tutorial's single-image prediction: PIL open, the validation transform, one forward pass."""
    model.eval()
    with Image.open(file) as image:
        tensor = tutorial_transforms()["val"](image.convert("RGB")).unsqueeze(0).to(device)
    with torch.no_grad():
        return model(tensor).softmax(1)


def reference_batch_predict(model: nn.Module, files: list[Path], batch_size: int = 32, device: str = "cpu") -> None:
    """Batched prediction the plain way: a file dataset with the validation transform and 2 workers."""
    model.eval()
    dataset = FileDataset(files, [0] * len(files), tutorial_transforms()["val"])
    with torch.no_grad():
        for inputs, _ in DataLoader(dataset, batch_size=batch_size, num_workers=2):
            model(inputs.to(device)).softmax(1)
