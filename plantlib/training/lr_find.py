"""Learning-rate range test (fastai / Lightning style): which learning rate should a run start from?

Training steps with the rate growing exponentially from `start_lr` to `end_lr`; the loss falls, flattens, then
blows up. The suggestion is the rate where the smoothed loss falls fastest (steepest descent against log rate),
the same rule as Lightning's `lr_find`. Every parameter group keeps its ratio to the head's rate (e.g. the
backbone's `backbone_lr_factor`), and nothing is kept: the model and optimiser are thrown away afterwards.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plantlib.config import RunConfig
from plantlib.errors import ConfigError
from plantlib.io import write_json
from plantlib.paths import artifacts_dir
from plantlib.training.build import RunParts, build_run
from plantlib.training.loop import StagedModel, train_step

SMOOTHING = 0.98  # exponential moving average of the loss, as fastai
DIVERGED = 4.0  # stop once the smoothed loss is this many times its minimum


@dataclass(frozen=True)
class LrFindResult:
    learning_rates: list[float]
    losses: list[float]  # smoothed, one per step
    suggestion: float | None  # None when the loss never fell
    out_dir: Path


def suggest_learning_rate(learning_rates: list[float], losses: list[float], skip: int = 5) -> float | None:
    """The rate with the steepest fall of the smoothed loss against log rate; None when it never falls."""
    if len(losses) < skip + 3:
        return None
    logs = np.log10(np.asarray(learning_rates[skip:]))
    values = np.asarray(losses[skip:])
    slopes = np.gradient(values, logs)
    steepest = int(np.argmin(slopes))
    return float(10 ** logs[steepest]) if slopes[steepest] < 0 else None


def range_test(parts: RunParts, start_lr: float, end_lr: float, steps: int) -> tuple[list[float], list[float]]:
    """Learning rates tried and the smoothed loss after each step, until `steps` or the loss diverges."""
    # The rate is set before every step here, so the run's own schedule is left out (and never stepped).
    optimization = dataclasses.replace(parts.optimization, scheduler=None)
    optimizer = optimization.optimizer
    ratios = [group["lr"] / parts.config.learning_rate for group in optimizer.param_groups]
    network = StagedModel(parts.model, parts.device, parts.dist)
    network.enter(epoch=1, config=parts.config.replace(finetune="full"))  # everything that may learn
    rates, smoothed, average, best = [], [], 0.0, math.inf
    batches = iter(())
    for step in range(steps):
        try:
            images, targets = next(batches)
        except StopIteration:
            batches = iter(parts.loaders.train)
            images, targets = next(batches)
        rate = start_lr * (end_lr / start_lr) ** (step / (steps - 1))
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = rate * ratio
        loss, _, _ = train_step(network.model, images, targets, optimization, parts.device, parts.train_dtype)
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        value = average / (1 - SMOOTHING ** (step + 1))  # bias-corrected
        rates.append(rate)
        smoothed.append(value)
        best = min(best, value)
        if not math.isfinite(value) or value > DIVERGED * best:
            break
    return rates, smoothed


def find_learning_rate(
    config: RunConfig, start_lr: float = 1e-7, end_lr: float = 1.0, steps: int = 100, out_dir: Path | None = None
) -> LrFindResult:
    """Run the range test for `config` (its data, model, frozen blocks and optimiser) and save plot + JSON."""
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"need 0 < start_lr < end_lr; got {start_lr} and {end_lr}")
    if steps < 10:
        raise ConfigError(f"steps={steps} is too few for a range test; use 50 or more")
    out_dir = Path(out_dir or artifacts_dir() / "lr_find" / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.backbone}")
    parts = build_run(config, show_progress=False)
    rates, smoothed = range_test(parts, start_lr, end_lr, steps)
    suggestion = suggest_learning_rate(rates, smoothed)
    write_json(
        out_dir / "lr_find.json",
        {"config": config.to_dict(), "learning_rates": rates, "losses": smoothed, "suggestion": suggestion},
    )
    from plantlib.evaluation.plots import plot_lr_find, save_figure

    save_figure(plot_lr_find(rates, smoothed, suggestion), out_dir / "lr_find.png")
    return LrFindResult(rates, smoothed, suggestion, out_dir)
