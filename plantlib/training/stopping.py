"""Early stopping: when the monitored validation metric stops improving, the run ends. It sits beside the loop
(the Trainer asks it after every epoch), apart from the optimiser and schedule it does not touch."""

from __future__ import annotations

from dataclasses import dataclass

from plantlib.config import RunConfig


@dataclass
class EarlyStopping:
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs."""

    monitor: str = "val_loss"
    patience: int | None = 5
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record this epoch's value; True when it is the best so far."""
        sign = -1.0 if self.monitor.endswith("loss") else 1.0
        improved = self.best is None or sign * (value - self.best) > self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience


def build_early_stopping(config: RunConfig) -> EarlyStopping:
    return EarlyStopping(config.early_stopping_monitor, config.early_stopping_patience, config.early_stopping_min_delta)
