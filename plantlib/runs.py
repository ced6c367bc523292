"""Run directories and cross-validation directories: every file name they hold, how they are created, and the
one reader and writer of each file. Nothing else in plantlib names a run file; it asks `RunDir` or `CvDir`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plantlib.errors import PlantlibError
from plantlib.io import atomic_write, read_json, write_json
from plantlib.paths import artifacts_dir
from plantlib.processes import process_is_alive

if TYPE_CHECKING:
    import pandas as pd

    from plantlib.config import RunConfig

CONFIG_FILE = "config.json"  # the run's RunConfig, written once when the directory is created
HISTORY_FILE = "history.json"  # one record per finished epoch
METRICS_FILE = "metrics.json"  # the test split's metrics with intervals
PREDICTIONS_FILE = "predictions.csv"  # the test split's per-image predictions
RUN_FILE = "run.json"  # status, facts, timings, headline metrics
TRACKING_FILE = "tracking.json"  # where the run is tracked, written as soon as it is known
SPLIT_FILE = "split.csv"  # a cross-validation fold's own split
LOG_FILE = "train.log"  # a cross-validation fold's printed log (start-up facts, epoch lines), in full
BEST_CHECKPOINT = "best.pt"  # the weights of the best epoch by the monitored metric
LAST_CHECKPOINT = "last.pt"  # everything needed to resume after the last finished epoch
FIGURES_DIR = "figures"  # the run's plots (history, confusion matrix, ...), uploaded with it when tracked
RUN_FILES = (CONFIG_FILE, HISTORY_FILE, METRICS_FILE, PREDICTIONS_FILE, RUN_FILE)  # what a tracked run uploads
CV_FILE = "cv.json"  # marks a cross-validation directory: status, settings and the config its folds train
FOLDS_FILE = "folds.csv"  # a cross-validation's fold assignment, per repeat
OOF_FILE = "oof.csv"  # a cross-validation's out-of-fold predictions
EMBEDDINGS_FILE = "embeddings.npz"  # a linear probe's frozen-backbone embeddings of its pool images
BEST_CONFIG_FILE = "best_config.json"  # a study's best trial as a config `plantlib train --config` reads
AUDIT_FILE = "audit.csv"  # a cross-validation's label audit: every pool image ranked by label-issue score
AUDIT_PAIRS_FILE = "audit_pairs.csv"  # the audit's near-duplicate pairs in the backbone's embedding space
AUDIT_INFO_FILE = "audit.json"  # the audit's settings, counts and the out-of-fold file it was computed from


def evaluation_names(prefix: str = "") -> tuple[str, str]:
    """The metrics and predictions file names of an evaluation: `metrics.json`, or `<prefix>_metrics.json`."""
    stem = f"{prefix}_" if prefix else ""
    return f"{stem}{METRICS_FILE}", f"{stem}{PREDICTIONS_FILE}"


@dataclass(frozen=True)
class Folder:
    """A directory one of the classes below owns: its path (any path-like, kept as a Path) and name."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class RunDir(Folder):
    """One run's directory: its files by name, and typed readers and writers for them."""

    @classmethod
    def create(cls, config: RunConfig, output_dir: str | Path | None = None) -> RunDir:
        """A new `<runs>/<YYYYmmdd-HHMMSS>-<backbone>[-N]` holding config.json (created exclusively)."""
        run_dir = cls(new_run_dir(config.backbone, output_dir if output_dir is not None else config.output_dir))
        run_dir.write_config(config)
        return run_dir

    @classmethod
    def create_at(cls, path: str | Path, config: RunConfig) -> RunDir:
        """`path` (made if missing) holding `config` as config.json: a fold of a cross-validation, a launched run."""
        run_dir = cls(Path(path))
        run_dir.path.mkdir(parents=True, exist_ok=True)
        run_dir.write_config(config)
        return run_dir

    # -- where each file lives -------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def history_file(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def predictions_file(self) -> Path:
        return self.path / PREDICTIONS_FILE

    @property
    def info_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def tracking_file(self) -> Path:
        return self.path / TRACKING_FILE

    @property
    def split_file(self) -> Path:
        return self.path / SPLIT_FILE

    @property
    def figures_dir(self) -> Path:
        return self.path / FIGURES_DIR

    @property
    def best_checkpoint(self) -> Path:
        return self.path / BEST_CHECKPOINT

    @property
    def last_checkpoint(self) -> Path:
        return self.path / LAST_CHECKPOINT

    def files(self) -> list[Path]:
        """The run's record files that exist now (config, history, metrics, predictions, run.json)."""
        return [self.path / name for name in RUN_FILES if (self.path / name).is_file()]

    # -- readers and writers ---------------------------------------------------------------------------
    def is_run(self) -> bool:
        """Whether this is a run directory: it holds config.json."""
        return self.config_file.is_file()

    def write_config(self, config: RunConfig) -> None:
        config.to_json(self.config_file)

    def read_config(self) -> RunConfig:
        from plantlib.config import RunConfig

        if not self.is_run():
            raise PlantlibError(f"{self.path} is not a run directory (no {CONFIG_FILE}); pass artifacts/runs/<run>")
        return RunConfig.from_json(self.config_file)

    def read_config_values(self) -> dict[str, Any]:
        """config.json as saved, unvalidated ({} when missing): for comparing runs made by other versions."""
        return read_json(self.config_file)

    def write_history(self, history: list[dict[str, Any]]) -> None:
        write_json(self.history_file, history)

    def read_history(self) -> list[dict[str, Any]]:
        """The finished epochs' records; [] when none was written (or the file is unreadable)."""
        try:
            history = json.loads(self.history_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return history if isinstance(history, list) else []

    def read_metrics(self) -> dict[str, Any] | None:
        """The test split's metrics; None when the run has not been tested."""
        return read_json(self.metrics_file) if self.metrics_file.is_file() else None

    def read_predictions(self) -> pd.DataFrame:
        import pandas as pd

        if not self.predictions_file.is_file():
            raise PlantlibError(f"{self.path} has no {PREDICTIONS_FILE}: finish (or resume) the run first")
        return pd.read_csv(self.predictions_file)

    def write_info(self, info: dict[str, Any]) -> None:
        write_run_info(self.path, info)

    def read_info(self) -> dict[str, Any]:
        return read_run_info(self.path)

    def status(self) -> str:
        return run_status(self.path)

    def write_tracking(self, values: dict[str, Any]) -> None:
        write_json(self.tracking_file, values)

    def read_tracking(self) -> dict[str, Any]:
        return read_json(self.tracking_file)


@dataclass(frozen=True)
class CvDir(Folder):
    """One cross-validation's directory: cv.json, the fold assignment, out-of-fold predictions, one RunDir per
    (repeat, fold)."""

    @property
    def info_file(self) -> Path:
        return self.path / CV_FILE

    @property
    def folds_file(self) -> Path:
        return self.path / FOLDS_FILE

    @property
    def oof_file(self) -> Path:
        return self.path / OOF_FILE

    def exists(self) -> bool:
        return is_cv_dir(self.path)

    def fold(self, repeat: int, fold: int) -> RunDir:
        return RunDir(self.path / f"repeat{repeat}-fold{fold}")

    def fold_runs(self) -> list[RunDir]:
        """The fold run directories that started (hold run.json), in name order."""
        if not self.path.is_dir():
            return []
        return [RunDir(p) for p in sorted(self.path.iterdir()) if (p / RUN_FILE).is_file()]

    def write_info(self, info: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.info_file, info)

    def read_info(self) -> dict[str, Any]:
        return read_cv_info(self.path)

    def write_folds(self, assigned: pd.DataFrame) -> None:
        _write_csv(self.folds_file, assigned)

    def copy_folds_from(self, other: CvDir) -> None:
        """The same fold assignment as `other`, for whoever pairs the two image by image."""
        text = other.folds_file.read_text(encoding="utf-8")
        atomic_write(self.folds_file, lambda handle: handle.write(text))

    def write_oof(self, oof: pd.DataFrame) -> None:
        _write_csv(self.oof_file, oof)

    def read_oof(self) -> pd.DataFrame:
        import pandas as pd

        return pd.read_csv(self.oof_file)

    def read_folds(self) -> pd.DataFrame:
        """folds.csv: path, label, group (near-duplicate group) and one `fold_r<r>` column per repeat."""
        import pandas as pd

        return pd.read_csv(self.folds_file, dtype={"path": str, "label": str}, keep_default_na=False)

    @property
    def audit_file(self) -> Path:
        return self.path / AUDIT_FILE

    @property
    def audit_pairs_file(self) -> Path:
        return self.path / AUDIT_PAIRS_FILE

    @property
    def audit_info_file(self) -> Path:
        return self.path / AUDIT_INFO_FILE


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda handle: frame.to_csv(handle, index=False, lineterminator="\n"))


@dataclass(frozen=True)
class StudyDir(Folder):
    """One sweep's directory: its trials' run (or cross-validation) directories, the best config, and the
    confirmation of that config on fresh folds and seeds."""

    @classmethod
    def create(cls, path: str | Path) -> StudyDir:
        study = cls(Path(path))
        study.path.mkdir(parents=True, exist_ok=True)
        return study

    @property
    def trials_dir(self) -> Path:
        return self.path / "runs"

    @property
    def best_config_file(self) -> Path:
        return self.path / BEST_CONFIG_FILE

    @property
    def confirm_dir(self) -> Path:
        return self.path / "confirm"

    def write_best_config(self, config: RunConfig) -> Path:
        config.to_json(self.best_config_file)
        return self.best_config_file


def is_cv_dir(path: str | Path) -> bool:
    """Whether `path` is a cross-validation directory (its fold models stand for it as an ensemble)."""
    return (Path(path) / CV_FILE).is_file()


def read_cv_info(cv_dir: str | Path) -> dict[str, Any]:
    """A cross-validation directory's cv.json: its status, settings and the config its folds train."""
    return json.loads((Path(cv_dir) / CV_FILE).read_text(encoding="utf-8"))


def runs_dir(output_dir: str | Path | None = None) -> Path:
    return Path(output_dir) if output_dir else artifacts_dir() / "runs"


def new_unique_dir(parent: Path, stem: str) -> Path:
    """`parent/stem`, or `stem-2`, `stem-3`, …: created exclusively, so two jobs started together never share one."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 10_000):
        candidate = parent / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise PlantlibError(f"could not create a new directory {stem} under {parent}")


def new_run_dir(backbone: str, output_dir: str | Path | None = None) -> Path:
    """`<runs>/<YYYYmmdd-HHMMSS>-<backbone>[-N]`, created exclusively so two runs started together differ."""
    return new_unique_dir(runs_dir(output_dir), f"{time.strftime('%Y%m%d-%H%M%S')}-{backbone}")


def write_run_info(run_dir: Path, info: dict[str, Any]) -> None:
    """`run.json`: status (running / interrupted / finished), timings and headline metrics; while running, also
    the process that runs it (`processes.this_process()`), so a reader can tell a run that died without a word."""
    write_json(Path(run_dir) / RUN_FILE, info)


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """`run.json` as the run stands now: a "running" run whose process is gone (killed with -9, a crashed
    machine, its pid since reused by another program) reads as "interrupted". The file itself is left as it is:
    a resumed run may be writing it at this moment."""
    info = read_json(Path(run_dir) / RUN_FILE)
    if info.get("status") == "running" and not process_is_alive(info.get("process")):
        info["status"] = "interrupted"
        info["interrupted_because"] = "its process ended without recording how (killed, or the machine stopped)"
    return info


def run_status(run_dir: Path) -> str:
    """A run's status as `read_run_info` reads it ("running", "finished", "interrupted", ...; "" before it started)."""
    return str(read_run_info(run_dir).get("status", ""))


def list_runs(output_dir: str | Path | None = None) -> list[Path]:
    """Run directories, oldest first (the name starts with the start time)."""
    parent = runs_dir(output_dir)
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if p.is_dir() and RunDir(p).is_run())


def latest_run(output_dir: str | Path | None = None, finished: bool = True) -> Path:
    """The newest run (with a best checkpoint when `finished`), or an error saying how to make one."""
    for run in reversed(list_runs(output_dir)):
        if not finished or (read_run_info(run).get("status") == "finished" and RunDir(run).best_checkpoint.is_file()):
            return run
    raise PlantlibError(
        f"no {'finished ' if finished else ''}run found under {runs_dir(output_dir)}; "
        "train one with `plantlib train` or the 02_train notebook"
    )
