"""Compare backbones: one recipe cross-validated per backbone on the same folds, then the verdict rule.

The workflow behind notebook 04 and `plantlib compare-backbones`: one MLflow parent run groups it, each
backbone's cross-validation (and its folds) is nested under it, and `compare.compare_paths` decides.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from plantlib.config import RunConfig
from plantlib.errors import ConfigError
from plantlib.experiments.compare import (
    NOT_DISTINGUISHABLE,
    Comparison,
    compare_paths,
    load_evaluated,
    paired_table,
    summary_table,
)
from plantlib.experiments.cv import CrossValidation, cross_validate, repeat_seeds
from plantlib.experiments.eta import FoldClock
from plantlib.experiments.probe import probe_cross_validate
from plantlib.experiments.tracking import ParentRun


@dataclass
class BackboneComparison:
    """Each backbone's cross-validation, the comparison under the verdict rule (None for one backbone)."""

    results: dict[str, CrossValidation]
    comparison: Comparison | None
    parent_run_id: str | None
    probes: dict[str, CrossValidation] = field(default_factory=dict)  # each backbone's linear probe, when asked
    finetuning: FinetuningGain | None = None


@dataclass
class FinetuningGain:
    """Fine-tuned recipe against its backbone's linear probe, per backbone, under the verdict rule."""

    summary: pd.DataFrame  # the probes' pooled scores (summary_table)
    pairs: pd.DataFrame  # fine-tuned − probe per backbone, Holm's correction over these pairs
    sentence: str


def compare_backbones(
    config: RunConfig,
    backbones: Sequence[str],
    folds: int = 5,
    seeds: Sequence[int] | None = None,
    show_progress: bool = False,
    quiet: bool = False,
    rerun: bool = False,
    linear_probe: bool = False,
) -> BackboneComparison:
    """Cross-validate `config` with each backbone on the same folds (and training seeds), then compare them.

    Every fold's full log stays in its run directory; `quiet` prints one line per fold instead of the log. A
    backbone whose cross-validation already finished with the same recipe, data and plantlib version is reused,
    not trained again, unless `rerun`. `linear_probe` adds each backbone's linear probe on the same folds
    (`experiments.probe`, seconds per backbone) and tests what fine-tuning adds over it.
    """
    names = list(dict.fromkeys(backbones))
    if not names:
        raise ConfigError("name at least one backbone, e.g. efficientnet_lite0,efficientnet_lite1")
    for name in names:
        config.replace(backbone=name)  # an unknown name fails before anything trains
    results: dict[str, CrossValidation] = {}
    clock = FoldClock(total=len(names) * folds * len(repeat_seeds(config.seed, 1, seeds)))
    parent_name = f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    with ParentRun(config, parent_name, {"backbones": ",".join(names), "folds": folds}) as group:
        for index, name in enumerate(names, start=1):
            started = time.perf_counter()
            print(f"[{index}/{len(names)}] {name}: {folds}-fold cross-validation", flush=True)
            result = cross_validate(
                config.replace(backbone=name),
                folds=folds,
                seeds=seeds,
                show_progress=show_progress,
                parent_run_id=group.run_id,
                quiet=quiet,
                rerun=rerun,
                clock=clock,
            )
            results[name] = result
            print(
                f"[{index}/{len(names)}] {name}: pooled out-of-fold accuracy {result.metrics['accuracy']:.3f} "
                f"(n={result.metrics['n']}) in {time.perf_counter() - started:.0f} s; {result.cv_dir}",
                flush=True,
            )
        comparison = None
        if len(results) > 1:
            comparison = compare_paths([r.cv_dir for r in results.values()], names=list(results))
    probes = _linear_probes(config, names, folds, seeds, show_progress, rerun) if linear_probe else {}
    gain = finetuning_gain({n: r.cv_dir for n, r in results.items()}, {n: p.cv_dir for n, p in probes.items()})
    return BackboneComparison(results, comparison, group.run_id, probes, gain)


def _linear_probes(
    config: RunConfig, names: list[str], folds: int, seeds: Sequence[int] | None, show_progress: bool, rerun: bool
) -> dict[str, CrossValidation]:
    """Each backbone's linear probe on the comparison's folds (seconds each; reused by content key)."""
    probes = {}
    for name in names:
        started = time.perf_counter()
        probes[name] = probe_cross_validate(
            config.replace(backbone=name), folds=folds, seeds=seeds, show_progress=show_progress, rerun=rerun
        )
        print(
            f"{name} linear probe: pooled out-of-fold accuracy {probes[name].metrics['accuracy']:.3f} "
            f"in {time.perf_counter() - started:.0f} s; {probes[name].cv_dir}",
            flush=True,
        )
    return probes


def finetuning_gain(finetuned: Mapping[str, Path], probes: Mapping[str, Path]) -> FinetuningGain | None:
    """What fine-tuning adds: each backbone's fine-tuned CV against its probe's, Holm over these pairs; None
    without probes."""
    names = [name for name in finetuned if name in probes]
    if not names:
        return None
    tuned = {name: load_evaluated(finetuned[name], f"{name} fine-tuned") for name in names}
    probed = {name: load_evaluated(probes[name], f"{name} linear probe") for name in names}
    pairs = paired_table([(tuned[name], probed[name]) for name in names])
    claimed = [row.verdict for row in pairs.itertuples() if row.verdict != NOT_DISTINGUISHABLE]
    correction = f"Holm's correction over {len(pairs)} pair{'s' * (len(pairs) != 1)}"
    sentence = (
        f"{'; '.join(claimed)} ({correction})."
        if claimed
        else f"Fine-tuning is not distinguishable from the linear probe for any backbone at 95% ({correction})."
    )
    return FinetuningGain(summary_table(list(probed.values())), pairs, sentence)
