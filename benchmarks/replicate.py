"""Synthetic scaling data: the training split replicated N times with augmented JPEG copies.

Copies are distinct files (cropped, flipped, colour-shifted, re-encoded), so the decoded-image cache and
the JPEG decoder see N times the data, as they would with a larger real dataset. They are written once
under `out_dir` and reused by later runs; validation and test splits stay the originals.
"""

from __future__ import annotations

import dataclasses
import random
import zlib
from pathlib import Path

import pandas as pd
from PIL import ImageEnhance, ImageOps

from plantlib.data import PreparedData, load_rgb
from plantlib.io import atomic_path


def augmented_copy(source: Path, target: Path, seed: int) -> None:
    """Write one augmented JPEG copy of `source` to `target` (skipped when it already exists)."""
    if target.is_file():
        return
    rng = random.Random(seed)
    image, _ = load_rgb(source)
    width, height = image.size
    scale = rng.uniform(0.8, 1.0)
    crop_w, crop_h = max(1, int(width * scale)), max(1, int(height * scale))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    image = image.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.8, 1.2))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.85, 1.15))
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        image.save(tmp, format="JPEG", quality=90)


def replicate_training_split(data: PreparedData, factor: int, out_dir: Path, seed: int = 0) -> PreparedData:
    """`data` with `factor` training images per original: the original plus `factor - 1` augmented copies."""
    if factor < 1:
        raise ValueError(f"factor must be 1 or more, got {factor}")
    train = data.split[data.split["split"] == "train"]
    rows = []
    for copy in range(1, factor):
        for record in train.itertuples(index=False):
            source = data.data_dir / record.path
            target = Path(out_dir) / record.label / f"{Path(record.path).stem}-copy{copy:02d}.jpg"
            augmented_copy(source, target, seed=zlib.crc32(f"{seed}:{record.path}:{copy}".encode()))
            rows.append({**record._asdict(), "path": str(target.resolve())})
    split = pd.concat([data.split, pd.DataFrame(rows, columns=data.split.columns)], ignore_index=True)
    return dataclasses.replace(data, split=split)
