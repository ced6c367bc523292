"""Checkpoints: plain, self-describing dicts written atomically.

A checkpoint holds the model, optimiser, scheduler, epoch, best metric, config, class names, image size,
normalisation and RNG states, so predict/evaluate/resume need nothing else.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from plantlib.errors import PlantlibError
from plantlib.io import atomic_path

CHECKPOINT_FORMAT = "plantlib-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(PlantlibError):
    """A checkpoint is missing, corrupt, or does not fit what it is used for."""


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` (plus format tags) to `path` via a temporary file, so a crash never leaves half a file."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; anything else is a CheckpointError saying what to do."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return load_checkpoint(path / name, map_location)
        raise CheckpointError(f"{path} holds no best.pt or last.pt; pass a checkpoint file or a run directory")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run's best.pt or last.pt")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a plantlib checkpoint ({error.__class__.__name__}); "
            "use the run's other checkpoint (best.pt / last.pt) or train again"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a plantlib checkpoint; pass a best.pt or last.pt written by plantlib")
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} was written by a newer plantlib (format {payload['version']}); upgrade plantlib")
    return payload
