"""Confirm a sweep's winner: its best config against the base recipe on folds and seeds the study never saw.

A study's best value is optimistic (it was selected on the images it was measured on); this is the step that
turns "the best trial" into a verdict under the comparison rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from plantlib.config import RunConfig
from plantlib.data import prepare_data
from plantlib.errors import ConfigError
from plantlib.experiments.compare import Comparison, compare_paths
from plantlib.experiments.cv import cross_validate
from plantlib.runs import StudyDir


def confirmation_seeds(study_config: RunConfig, repeats: int = 1) -> tuple[int, list[int]]:
    """A fold seed and `repeats` training seeds the study never used (it split and folded with its split seed,
    sampled with it, and trained every trial with its seed)."""
    if repeats < 1:
        raise ConfigError(f"repeats={repeats} is not allowed; use 1 or more")
    return study_config.effective_split_seed + 1, [study_config.seed + 1 + i for i in range(repeats)]


@dataclass
class Confirmation:
    """The best and the base config cross-validated on the same fresh folds and seeds, compared fold by fold."""

    best_cv: Path
    base_cv: Path
    split_seed: int
    seeds: list[int]
    comparison: Comparison = field(repr=False)

    @property
    def sentence(self) -> str:
        """The comparison's one-sentence verdict."""
        return str(self.comparison.sentence)


def confirm_best(
    best_config_file: Path,
    base_config: RunConfig,
    folds: int = 5,
    seeds: Sequence[int] | None = None,
    split_seed: int | None = None,
    out_dir: Path | None = None,
    show_progress: bool = False,
) -> Confirmation:
    """Cross-validate the study's best config and `base_config` on folds and training seeds the study never used,
    and compare them: is the best config better on images its selection did not see the scores of?

    Both use the study's split, so the test split stays untouched; the fold seed (`split_seed`) and the training
    seeds (one repeat each; by default `confirmation_seeds`) must differ from the study's. The validation images
    the study selected on are part of the cross-validation pool: only the test split is a fully independent check.
    """
    best_config_file = Path(best_config_file)
    if not best_config_file.is_file():
        raise ConfigError(f"best config {best_config_file} does not exist; run plantlib tune first")
    best = RunConfig.from_json(best_config_file)
    fresh_split_seed, fresh_seeds = confirmation_seeds(best)
    split_seed = fresh_split_seed if split_seed is None else split_seed
    seeds = list(fresh_seeds if seeds is None else seeds)
    if split_seed == best.effective_split_seed:
        raise ConfigError(f"split_seed={split_seed} made the study's split and folds; choose another fold seed")
    if not seeds or best.seed in seeds:
        raise ConfigError(f"seeds={seeds} must be a non-empty list without {best.seed}, the seed of the study's trials")
    split_file = prepare_data(best, show_progress=show_progress).split_file  # the study's split, test set included
    out = Path(out_dir) if out_dir else StudyDir(best_config_file.parent).confirm_dir
    pinned = {"split_file": str(split_file), "new_split": False, "split_seed": split_seed, "output_dir": str(out)}
    cv_dirs = [
        cross_validate(config.replace(**pinned), folds=folds, seeds=seeds, show_progress=show_progress).cv_dir
        for config in (best, base_config)
    ]
    comparison = compare_paths(cv_dirs)
    return Confirmation(cv_dirs[0], cv_dirs[1], split_seed, seeds, comparison)
