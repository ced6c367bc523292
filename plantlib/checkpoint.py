"""Checkpoints: plain, self-describing dicts written atomically, and where a run directory keeps them.

A checkpoint holds the model, optimiser, scheduler, loss scaler, epoch, early-stopping state, history, config,
class names and normalisation; a finished run's best.pt also its calibration (temperature, conformal scores).
The model's shape is read from the saved config alone, so predict, evaluate and resume need nothing else. RNG
states are not saved: every epoch reseeds from (seed, epoch).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from plantlib.errors import PlantlibError
from plantlib.io import atomic_path
from plantlib.runs import BEST_CHECKPOINT, LAST_CHECKPOINT

CHECKPOINT_FORMAT = "plantlib-checkpoint"
CHECKPOINT_VERSION = 2  # 2: model shape from the saved config only (1 also had top-level backbone/head/bn_folded)


class CheckpointError(PlantlibError):
    """A checkpoint is missing, corrupt, or does not fit what it is used for."""


def drop_resume_state(run_dir: Path) -> None:
    """Delete a finished run's last.pt when nothing will resume it (a CV fold, a study trial); best.pt stays."""
    (Path(run_dir) / LAST_CHECKPOINT).unlink(missing_ok=True)


def find_checkpoint(path: Path, names: tuple[str, ...] = (BEST_CHECKPOINT, LAST_CHECKPOINT)) -> Path:
    """`path` when it is a file; for a run directory its first existing checkpoint among `names`."""
    path = Path(path)
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} holds no {' or '.join(names)}; pass a checkpoint file or a run directory")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run's {BEST_CHECKPOINT} or {LAST_CHECKPOINT}")
    return path


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` (plus format tags) to `path` via a temporary file, so a crash never leaves half a file.

    A full disk raises `DiskFullError` ("no space left on <folder> (needs ~N MB …)"), not torch's "unexpected pos".
    """
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    with atomic_path(Path(path), needed_bytes=tensor_bytes(payload)) as tmp:
        torch.save(payload, tmp)


def store_calibration(path: Path, calibration: dict[str, Any]) -> None:
    """Rewrite a checkpoint (atomically) with its `calibration` entry: the temperature and conformal scores that
    `plantlib.evaluation.calibration.temperature_calibration` fitted on held-out images. A checkpoint without the
    entry loads as uncalibrated (T = 1, no prediction sets)."""
    payload = load_checkpoint(path)
    save_checkpoint(path, {**payload, "calibration": calibration})


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a nested payload: about the size of its checkpoint file."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(item) for item in value)
    return 0


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file (or a run directory's best one); anything else is a CheckpointError saying what to do."""
    path = find_checkpoint(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a plantlib checkpoint ({error.__class__.__name__}); "
            f"use the run's other checkpoint ({BEST_CHECKPOINT} / {LAST_CHECKPOINT}) or train again"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a plantlib checkpoint; pass a {BEST_CHECKPOINT} or {LAST_CHECKPOINT} written by plantlib"
        )
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} was written by a newer plantlib (format {payload['version']}); upgrade plantlib")
    return payload
