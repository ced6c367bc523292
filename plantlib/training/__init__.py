"""Training one run: its parts built without I/O (`build`), one step and one epoch (`loop`), the optimiser and
schedule (`optim`), the `Trainer` that owns the loop, checkpoints and callbacks (`trainer`), torchrun (`launch`)
and the learning-rate range test (`lr_find`)."""

from plantlib.training.trainer import Callback, StopTraining, Trainer, TrainingResult

__all__ = ["Callback", "StopTraining", "Trainer", "TrainingResult"]
