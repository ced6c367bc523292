"""What a checkpoint holds of a run in progress, and how a run's parts take it back.

A checkpoint is a plain dict: what predicting needs (weights, config, classes, normalisation), the loop's own
state (epoch, early stopping, history, time so far) and, in `last.pt` only, the optimiser, schedule and loss
scaler that resuming needs (twice the weights' size with Adam). Every epoch reseeds from (seed, epoch), so no
RNG state is kept.
"""

from __future__ import annotations

from typing import Any

from plantlib.checkpoint import CheckpointError
from plantlib.models.backbones import normalization_for
from plantlib.runs import LAST_CHECKPOINT
from plantlib.training.build import RunParts
from plantlib.training.stopping import EarlyStopping


def checkpoint_payload(
    parts: RunParts,
    epoch: int,
    stopping: EarlyStopping,
    history: list[dict[str, Any]],
    elapsed_s: float,
    resumable: bool = True,
) -> dict[str, Any]:
    """The checkpoint of `parts` after `epoch`; with `resumable`, also what `restore_parts` needs."""
    normalization = normalization_for(parts.config.backbone)
    payload: dict[str, Any] = {
        "model": parts.model.state_dict(),
        "epoch": epoch,
        "early_stopping": vars(stopping).copy(),
        "history": list(history),
        "elapsed_s": elapsed_s,
        "config": parts.config.to_dict(),
        "class_names": parts.classes,
        "normalization": {"mean": list(normalization.mean), "std": list(normalization.std)},
    }
    if resumable:
        optimization = parts.optimization
        payload["optimizer"] = optimization.optimizer.state_dict()
        payload["scheduler"] = optimization.scheduler.state_dict()
        payload["scaler"] = optimization.scaler.state_dict()
    return payload


def restore_parts(parts: RunParts, checkpoint: dict[str, Any]) -> None:
    """Put a `last.pt`'s weights, optimiser, schedule and scaler back into `parts`; a clear error for a
    weights-only checkpoint or one of another backbone or other classes."""
    if "optimizer" not in checkpoint:
        raise CheckpointError(f"this checkpoint holds weights only; resume from the run's {LAST_CHECKPOINT}")
    saved, backbone, classes = checkpoint["config"], parts.config.backbone, parts.classes
    if saved["backbone"] != backbone or checkpoint["class_names"] != classes:
        raise CheckpointError(
            f"checkpoint is for backbone {saved['backbone']} with classes {checkpoint['class_names']}, "
            f"but this run uses {backbone} with classes {classes}"
        )
    optimization = parts.optimization
    parts.model.load_state_dict(checkpoint["model"])
    optimization.optimizer.load_state_dict(checkpoint["optimizer"])
    optimization.scheduler.load_state_dict(checkpoint["scheduler"])
    if checkpoint.get("scaler"):
        optimization.scaler.load_state_dict(checkpoint["scaler"])
