"""The tracking store outside a training run: the runs table, syncing a run directory, the registry, the UI.

Everything here goes through `plantlib.experiments.tracking`'s client, so one module decides how MLflow is
reached (embedded SQLite by default, a server when pointed at one).
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from plantlib.checkpoint import BEST_CHECKPOINT, find_checkpoint
from plantlib.children import owned_process_group
from plantlib.config import RunConfig
from plantlib.errors import ConfigError, PlantlibError
from plantlib.experiments.tracking import (
    RUN_FILES,
    TRACKING_FILE,
    TrackingError,
    artifact_root_for,
    check_reachable,
    client_for,
    epoch_metrics,
    experiment_id,
    flatten_config,
    log_params,
    read_tracking_file,
    resolve_tracking_uri,
    run_summary_metrics,
    run_tags,
    test_metrics,
)
from plantlib.io import write_json
from plantlib.runs import RUN_FILE, read_run_info, run_status, write_run_info

TABLE_PARAMS = ("learning_rate", "batch_size", "image_size", "frozen_blocks", "epochs")
_FINAL_STATUS = {"finished": "FINISHED", "interrupted": "KILLED"}
UI_HOST = "127.0.0.1"
UI_READY_TIMEOUT_S = 300.0  # the server's start-up takes 5-20 s on a laptop


def _run_dir_of(path: Path) -> Path:
    path = Path(path)
    run_dir = path.parent if path.is_file() else path
    if not (run_dir / "config.json").is_file():
        raise PlantlibError(f"{path} is not a run directory (no config.json); pass artifacts/runs/<run>")
    return run_dir


def _existing_run(client: Any, run_id: str | None) -> str | None:
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        return client.get_run(run_id).info.run_id
    except MlflowException:
        return None


def sync_run_dir(run_dir: Path, tracking_uri: str | None = None) -> str:
    """Bring the store up to date with a run directory; its MLflow run id. Safe to repeat: logs what is missing.

    Uses the run's MLflow run when the store has it (a run tracked until its server went away), else makes one.
    """
    run_dir = _run_dir_of(run_dir)
    config = RunConfig.from_json(run_dir / "config.json")
    info = read_run_info(run_dir)
    if not info:
        raise PlantlibError(f"{run_dir} has no run.json: the run never started; train or resume it first")
    uri = resolve_tracking_uri(tracking_uri or config.tracking_uri)
    check_reachable(uri)
    client = client_for(uri)
    tracked = read_tracking_file(run_dir)
    run_id = _existing_run(client, tracked.get("run_id") if tracked.get("uri") == uri else None)
    if run_id is None:
        run = client.create_run(
            experiment_id(client, uri, config.experiment),
            run_name=run_dir.name,
            tags=run_tags(info, run_dir, config.tracking_parent),
        )
        run_id = run.info.run_id
        write_json(run_dir / TRACKING_FILE, {"uri": uri, "run_id": run_id})
    _log_missing(client, run_id, run_dir, config, info)
    client.set_terminated(run_id, _FINAL_STATUS.get(str(info.get("status")), "FAILED"))
    write_run_info(run_dir, {**info, "tracking": {"uri": uri, "run_id": run_id, "status": "tracked"}})
    return run_id


def _log_missing(client: Any, run_id: str, run_dir: Path, config: RunConfig, info: dict[str, Any]) -> None:
    from mlflow.entities import Metric

    data = client.get_run(run_id).data
    log_params(client, run_id, {k: v for k, v in flatten_config(config.to_dict()).items() if k not in data.params})
    history_file, metrics_file = run_dir / "history.json", run_dir / "metrics.json"
    history = json.loads(history_file.read_text(encoding="utf-8")) if history_file.is_file() else []
    wanted: list[tuple[str, float, int]] = [
        (key, value, int(row["epoch"])) for row in history for key, value in epoch_metrics(row).items()
    ]
    if metrics_file.is_file():
        final = test_metrics(json.loads(metrics_file.read_text(encoding="utf-8")))
        final.update(run_summary_metrics(info))
        wanted += [(key, value, 0) for key, value in final.items()]
    logged = {(key, m.step) for key in {k for k, _, _ in wanted} for m in client.get_metric_history(run_id, key)}
    stamp = int(1000 * (run_dir / "config.json").stat().st_mtime)
    missing = [Metric(key, value, stamp + step, step) for key, value, step in wanted if (key, step) not in logged]
    for start in range(0, len(missing), 500):
        client.log_batch(run_id, metrics=missing[start : start + 500], synchronous=True)
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    for figure in sorted((run_dir / "figures").glob("*.png")):
        client.log_artifact(run_id, str(figure), "figures")
    if (run_dir / BEST_CHECKPOINT).is_file():
        client.log_artifact(run_id, str(run_dir / BEST_CHECKPOINT), "checkpoint")


def tracked_run_id(run_dir: Path, tracking_uri: str | None = None) -> tuple[Any, str]:
    """(client, MLflow run id) of a run directory, uploading it first when the store does not have it yet."""
    run_dir = _run_dir_of(run_dir)
    config = RunConfig.from_json(run_dir / "config.json")
    uri = resolve_tracking_uri(tracking_uri or config.tracking_uri)
    client = client_for(uri)
    tracked = read_tracking_file(run_dir)
    run_id = _existing_run(client, tracked.get("run_id") if tracked.get("uri") == uri else None)
    return client, run_id or sync_run_dir(run_dir, uri)


def log_files(run_dir: Path, files: list[Path], folder: str, tracking_uri: str | None = None) -> str:
    """Attach files (an export, a model card) to a run directory's MLflow run; the run id."""
    client, run_id = tracked_run_id(run_dir, tracking_uri)
    for file in files:
        client.log_artifact(run_id, str(file), folder)
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


def register_run(run: Path, name: str, tracking_uri: str | None = None) -> int:
    """Register a run's best checkpoint as a new version of registered model `name` (trimmed, checked by
    `registered_model_name`); the version number."""
    from mlflow.exceptions import MlflowException

    name = registered_model_name(name)
    run_dir = _run_dir_of(run)
    find_checkpoint(run_dir / BEST_CHECKPOINT)  # a clear error when the run has no best checkpoint
    client, run_id = tracked_run_id(run_dir, tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if "already exists" not in str(error).lower() and "RESOURCE_ALREADY_EXISTS" not in str(error):
            raise TrackingError(f"cannot create registered model {name!r}: {error}") from error
    source = f"{client.get_run(run_id).info.artifact_uri}/checkpoint/{BEST_CHECKPOINT}"
    version = client.create_model_version(name, source, run_id=run_id, description=f"plantlib run {run_dir.name}")
    return int(version.version)


def runs_table(
    tracking_uri: str | None = None,
    experiment: str | None = None,
    backbone: str | None = None,
    parent_run_id: str | None = None,
) -> pd.DataFrame:
    """Tracked runs, newest first: name, backbone, key config, epochs, accuracy with its 95% CI (test split, or
    pooled out-of-fold for a cross-validation), time."""
    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    client = client_for(uri)
    if experiment:
        found = client.get_experiment_by_name(experiment)
        experiments = [found] if found is not None else []
    else:
        experiments = client.search_experiments()
    names = {e.experiment_id: e.name for e in experiments}
    if not names:
        return pd.DataFrame(columns=["run", "experiment", "backbone", "status"])
    conditions = [f"tags.backbone = '{backbone}'"] if backbone else []
    conditions += [f"tags.mlflow.parentRunId = '{parent_run_id}'"] if parent_run_id else []
    query = " and ".join(conditions)
    runs = client.search_runs(list(names), query, order_by=["attributes.start_time DESC"], max_results=5000)
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


def _status(status: str, run_dir: str | None) -> str:
    """MLflow's status, except that a RUNNING run whose run directory here says its process is gone is KILLED
    (what `plantlib track` records for it)."""
    if status != "RUNNING" or not run_dir or not (Path(run_dir) / RUN_FILE).is_file():
        return status
    return _FINAL_STATUS["interrupted"] if run_status(Path(run_dir)) == "interrupted" else status


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
