"""The one place that talks to MLflow: a Trainer callback that records every run, and the store it writes to.

The default store is embedded in the project (a SQLite file, `artifacts/mlflow.db`, with artifacts in
`artifacts/mlruns`): no server, works offline. `tracking_uri` or `$MLFLOW_TRACKING_URI` points at any MLflow
server instead. All MLflow calls of a training run happen on one background thread, so tracking costs the
training loop a queue put per epoch, and a slow or lost server never stalls or ends training: the run
directory stays complete, and `plantlib track RUN_DIR` uploads it later.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import queue
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from plantlib.config import RunConfig
from plantlib.errors import ConfigError, PlantlibError
from plantlib.io import read_json, write_json
from plantlib.paths import artifacts_dir, project_root
from plantlib.training.trainer import Callback, Trainer, TrainingResult

TRACKING_ENV = "PLANTLIB_TRACKING"  # overrides tracking="auto": "on" or "off" (the test suite sets "off")
TRACKING_FILE = "tracking.json"  # in a run directory: where the run is tracked, written as soon as it is known
INSTALL_HINT = "experiment tracking is off: MLflow is not installed (pip install mlflow)"
RUN_FILES = ("config.json", "history.json", "metrics.json", "predictions.csv", "run.json")
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")
# MLflow's HTTP client retries for minutes by default; a training run must not wait that long for a lost server.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_FINISH_TIMEOUT_S = 120.0
EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


class TrackingError(PlantlibError):
    """The tracking store cannot be reached or refuses a request; the message says where and how to fix it."""


# ---------------------------------------------------------------------------------------------- the store


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


def embedded_store() -> tuple[str, Path]:
    """The project's own store: the SQLite URI of `artifacts/mlflow.db` and the artifact folder beside it."""
    folder = artifacts_dir()
    return f"sqlite:///{(folder / 'mlflow.db').resolve()}", (folder / "mlruns").resolve()


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """`explicit`, else `$MLFLOW_TRACKING_URI`, else the embedded SQLite store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or embedded_store()[0]


def artifact_root_for(uri: str) -> Path | None:
    """Where runs of a SQLite store keep their files: `mlruns/` beside the database (None: the store decides)."""
    if uri == embedded_store()[0]:
        return embedded_store()[1]
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns"
    return None  # a server or file store has its own artifact location


def _quiet_mlflow() -> None:
    """No usage reports and short HTTP retries, unless the user chose otherwise; before MLflow is imported."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for name, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def client_for(uri: str) -> Any:
    """An `MlflowClient` for `uri`, with the project's folders made for the embedded store."""
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    root = artifact_root_for(uri)
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client: Any, uri: str, name: str) -> str:
    """The id of experiment `name`, created when missing (artifacts inside the project for the embedded store).

    The experiment is marked as model training, so the MLflow UI opens on its runs table.
    """
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        root = artifact_root_for(uri)
        with contextlib.suppress(MlflowException):  # another process may have created it meanwhile
            client.create_experiment(name, artifact_location=root.as_uri() if root is not None else None)
        found = client.get_experiment_by_name(name)
        if found is None:
            raise TrackingError(f"cannot create MLflow experiment {name!r} in {uri}")
    if EXPERIMENT_KIND_TAG not in found.tags:
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return found.experiment_id


def check_reachable(uri: str, timeout_s: float = 3.0) -> None:
    """Fail fast with a TrackingError when an http(s) tracking server does not answer its health check."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout_s).raise_for_status()
    except requests.RequestException as error:
        raise TrackingError(f"tracking server {uri} is not reachable ({error.__class__.__name__})") from error


# ------------------------------------------------------------------------------------------- what is logged


def flatten_config(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The config as MLflow parameters: one string per field, nested dicts (`extra`) as dotted names."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:6000]  # MLflow's limit on a parameter value
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


def run_tags(facts: Mapping[str, Any], run_dir: Path, parent_run_id: str | None) -> dict[str, str]:
    """Tags that make a run findable: backbone, data and split, versions, device, world size, nesting."""
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
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return tags


def test_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Test-split numbers as MLflow metrics: `test_<name>` and `test_<name>_ci_low/high` for the 95% CIs."""
    flat = {
        f"test_{key}": float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    for key, bounds in (metrics.get("ci95") or {}).items():
        if bounds and len(bounds) == 2:
            flat[f"test_{key}_ci_low"], flat[f"test_{key}_ci_high"] = float(bounds[0]), float(bounds[1])
    return flat


def epoch_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    return {key: float(record[key]) for key in EPOCH_METRICS if record.get(key) is not None}


def run_summary_metrics(info: dict[str, Any]) -> dict[str, float]:
    """Whole-run numbers logged at the end: epochs trained and training time."""
    return {"epochs_done": float(info.get("epochs_done", 0)), "train_seconds": float(info.get("train_seconds", 0))}


def read_tracking_file(run_dir: Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / TRACKING_FILE)


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
    (the id is kept in the run directory's tracking.json and run.json).
    """

    def __init__(self, uri: str, experiment: str, parent_run_id: str | None = None) -> None:
        self.uri = uri
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.run_id: str | None = None
        self.client: Any = None
        self.worker: _Worker | None = None
        self.run_dir: Path | None = None

    # -- hooks (training thread) -----------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer) -> None:
        if not trainer.is_main_process:
            return
        self.run_dir = trainer.run_dir
        previous = read_tracking_file(trainer.run_dir)
        resume_id = previous.get("run_id") if previous.get("uri") == self.uri else None
        facts, config = trainer.facts(), trainer.config.to_dict()
        trainer.annotate(tracking={"uri": self.uri, "status": "starting", "run_id": resume_id})
        self.worker = _Worker(self._lost)
        self.worker.submit(lambda: self._start(resume_id, facts, config))

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if self.worker is not None:
            metrics, epoch = epoch_metrics(record), int(record["epoch"])
            self.worker.submit(lambda: self._log_metrics(metrics, step=epoch))

    def on_fit_end(self, trainer: Trainer, result: TrainingResult) -> None:
        if self.worker is None:
            return
        import pandas as pd

        from plantlib.evaluation.plots import plot_history, save_figure, save_run_figures

        if result.test_metrics is None:  # a run that evaluated no test split (a sweep's trial): its history only
            figures = [save_figure(plot_history(result.history), trainer.run_dir / "figures" / "history.png")]
            metrics = {}
        else:
            predictions = pd.read_csv(trainer.run_dir / "predictions.csv")
            figures = save_run_figures(trainer.run_dir / "figures", result.history, result.test_metrics, predictions)
            metrics = test_metrics(result.test_metrics)
        metrics.update(run_summary_metrics({"epochs_done": len(result.history), "train_seconds": result.seconds}))
        files = [trainer.run_dir / name for name in RUN_FILES] + figures
        best = trainer.run_dir / "best.pt"
        self.worker.submit(lambda: self._finish(metrics, files, best, "FINISHED"))
        self._close(trainer)

    def on_fit_failed(self, trainer: Trainer, status: str) -> None:
        if self.worker is None:
            return
        state = {"interrupted": "KILLED", "pruned": "KILLED"}.get(status, "FAILED")
        files = [trainer.run_dir / name for name in RUN_FILES]
        self.worker.submit(lambda: self._finish({}, files, None, state))
        self._close(trainer, timeout_s=15.0)

    def _close(self, trainer: Trainer, timeout_s: float = _FINISH_TIMEOUT_S) -> None:
        assert self.worker is not None
        done = self.worker.close(timeout_s)
        tracking = {"uri": self.uri, "run_id": self.run_id, "status": "tracked"}
        if self.worker.failed is not None or not done or self.run_id is None:
            tracking["status"] = "not tracked" if self.run_id is None else "incomplete"
            tracking["how_to_sync"] = f"plantlib track {trainer.run_dir}"
        trainer.annotate(tracking=tracking)
        self.worker = None

    # -- MLflow calls (tracking thread) ----------------------------------------------------------------
    def _start(self, resume_id: str | None, facts: dict[str, Any], config: dict[str, Any]) -> None:
        assert self.run_dir is not None
        check_reachable(self.uri)
        client = client_for(self.uri)
        if resume_id:
            client.update_run(resume_id, status="RUNNING")
            self.run_id = resume_id
        else:
            run = client.create_run(
                experiment_id(client, self.uri, self.experiment),
                run_name=self.run_dir.name,
                tags=run_tags(facts, self.run_dir, self.parent_run_id),
            )
            self.run_id = run.info.run_id
            write_json(self.run_dir / TRACKING_FILE, {"uri": self.uri, "run_id": self.run_id})
            log_params(client, self.run_id, flatten_config(config))
        self.client = client

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        entries = [Metric(key, value, stamp, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=entries, synchronous=True)

    def _finish(self, metrics: dict[str, float], files: list[Path], best: Path | None, status: str) -> None:
        if metrics:
            self._log_metrics(metrics, step=0)
        for file in files:
            if file.is_file():
                folder = "figures" if file.parent.name == "figures" else None
                self.client.log_artifact(self.run_id, str(file), folder)
        if best is not None and best.is_file():
            self.client.log_artifact(self.run_id, str(best), "checkpoint")
        self.client.set_terminated(self.run_id, status)

    def _lost(self, error: BaseException) -> None:
        where = f"; its run directory keeps everything: plantlib track {self.run_dir}" if self.run_dir else ""
        warnings.warn(
            f"experiment tracking stopped ({error.__class__.__name__}: {str(error)[:200]}); training goes on{where}",
            stacklevel=1,
        )


def log_params(client: Any, run_id: str, params: Mapping[str, str]) -> None:
    """Log parameters in batches of 100, the most MLflow takes in one call."""
    from mlflow.entities import Param

    items = [Param(key, value) for key, value in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100], synchronous=True)


def tracking_summary(run_dir: Path) -> str:
    """One line saying where a run is tracked and how to look at it (read from its run directory)."""
    from plantlib.runs import read_run_info

    tracking = read_run_info(run_dir).get("tracking")
    if not tracking:
        return "not tracked (tracking is off); plantlib track RUN_DIR records it later"
    where = tracking.get("uri", "")
    if tracking.get("status") != "tracked":
        return f"{tracking.get('status')} in {where}: sync it with {tracking.get('how_to_sync')}"
    ui = "make ui (or plantlib ui), then open http://127.0.0.1:5000" if where.startswith("sqlite") else where
    return f"MLflow run {tracking.get('run_id')} in {where}; to browse: {ui}"


class ParentRun:
    """An MLflow run that groups others (a comparison, a cross-validation, a sweep): `run_id` nests them.

    Used as a context manager; it ends FINISHED, or FAILED when the block raises. When tracking is off or the
    store cannot be reached, `run_id` is None and everything else is a no-op (with one warning).
    """

    def __init__(
        self,
        config: RunConfig,
        name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.run_id: str | None = None
        self.client: Any = None
        if not tracking_wanted(config):
            return
        uri = resolve_tracking_uri(config.tracking_uri)
        try:
            check_reachable(uri)
            self.client = client_for(uri)
            run = self.client.create_run(
                experiment_id(self.client, uri, config.experiment),
                run_name=name,
                tags={
                    "kind": "group",
                    **(tags or {}),
                    **({"mlflow.parentRunId": config.tracking_parent} if config.tracking_parent else {}),
                },
            )
            self.run_id = run.info.run_id
            if params:
                log_params(self.client, self.run_id, {k: str(v)[:6000] for k, v in params.items()})
        except Exception as error:
            warnings.warn(f"the group run {name!r} is not tracked ({error.__class__.__name__}: {error})", stacklevel=2)
            self.run_id = None

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        if self.run_id is not None:
            from mlflow.entities import Metric

            stamp = int(time.time() * 1000)
            entries = [Metric(key, float(value), stamp, 0) for key, value in metrics.items()]
            self.client.log_batch(self.run_id, metrics=entries, synchronous=True)

    def log_file(self, path: Path, folder: str | None = None) -> None:
        if self.run_id is not None:
            self.client.log_artifact(self.run_id, str(path), folder)

    def __enter__(self) -> ParentRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FINISHED" if kind is None else "FAILED")


def tracking_callbacks(config: RunConfig) -> list[Callback]:
    """The callbacks that track runs of `config` (none when tracking is off or MLflow is missing)."""
    if not tracking_wanted(config):
        return []
    return [MlflowTracking(resolve_tracking_uri(config.tracking_uri), config.experiment, config.tracking_parent)]
