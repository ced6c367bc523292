"""The tracking store outside a training run: the runs table, syncing a run directory, the registry, the UI.

Every MLflow call goes through `plantlib.experiments.mlflow_store.MlflowStore`, so one object decides how MLflow
is reached (embedded SQLite by default, a server when pointed at one).
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from plantlib.checkpoint import find_checkpoint
from plantlib.children import owned_process_group
from plantlib.config import RunConfig
from plantlib.errors import ConfigError, PlantlibError
from plantlib.experiments.mlflow_store import PARENT_TAG, MlflowStore, artifact_root_for, resolve_tracking_uri
from plantlib.experiments.tracking import (
    epoch_metrics,
    flatten_config,
    metric_values,
    run_summary_metrics,
    run_tags,
    tracking_record,
)
from plantlib.runs import BEST_CHECKPOINT, CONFIG_FILE, FIGURES_DIR, RUN_FILE, RunDir

TABLE_PARAMS = ("learning_rate", "batch_size", "image_size", "frozen_blocks", "epochs")
_FINAL_STATUS = {"finished": "FINISHED", "interrupted": "KILLED"}
UI_HOST = "127.0.0.1"
UI_READY_TIMEOUT_S = 300.0  # the server's start-up takes 5-20 s on a laptop
ALIAS_PATTERN = re.compile(r"[\w-]+")  # MLflow's rule for a registered model's alias


def _run_dir_of(path: Path) -> RunDir:
    """The run directory `path` is, or holds the file `path`; an error naming the path otherwise."""
    path = Path(path)
    run = RunDir(path.parent if path.is_file() else path)
    if not run.is_run():
        raise PlantlibError(f"{path} is not a run directory (no {CONFIG_FILE}); pass artifacts/runs/<run>")
    return run


def _tracked_id(store: MlflowStore, run: RunDir) -> str | None:
    """The run's MLflow run id when its tracking file names this store and the store still has the run."""
    tracked = run.read_tracking()
    return store.existing_run(tracked.get("run_id") if tracked.get("uri") == store.uri else None)


def _parent_run_id(run: RunDir, info: dict[str, Any]) -> str | None:
    """The MLflow run the run is nested under: recorded by its tracking callback in run.json, or (a run made by
    an earlier version) the config's former `tracking_parent`."""
    return (info.get("tracking") or {}).get("parent_run_id") or run.read_config_values().get("tracking_parent")


def sync_run_dir(run_dir: Path, tracking_uri: str | None = None) -> str:
    """Bring the store up to date with a run directory; its MLflow run id. Safe to repeat: logs what is missing.

    Uses the run's MLflow run when the store has it (a run tracked until its server went away), else makes one.
    """
    run = _run_dir_of(run_dir)
    config = run.read_config()
    info = run.read_info()
    if not info:
        raise PlantlibError(f"{run.path} has no {RUN_FILE}: the run never started; train or resume it first")
    store = MlflowStore.for_config(config, tracking_uri)
    parent = _parent_run_id(run, info)
    run_id = _tracked_id(store, run)
    if run_id is None:
        run_id = store.create_run(run.name, run_tags(info, run.path), parent_run_id=parent)
        run.write_tracking({"uri": store.uri, "run_id": run_id})
    _log_missing(store, run_id, run, config, info)
    store.end_run(run_id, _FINAL_STATUS.get(str(info.get("status")), "FAILED"))
    run.write_info({**info, "tracking": tracking_record(store.uri, run_id, "tracked", parent)})
    return run_id


def _log_missing(store: MlflowStore, run_id: str, run: RunDir, config: RunConfig, info: dict[str, Any]) -> None:
    """The parameters, metric points and files the store's run lacks."""
    logged = store.logged_params(run_id)
    store.log_params(run_id, {k: v for k, v in flatten_config(config.to_dict()).items() if k not in logged})
    wanted = {int(row["epoch"]): epoch_metrics(row) for row in run.read_history()}
    test = run.read_metrics()
    if test is not None:
        wanted.setdefault(0, {}).update(metric_values(test, "test") | run_summary_metrics(info))
    done = store.logged_steps(run_id, {key for metrics in wanted.values() for key in metrics})
    stamp = int(1000 * run.config_file.stat().st_mtime)
    for step, metrics in wanted.items():
        missing = {key: value for key, value in metrics.items() if (key, step) not in done}
        if missing:
            store.log_metrics(run_id, missing, step=step, timestamp_ms=stamp + step)
    store.log_files(run_id, run.files())
    store.log_files(run_id, sorted(run.figures_dir.glob("*.png")), FIGURES_DIR)
    store.log_files(run_id, [run.best_checkpoint], "checkpoint")


def tracked_run_id(run_dir: Path, tracking_uri: str | None = None) -> tuple[MlflowStore, str]:
    """(store, MLflow run id) of a run directory, uploading it first when the store does not have it yet."""
    run = _run_dir_of(run_dir)
    store = MlflowStore.for_config(run.read_config(), tracking_uri)
    return store, _tracked_id(store, run) or sync_run_dir(run.path, store.uri)


def log_files(run_dir: Path, files: list[Path], folder: str, tracking_uri: str | None = None) -> str:
    """Attach files (an export, a model card) to a run directory's MLflow run; the run id."""
    store, run_id = tracked_run_id(run_dir, tracking_uri)
    store.log_files(run_id, files, folder)
    return run_id


def registered_model_name(name: str) -> str:
    """`name` without surrounding white space, or an error: a registered model's name is one line of printable
    characters without '/' or ':' (MLflow's rule), so it reads the same in the UI, in URIs and in a terminal."""
    trimmed = name.strip()
    if not trimmed:
        raise PlantlibError("--name must name the registered model, e.g. --name dandelion-grass")
    if not trimmed.isprintable():
        raise PlantlibError(
            f"--name {name!r} holds a line break, tab or other unprintable character; a registered model's name "
            "is one line of printable characters, e.g. --name dandelion-grass"
        )
    if "/" in trimmed or ":" in trimmed:
        raise PlantlibError(f"--name {name!r}: MLflow refuses '/' and ':' in a registered model's name")
    return trimmed


def alias_names(aliases: Sequence[str]) -> list[str]:
    """`aliases` trimmed, or an error naming the bad one: MLflow takes letters, digits, '_' and '-', and keeps
    'latest' and v<number> for itself (checked before a training run, not after it)."""
    checked = []
    for alias in aliases:
        trimmed = alias.strip()
        if not trimmed or not ALIAS_PATTERN.fullmatch(trimmed) or len(trimmed) > 255:
            raise PlantlibError(
                f"--alias {alias!r}: an alias is letters, digits, '_' and '-' (at most 255), e.g. --alias champion"
            )
        if trimmed.lower() == "latest" or re.fullmatch(r"[vV]\d+", trimmed):
            raise PlantlibError(f"--alias {alias!r} is reserved by MLflow (latest, v<number>); choose another name")
        checked.append(trimmed)
    return checked


def register_run(run: Path, name: str, tracking_uri: str | None = None, aliases: Sequence[str] = ()) -> int:
    """Register a run's best checkpoint as a new version of registered model `name` (trimmed, checked by
    `registered_model_name`) and point `aliases` at it; the version number."""
    name, aliases = registered_model_name(name), alias_names(aliases)
    run_dir = _run_dir_of(run)
    find_checkpoint(run_dir.best_checkpoint)  # a clear error when the run has no best checkpoint
    store, run_id = tracked_run_id(run_dir.path, tracking_uri)
    artifact = f"checkpoint/{BEST_CHECKPOINT}"
    version = store.register_version(name, run_id, artifact, f"plantlib run {run_dir.name}")
    store.set_aliases(name, version, aliases)
    return version


def runs_table(
    tracking_uri: str | None = None,
    experiment: str | None = None,
    backbone: str | None = None,
    parent_run_id: str | None = None,
) -> pd.DataFrame:
    """Tracked runs, newest first: name, backbone, key config, epochs, accuracy with its 95% CI (test split, or
    pooled out-of-fold for a cross-validation), time."""
    names, runs = MlflowStore(resolve_tracking_uri(tracking_uri), experiment).search_runs(
        _runs_query(backbone, parent_run_id)
    )
    if not names:
        return pd.DataFrame(columns=["run", "experiment", "backbone", "status"])
    rows = []
    for run in runs:
        params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
        if tags.get("kind") == "group" and not parent_run_id:
            continue  # groups are listed through their members
        scope = "test" if "test_accuracy" in metrics else "cv"  # a run's test split, or a CV's pooled folds
        low, high = metrics.get(f"{scope}_accuracy_ci_low"), metrics.get(f"{scope}_accuracy_ci_high")
        accuracy = metrics.get(f"{scope}_accuracy")
        rows.append(
            {
                "run": run.info.run_name,
                "experiment": names.get(run.info.experiment_id),
                "backbone": tags.get("backbone"),
                **{name: params.get(name) for name in TABLE_PARAMS},
                "epochs_done": _int_or_none(metrics.get("epochs_done")),
                "accuracy": accuracy,
                "ci95": f"{low:.3f}–{high:.3f}" if low is not None and high is not None else "",
                "n": _int_or_none(metrics.get(f"{scope}_n")),
                "scored_on": scope if accuracy is not None else "",
                "train_seconds": metrics.get("train_seconds"),
                "status": _status(run.info.status, tags.get("run_dir")),
                "run_id": run.info.run_id,
            }
        )
    return pd.DataFrame(rows)


def _runs_query(backbone: str | None, parent_run_id: str | None) -> str:
    conditions = [f"tags.backbone = '{backbone}'"] if backbone else []
    conditions += [f"tags.{PARENT_TAG} = '{parent_run_id}'"] if parent_run_id else []
    return " and ".join(conditions)


def _status(status: str, run_dir: str | None) -> str:
    """MLflow's status, except that a RUNNING run whose run directory here says its process is gone is KILLED
    (what `plantlib track` records for it)."""
    if status != "RUNNING" or not run_dir or not RunDir(Path(run_dir)).info_file.is_file():
        return status
    return _FINAL_STATUS["interrupted"] if RunDir(Path(run_dir)).status() == "interrupted" else status


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def ui_command(port: int, tracking_uri: str | None = None) -> list[str]:
    """`mlflow server` on 127.0.0.1 over the project's store (or the given SQLite/file store)."""
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise PlantlibError(f"the tracking store is the server {uri}: open it in a browser instead of plantlib ui")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", UI_HOST]
    command += ["--port", str(port), "--workers", "1"]
    root = artifact_root_for(uri)
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        command += ["--default-artifact-root", root.as_uri()]
    return command


def serve_ui(port: int, tracking_uri: str | None = None) -> int:
    """Serve the MLflow UI on 127.0.0.1:`port` until the server ends or this process is stopped; its exit status.

    A taken port, or a server that ends before it answers, is a one-line error. The server (with its uvicorn and
    job workers) runs in its own process group, ended with this process (SIGINT, SIGTERM or SIGHUP).
    """
    command = ui_command(port, tracking_uri)
    check_port_free(UI_HOST, port)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true")}
    with owned_process_group(command, env=env) as server:
        _wait_until_serving(server, port)
        print(f"MLflow UI on http://{UI_HOST}:{port} (Ctrl-C stops it)", flush=True)
        return server.wait()


def check_port_free(host: str, port: int) -> None:
    """Raise naming the port and `--port` when something listens on `host`:`port` (or it cannot be bound).

    The port is bound without SO_REUSEADDR, which also refuses a port shared with a wildcard listener (macOS
    lets that bind pass with SO_REUSEADDR); a refusal only from connections still closing on the port (nothing
    accepts a connection there) is not counted, since the server binds with SO_REUSEADDR.
    """
    if not 0 < port < 65536:
        raise ConfigError(f"port {port} is not allowed; choose one from 1 to 65535 with --port")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
            return
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                reason = f"port {port} on {host} cannot be used ({error.strerror})"
                raise PlantlibError(f"{reason}; choose another with --port") from None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        if probe.connect_ex((host, port)) != 0:
            return
    raise PlantlibError(f"port {port} on {host} is taken (another plantlib ui or program?); choose another with --port")


def _wait_until_serving(server: Any, port: int, timeout_s: float = UI_READY_TIMEOUT_S) -> None:
    """Return once the server answers its health check; raise if it ends first or does not answer in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = server.poll()
        if status is not None:
            raise PlantlibError(
                f"the MLflow server ended (exit status {status}) before it served port {port}; its output is above"
            )
        connection = http.client.HTTPConnection(UI_HOST, port, timeout=2)  # loopback: never through a proxy
        try:
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            connection.close()
        time.sleep(0.25)
    raise PlantlibError(
        f"the MLflow server did not answer on port {port} within {timeout_s:.0f} s; its output is above"
    )
