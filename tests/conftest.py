"""Shared fixtures: an isolated project root and small synthetic image folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REAL_MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data" / "dandelion-vs-grass"


def real_mirror() -> Path | None:
    """The built-in dataset's mirror: $PLANTLIB_DATA_SOURCE when it is a folder, else ../shared/…."""
    env = os.environ.get("PLANTLIB_DATA_SOURCE")
    for candidate in (Path(env) if env else None, REAL_MIRROR):
        if candidate is not None and candidate.is_dir():
            return candidate
    return None


requires_mirror = pytest.mark.skipif(
    real_mirror() is None, reason="built-in dataset mirror not found (set PLANTLIB_DATA_SOURCE)"
)


def pattern_image(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A smooth random picture: distinct per seed, so perceptual hashes of different seeds differ."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BICUBIC)


def write_dataset(root: Path, counts: dict[str, int], seed: int = 0, size: tuple[int, int] = (96, 72)) -> Path:
    """A folder-per-class dataset of JPEGs with distinct content."""
    for class_index, (label, count) in enumerate(sorted(counts.items())):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pattern_image(seed * 100_000 + class_index * 1000 + i, size).save(folder / f"{i:04d}.jpg", quality=90)
    return root


@pytest.fixture(autouse=True)
def isolated_project(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own project root, so nothing touches the checkout's data/ or artifacts/."""
    root = tmp_path_factory.mktemp("project")
    (root / "data").mkdir()
    monkeypatch.setenv("PLANTLIB_ROOT", str(root))
    monkeypatch.setenv("PLANTLIB_PROGRESS", "off")
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Two classes of 12 images each."""
    return write_dataset(tmp_path / "tiny", {"cat": 12, "dog": 12})
