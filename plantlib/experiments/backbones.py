"""Compare backbones: one recipe cross-validated per backbone on the same folds, then the verdict rule.

The workflow behind notebook 04 and `plantlib compare-backbones`: one MLflow parent run groups it, each
backbone's cross-validation (and its folds) is nested under it, and `compare.compare_paths` decides.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from plantlib.config import RunConfig
from plantlib.errors import ConfigError
from plantlib.experiments.compare import Comparison, compare_paths
from plantlib.experiments.cv import CrossValidation, cross_validate
from plantlib.experiments.tracking import ParentRun


@dataclass
class BackboneComparison:
    """Each backbone's cross-validation, the comparison under the verdict rule (None for one backbone)."""

    results: dict[str, CrossValidation]
    comparison: Comparison | None
    parent_run_id: str | None


def compare_backbones(
    config: RunConfig,
    backbones: Sequence[str],
    folds: int = 5,
    seeds: Sequence[int] | None = None,
    show_progress: bool = False,
    quiet: bool = False,
    rerun: bool = False,
) -> BackboneComparison:
    """Cross-validate `config` with each backbone on the same folds (and training seeds), then compare them.

    Every fold's full log stays in its run directory; `quiet` prints one line per fold instead of the log. A
    backbone whose cross-validation already finished with the same recipe, data and plantlib version is reused,
    not trained again, unless `rerun`.
    """
    names = list(dict.fromkeys(backbones))
    if not names:
        raise ConfigError("name at least one backbone, e.g. efficientnet_lite0,efficientnet_lite1")
    for name in names:
        config.replace(backbone=name)  # an unknown name fails before anything trains
    results: dict[str, CrossValidation] = {}
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
    return BackboneComparison(results, comparison, group.run_id)
