"""What spans runs: experiment tracking (MLflow), and the tracked one-call training path."""

from __future__ import annotations

from collections.abc import Sequence

from plantlib.config import RunConfig
from plantlib.experiments.tracking import tracking_callbacks
from plantlib.training.trainer import CallbackLike, Trainer, TrainingResult


def train(config: RunConfig, callbacks: Sequence[CallbackLike] = (), show_progress: bool = True) -> TrainingResult:
    """The one-call happy path: prepare data, build the model, fit, test; tracked unless tracking is off."""
    trainer = Trainer.build(config, callbacks=[*tracking_callbacks(config), *callbacks], show_progress=show_progress)
    return trainer.fit()


__all__ = ["tracking_callbacks", "train"]
