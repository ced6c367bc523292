"""Experiment tracking: whether runs are tracked, what is logged, the Trainer callback that records every run,
and `ParentRun`, the run that groups others. Every MLflow call goes through `mlflow_store.MlflowStore`.

All MLflow calls of a training run happen on one background thread, so tracking costs the training loop a queue
put per epoch, and a slow or lost server never stalls or ends training: the run directory stays complete, and
`plantlib track RUN_DIR` uploads it later.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import subprocess
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from plantlib.config import RunConfig
from plantlib.errors import ConfigError
from plantlib.experiments.mlflow_store import PARAM_VALUE_LIMIT, MlflowStore, resolve_tracking_uri
from plantlib.paths import project_root
from plantlib.runs import FIGURES_DIR, RunDir
from plantlib.training.trainer import Callback, Trainer, TrainingResult

TRACKING_ENV = "PLANTLIB_TRACKING"  # overrides tracking="auto": "on" or "off" (the test suite sets "off")
INSTALL_HINT = "experiment tracking is off: MLflow is not installed (pip install mlflow)"
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")
_FINISH_TIMEOUT_S = 120.0


# ------------------------------------------------------------------------------------------- whether to track


def mlflow_available() -> bool:
    """Whether MLflow is installed (found without importing it: the import alone takes seconds)."""
    return importlib.util.find_spec("mlflow") is not None


def tracking_wanted(config: RunConfig) -> bool:
    """Whether runs of `config` are tracked: "on", "off", or "auto" (the environment's choice, else when installed)."""
    mode = config.tracking
    if mode == "auto":
        mode = os.environ.get(TRACKING_ENV, "auto").strip().lower() or "auto"
        if mode not in ("auto", "on", "off"):
            raise ConfigError(f"{TRACKING_ENV}={mode!r} is not allowed; use on, off or auto")
    if mode == "off":
        return False
    if mlflow_available():
        return True
    if mode == "on":
        raise ConfigError("tracking='on' needs MLflow: pip install mlflow (or use tracking='off')")
    warnings.warn(INSTALL_HINT, stacklevel=2)
    return False


# ------------------------------------------------------------------------------------------- what is logged


def flatten_config(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The config as MLflow parameters: one string per field, nested dicts (`extra`) as dotted names."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:PARAM_VALUE_LIMIT]
    return flat


def git_commit(folder: Path) -> str | None:
    """The commit checked out in `folder`'s git repository, or None outside one (or without git)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def run_tags(facts: Mapping[str, Any], run_dir: Path) -> dict[str, str]:
    """Tags that make a run findable: backbone, data and split, versions, device, world size."""
    from importlib.metadata import version

    tags = {
        "backbone": str(facts["backbone"]),
        "dataset": Path(str(facts["data_dir"])).name,
        "split": Path(str(facts["split_file"])).stem,
        "device": str(facts["device"]),
        "world_size": str(facts["distributed"]["world_size"]),
        "plantlib_version": version("plantlib"),
        "run_dir": str(run_dir),
    }
    commit = git_commit(project_root())
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def metric_values(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """A metrics dict as MLflow metrics: `<prefix>_<name>` for each number, `<prefix>_<name>_ci_low/high` for each
    95% interval in its `ci95` (the test split's `test_...`, a cross-validation's pooled `cv_...`)."""
    flat = {
        f"{prefix}_{key}": float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    for key, bounds in (metrics.get("ci95") or {}).items():
        if bounds and len(bounds) == 2:
            flat[f"{prefix}_{key}_ci_low"], flat[f"{prefix}_{key}_ci_high"] = float(bounds[0]), float(bounds[1])
    return flat


def epoch_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    return {key: float(record[key]) for key in EPOCH_METRICS if record.get(key) is not None}


def run_summary_metrics(info: dict[str, Any]) -> dict[str, float]:
    """Whole-run numbers logged at the end: epochs trained and training time."""
    return {"epochs_done": float(info.get("epochs_done", 0)), "train_seconds": float(info.get("train_seconds", 0))}


def tracking_record(uri: str, run_id: str | None, status: str, parent_run_id: str | None) -> dict[str, Any]:
    """run.json's `tracking`: where the run is tracked, how far, and the run it is nested under (when it is)."""
    nesting = {"parent_run_id": parent_run_id} if parent_run_id else {}
    return {"uri": uri, "run_id": run_id, "status": status, **nesting}


# ---------------------------------------------------------------------------------------- the callback


class _Worker:
    """One daemon thread that runs submitted calls in order; after the first failure it skips the rest."""

    def __init__(self, on_failure: Callable[[BaseException], None]) -> None:
        self.tasks: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self.failed: BaseException | None = None
        self.on_failure = on_failure
        self.thread = threading.Thread(target=self._work, name="plantlib-tracking", daemon=True)
        self.thread.start()

    def submit(self, task: Callable[[], None]) -> None:
        self.tasks.put(task)

    def close(self, timeout_s: float) -> bool:
        """Wait for every submitted call; False when they did not finish within `timeout_s`."""
        self.tasks.put(None)
        self.thread.join(timeout_s)
        return not self.thread.is_alive()

    def _work(self) -> None:
        while (task := self.tasks.get()) is not None:
            if self.failed is not None:
                continue
            try:
                task()
            except Exception as error:  # the store went away: training goes on, the run dir keeps everything
                self.failed = error
                self.on_failure(error)


class MlflowTracking(Callback):
    """Records a Trainer's run in MLflow: config as parameters, tags, per-epoch metrics, test metrics, files.

    Only the process that writes the run directory (rank 0) tracks. A resumed run continues its MLflow run
    (the id is kept in the run directory's tracking file and run.json). `parent_run_id` nests a new run under
    a group (a cross-validation, a comparison, a sweep).
    """

    def __init__(self, uri: str, experiment: str, parent_run_id: str | None = None) -> None:
        self.uri = uri
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.run_id: str | None = None
        self.store: MlflowStore | None = None
        self.worker: _Worker | None = None
        self.run_dir: Path | None = None

    # -- hooks (training thread) -----------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer) -> None:
        if not trainer.is_main_process:
            return
        self.run_dir = trainer.run_dir
        previous = RunDir(trainer.run_dir).read_tracking()
        resume_id = previous.get("run_id") if previous.get("uri") == self.uri else None
        facts, config = trainer.facts(), trainer.config.to_dict()
        trainer.annotate(tracking=tracking_record(self.uri, resume_id, "starting", self.parent_run_id))
        self.worker = _Worker(self._lost)
        self.worker.submit(lambda: self._start(resume_id, facts, config))

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if self.worker is not None:
            metrics, epoch = epoch_metrics(record), int(record["epoch"])
            self.worker.submit(lambda: self._log_metrics(metrics, step=epoch))

    def on_fit_end(self, trainer: Trainer, result: TrainingResult) -> None:
        if self.worker is None:
            return
        from plantlib.evaluation.plots import plot_history, save_figure, save_run_figures

        run = RunDir(trainer.run_dir)
        folder = run.figures_dir
        if result.test_metrics is None:  # a run that evaluated no test split (a sweep's trial): its history only
            figures = [save_figure(plot_history(result.history), folder / "history.png")]
            metrics = {}
        else:
            figures = save_run_figures(folder, result.history, result.test_metrics, run.read_predictions())
            metrics = metric_values(result.test_metrics, "test")
        metrics.update(run_summary_metrics({"epochs_done": len(result.history), "train_seconds": result.seconds}))
        self.worker.submit(lambda: self._finish(metrics, run, figures, "FINISHED"))
        self._close(trainer)

    def on_fit_failed(self, trainer: Trainer, status: str) -> None:
        if self.worker is None:
            return
        state = {"interrupted": "KILLED", "pruned": "KILLED"}.get(status, "FAILED")
        self.worker.submit(lambda: self._finish({}, RunDir(trainer.run_dir), None, state))
        self._close(trainer, timeout_s=15.0)

    def _close(self, trainer: Trainer, timeout_s: float = _FINISH_TIMEOUT_S) -> None:
        assert self.worker is not None
        done = self.worker.close(timeout_s)
        tracking = tracking_record(self.uri, self.run_id, "tracked", self.parent_run_id)
        if self.worker.failed is not None or not done or self.run_id is None:
            tracking["status"] = "not tracked" if self.run_id is None else "incomplete"
            tracking["how_to_sync"] = f"plantlib track {trainer.run_dir}"
        trainer.annotate(tracking=tracking)
        self.worker = None

    # -- MLflow calls (tracking thread) ----------------------------------------------------------------
    def _start(self, resume_id: str | None, facts: dict[str, Any], config: dict[str, Any]) -> None:
        assert self.run_dir is not None
        store = MlflowStore(self.uri, self.experiment)
        if resume_id:
            store.resume_run(resume_id)
            self.run_id = resume_id
        else:
            tags = run_tags(facts, self.run_dir)
            self.run_id = store.create_run(self.run_dir.name, tags, parent_run_id=self.parent_run_id)
            RunDir(self.run_dir).write_tracking({"uri": self.uri, "run_id": self.run_id})
            store.log_params(self.run_id, flatten_config(config))
        self.store = store

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        assert self.store is not None and self.run_id is not None
        self.store.log_metrics(self.run_id, metrics, step=step)

    def _finish(self, metrics: dict[str, float], run: RunDir, figures: list[Path] | None, status: str) -> None:
        """The last metrics and the run's files (with figures and best checkpoint when it finished); then end it."""
        assert self.store is not None and self.run_id is not None
        if metrics:
            self._log_metrics(metrics, step=0)
        self.store.log_files(self.run_id, run.files())
        if figures is not None:
            self.store.log_files(self.run_id, figures, FIGURES_DIR)
            self.store.log_files(self.run_id, [run.best_checkpoint], "checkpoint")
        self.store.end_run(self.run_id, status)

    def _lost(self, error: BaseException) -> None:
        where = f"; its run directory keeps everything: plantlib track {self.run_dir}" if self.run_dir else ""
        warnings.warn(
            f"experiment tracking stopped ({error.__class__.__name__}: {str(error)[:200]}); training goes on{where}",
            stacklevel=1,
        )


def tracking_summary(run_dir: Path) -> str:
    """One line saying where a run is tracked and how to look at it (read from its run directory)."""
    tracking = RunDir(run_dir).read_info().get("tracking")
    if not tracking:
        return "not tracked (tracking is off); plantlib track RUN_DIR records it later"
    where = tracking.get("uri", "")
    if tracking.get("status") != "tracked":
        return f"{tracking.get('status')} in {where}: sync it with {tracking.get('how_to_sync')}"
    ui = "make ui (or plantlib ui), then open http://127.0.0.1:5000" if where.startswith("sqlite") else where
    return f"MLflow run {tracking.get('run_id')} in {where}; to browse: {ui}"


class ParentRun:
    """An MLflow run that groups others (a comparison, a cross-validation, a sweep): `run_id` nests them.

    Used as a context manager; it ends FINISHED, or FAILED when the block raises. `parent_run_id` nests the group
    itself under another (a backbone's cross-validation under the comparison). When tracking is off or the store
    cannot be reached, `run_id` is None and everything else is a no-op (with one warning).
    """

    def __init__(
        self,
        config: RunConfig,
        name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        self.run_id: str | None = None
        self.store: MlflowStore | None = None
        if not tracking_wanted(config):
            return
        try:
            self.store = MlflowStore.for_config(config)
            self.run_id = self.store.create_run(name, {"kind": "group", **(tags or {})}, params, parent_run_id)
        except Exception as error:
            warnings.warn(f"the group run {name!r} is not tracked ({error.__class__.__name__}: {error})", stacklevel=2)
            self.run_id = None

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        if self.store is not None and self.run_id is not None:
            self.store.log_metrics(self.run_id, metrics)

    def log_file(self, path: Path, folder: str | None = None) -> None:
        if self.store is not None and self.run_id is not None:
            self.store.log_files(self.run_id, [path], folder)

    def __enter__(self) -> ParentRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        if self.store is not None and self.run_id is not None:
            self.store.end_run(self.run_id, "FINISHED" if kind is None else "FAILED")


def tracking_callbacks(config: RunConfig, parent_run_id: str | None = None) -> list[Callback]:
    """The callbacks that track runs of `config` (none when tracking is off or MLflow is missing), nested under
    the MLflow run `parent_run_id` when given (a cross-validation, a comparison, a sweep)."""
    if not tracking_wanted(config):
        return []
    return [MlflowTracking(resolve_tracking_uri(config.tracking_uri), config.experiment, parent_run_id)]
