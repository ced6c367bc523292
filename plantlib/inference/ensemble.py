"""Several checkpoints of the same classes as one predictor: each image's class probabilities averaged.

A cross-validation directory stands for its fold models; evaluated together on "test" they meet the images every
fold left out (the test split outside the CV pool), so K fold models become one final model with an honest score.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plantlib.config import RunConfig
from plantlib.data import DecodedImageCache
from plantlib.data.dataset import resize_side
from plantlib.data.split import EXCLUDED
from plantlib.errors import ConfigError
from plantlib.inference.predictor import LoadedModel, Predictor, load_model
from plantlib.runs import CvDir, is_cv_dir


@dataclass
class Ensemble:
    """Members of the same classes; `probabilities` is their mean. Each member preprocesses as it was trained."""

    members: list[LoadedModel]
    output_dir: Path  # where evaluations of the ensemble are saved
    test_split: str = "test"

    def __post_init__(self) -> None:
        names = {tuple(member.class_names) for member in self.members}
        if len(names) != 1:
            raise ConfigError(f"ensemble members must share their classes; got {sorted(names)}")

    @property
    def class_names(self) -> list[str]:
        return self.members[0].class_names

    @property
    def config(self) -> RunConfig:
        return self.members[0].config

    @property
    def run_dir(self) -> Path:
        return self.members[0].run_dir

    @property
    def evaluation_dir(self) -> Path:
        return self.output_dir

    @property
    def description(self) -> str:
        tta = " with test-time augmentation" if self.members[0].tta else ""
        return f"ensemble of {len(self.members)} checkpoints ({self.members[0].checkpoint_path}, …){tta}"

    def image_cache(self) -> DecodedImageCache:
        """One decode per image for every member: kept at the largest member's resize side."""
        return DecodedImageCache(max_side=max(resize_side(member.image_size) for member in self.members))

    def probabilities(
        self, files: Sequence[Path], batch_size: int = 32, cache: DecodedImageCache | None = None
    ) -> np.ndarray:
        cache = cache or self.image_cache()
        return np.mean([member.probabilities(files, batch_size, cache) for member in self.members], axis=0)

    def preprocessing_threads(self) -> contextlib.AbstractContextManager:
        return self.members[0].preprocessing_threads()


def member_checkpoints(path: Path) -> list[Path]:
    """A checkpoint or run directory as itself; a cross-validation directory as its folds' best checkpoints."""
    cv = CvDir(Path(path))
    if cv.exists():
        folds = [run.best_checkpoint for run in cv.fold_runs() if run.best_checkpoint.is_file()]
        if not folds:
            raise ConfigError(f"{path} is a cross-validation directory without finished folds; finish it first")
        return folds
    return [cv.path]


def load_predictor(
    paths: Sequence[Path], device: str = "auto", engine: str = "auto", tta: bool = False, calibrated: bool = True
) -> Predictor:
    """One checkpoint as a `LoadedModel`; several, or a cross-validation directory, as an `Ensemble` (each member
    calibrated by its own temperature unless `calibrated=False`)."""
    paths = [Path(p) for p in paths]
    checkpoints = [checkpoint for path in paths for checkpoint in member_checkpoints(path)]
    members = [
        load_model(checkpoint, device=device, engine=engine, tta=tta, calibrated=calibrated)
        for checkpoint in checkpoints
    ]
    if len(members) == 1:
        return members[0]
    from_cv = len(paths) == 1 and is_cv_dir(paths[0])
    output = paths[0] / "ensemble" if from_cv else members[0].run_dir / f"ensemble-of-{len(members)}"
    return Ensemble(members, output, test_split=EXCLUDED if from_cv else "test")
