"""Experiment tracking against real MLflow stores: a server started here on 127.0.0.1, and the embedded SQLite store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from plantlib.data import DecodedImageCache, eval_transform
from plantlib.data.dataset import resize_side
from plantlib.experiments.mlflow_store import PARENT_TAG, MlflowStore
from plantlib.experiments.tracking import (
    MlflowTracking,
    ParentRun,
    flatten_config,
    metric_values,
    tracking_callbacks,
)
from plantlib.inference.predictor import load_model
from plantlib.runs import list_runs, read_run_info
from plantlib.training.trainer import Trainer
from tests.conftest import run_cli, tiny_config, write_dataset

TINY = {"backbone": "resnet18", "pretrained": False, "image_size": 48}
TINY_FLAGS = ["--backbone", "resnet18", "--no-pretrained", "--image-size", "48", "--batch-size", "8"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with its SQLite database and artifacts in a temp folder; stopped by PID."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder, self.port = folder, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> MlflowServer:
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}", "--workers", "1"]
        command += ["--artifacts-destination", (self.folder / "artifacts").as_uri()]
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        log = open(self.folder / f"server-{self.port}.log", "ab")  # noqa: SIM115 - kept open for the server's life
        self.process = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.folder / f'server-{self.port}.log').read_text()}")
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return self
            except requests.RequestException:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not become ready")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server and its workers, by process group
            self.process.wait(timeout=30)
        self.process = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MlflowServer]:
    folder = tmp_path / "mlflow-server"
    folder.mkdir()
    running = MlflowServer(folder).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("tracking") / "d", {"ant": 12, "bee": 12})


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def only_run(uri: str):
    experiment = client(uri).get_experiment_by_name("plantlib")
    [run] = client(uri).search_runs([experiment.experiment_id])
    return run


def artifact_paths(uri: str, run_id: str, folder: str = "") -> set[str]:
    paths = set()
    for item in client(uri).list_artifacts(run_id, folder or None):
        paths |= artifact_paths(uri, run_id, item.path) if item.is_dir else {item.path}
    return paths


def test_a_tiny_run_is_recorded_on_a_server_and_resume_continues_the_same_run(
    server: MlflowServer, data_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(data_dir, tmp_path / "runs", **TINY, epochs=3, tracking="on", tracking_uri=server.uri)

    def interrupt_after_epoch_2(trainer: Trainer, record: dict) -> None:
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    first = Trainer.build(config, callbacks=[*tracking_callbacks(config), interrupt_after_epoch_2], show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    run = only_run(server.uri)
    assert run.info.status == "KILLED" and run.info.run_name == first.run_dir.name

    resumed = Trainer.resume(first.run_dir, callbacks=tracking_callbacks(config), show_progress=False)
    resumed.fit()
    run = only_run(server.uri)  # still one run: the resumed one
    info = read_run_info(first.run_dir)
    assert info["tracking"] == {"uri": server.uri, "run_id": run.info.run_id, "status": "tracked"}
    assert run.info.status == "FINISHED"
    assert run.data.params == flatten_config(config.to_dict())
    assert run.data.tags["backbone"] == "resnet18" and run.data.tags["world_size"] == "1"
    assert run.data.tags["dataset"] == "d" and run.data.tags["split"] == Path(info["split_file"]).stem
    history = json.loads((first.run_dir / "history.json").read_text())
    for key in ("val_loss", "train_accuracy", "lr"):
        points = client(server.uri).get_metric_history(run.info.run_id, key)
        assert sorted((p.step, p.value) for p in points) == [(row["epoch"], pytest.approx(row[key])) for row in history]
    metrics = json.loads((first.run_dir / "metrics.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.metrics["test_accuracy_ci_low"] == pytest.approx(metrics["ci95"]["accuracy"][0])
    assert run.data.metrics["test_ece"] == pytest.approx(metrics["ece"])
    assert {"config.json", "history.json", "metrics.json", "predictions.csv", "checkpoint/best.pt"} <= (
        artifact_paths(server.uri, run.info.run_id)
    )
    assert "figures/confusion_matrix.png" in artifact_paths(server.uri, run.info.run_id)


def test_a_killed_server_loses_nothing_and_track_brings_the_store_up_to_date(
    server: MlflowServer, data_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(data_dir, tmp_path / "runs", **TINY, epochs=3, tracking="on", tracking_uri=server.uri)

    def kill_server_after_epoch_1(trainer: Trainer, record: dict) -> None:
        if record["epoch"] == 1:
            time.sleep(3)  # let epoch 1's metrics reach the server first
            server.stop()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = Trainer.build(
            config, callbacks=[*tracking_callbacks(config), kill_server_after_epoch_1], show_progress=False
        ).fit()
    assert [row["epoch"] for row in result.history] == [1, 2, 3] and result.test_metrics is not None
    assert any("experiment tracking stopped" in str(w.message) for w in caught)
    tracking = read_run_info(result.run_dir)["tracking"]
    assert tracking["status"] == "incomplete" and tracking["how_to_sync"] == f"plantlib track {result.run_dir}"

    server.start()  # the same database and port
    run_id = tracking["run_id"]
    before = [p.step for p in client(server.uri).get_metric_history(run_id, "val_loss")]
    assert before == [1]
    for _ in range(2):  # idempotent: a second sync adds nothing
        done = run_cli("track", str(result.run_dir), "--tracking-uri", server.uri)
        assert done.returncode == 0, done.stderr
        assert f"MLflow run {run_id} is up to date" in done.stdout
        steps = sorted(p.step for p in client(server.uri).get_metric_history(run_id, "val_loss"))
        assert steps == [1, 2, 3]
    run = client(server.uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["test_n"] == result.test_metrics["n"]
    assert "checkpoint/best.pt" in artifact_paths(server.uri, run_id)


def test_an_unreachable_server_warns_once_and_training_goes_on(data_dir: Path, tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    done = run_cli(
        "train", *TINY_FLAGS, "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "runs"),
        "--epochs", "1", "--tracking", "on", "--tracking-uri", uri,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("warning: experiment tracking stopped") == 1
    assert f"tracking server {uri} is not reachable" in done.stderr
    [run] = list_runs(tmp_path / "runs")
    info = read_run_info(run)
    assert info["status"] == "finished" and info["tracking"]["status"] == "not tracked"


def test_two_torchrun_processes_make_one_tracked_run(server: MlflowServer, data_dir: Path, tmp_path: Path) -> None:
    done = run_cli(
        "train", "--nproc", "2", *TINY_FLAGS, "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "runs"),
        "--epochs", "2", "--num-workers", "0", "--tracking", "on", "--tracking-uri", server.uri,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = only_run(server.uri)
    [run_dir] = list_runs(tmp_path / "runs")
    assert run.info.run_name == run_dir.name and run.data.tags["world_size"] == "2"
    assert [p.step for p in client(server.uri).get_metric_history(run.info.run_id, "val_loss")] == [1, 2]


def test_by_default_runs_land_in_the_projects_sqlite_store(
    data_dir: Path, isolated_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PLANTLIB_TRACKING")
    done = run_cli("train", *TINY_FLAGS, "--data-dir", str(data_dir), "--epochs", "1")
    assert done.returncode == 0, done.stderr
    store = isolated_project / "artifacts" / "mlflow.db"
    assert store.is_file()
    [run_dir] = list_runs(isolated_project / "artifacts" / "runs")
    run = only_run(f"sqlite:///{store}")
    assert run.info.run_name == run_dir.name
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(isolated_project / "artifacts" / "mlruns")
    assert (Path(run.info.artifact_uri.removeprefix("file://")) / "checkpoint" / "best.pt").is_file()

    listed = run_cli("runs")
    assert listed.returncode == 0 and run_dir.name in listed.stdout and "resnet18" in listed.stdout
    registered = run_cli("register", str(run_dir), "--name", "ant-bee")
    assert registered.returncode == 0 and "version 1" in registered.stdout
    [version] = client(f"sqlite:///{store}").search_model_versions("name='ant-bee'")
    assert version.run_id == run.info.run_id


def test_without_mlflow_tracking_is_off_with_an_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from plantlib.experiments import tracking

    monkeypatch.setattr(tracking, "mlflow_available", lambda: False)
    config = tiny_config(tmp_path, tmp_path / "runs", tracking="auto")
    monkeypatch.setenv("PLANTLIB_TRACKING", "auto")
    with pytest.warns(UserWarning, match=r"tracking is off: MLflow is not installed \(pip install mlflow\)"):
        assert tracking_callbacks(config) == []
    assert tracking_callbacks(config.replace(tracking="off")) == []
    monkeypatch.setattr(tracking, "mlflow_available", lambda: True)
    [callback] = tracking_callbacks(config)
    assert isinstance(callback, MlflowTracking) and callback.uri.endswith("artifacts/mlflow.db")


def test_group_runs_nest_under_the_run_they_are_given_and_log_through_the_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tiny_config(tmp_path, tmp_path / "runs", tracking="on", tracking_uri=uri)
    (tmp_path / "note.txt").write_text("hello")
    pooled = {"n": 10, "accuracy": 0.9, "roc_auc": None, "ci95": {"accuracy": [0.5, 0.99], "ece": None}}
    with (
        ParentRun(config, "outer", {"folds": 3}) as outer,
        ParentRun(config, "inner", tags={"backbone": "resnet18"}, parent_run_id=outer.run_id) as inner,
    ):
        inner.log_metrics(metric_values(pooled, "cv"))
        inner.log_file(tmp_path / "note.txt")
    _, found = MlflowStore(uri, config.experiment).search_runs()
    runs = {run.info.run_name: run for run in found}
    assert runs["inner"].data.tags[PARENT_TAG] == outer.run_id and PARENT_TAG not in runs["outer"].data.tags
    assert runs["inner"].data.tags["kind"] == "group" and runs["outer"].data.params == {"folds": "3"}
    assert runs["inner"].data.metrics == {
        "cv_n": 10.0,
        "cv_accuracy": 0.9,
        "cv_accuracy_ci_low": 0.5,
        "cv_accuracy_ci_high": 0.99,
    }
    assert runs["inner"].info.status == runs["outer"].info.status == "FINISHED"
    assert artifact_paths(uri, inner.run_id) == {"note.txt"}


def test_the_parent_run_is_context_and_an_earlier_configs_tracking_parent_still_loads(tmp_path: Path) -> None:
    from plantlib.config import RunConfig
    from plantlib.errors import ConfigError

    (tmp_path / "config.json").write_text(json.dumps({"epochs": 2, "tracking_parent": "abc"}))
    assert RunConfig.from_json(tmp_path / "config.json") == RunConfig(epochs=2)
    with pytest.raises(ConfigError, match="unknown config field 'tracking_parent'"):
        RunConfig().replace(tracking_parent="abc")
    [callback] = tracking_callbacks(RunConfig(tracking="on"), parent_run_id="abc")
    assert isinstance(callback, MlflowTracking) and callback.parent_run_id == "abc"


def test_export_matches_predict_and_the_card_names_the_run_metrics(data_dir: Path, tmp_path: Path) -> None:
    import onnx
    import onnxruntime

    config = tiny_config(data_dir, tmp_path / "runs", **TINY, epochs=2)
    result = Trainer.build(config, show_progress=False).fit()
    done = run_cli("export", str(result.run_dir), "--no-tracking")
    assert done.returncode == 0, done.stderr
    model_file = result.run_dir / "export" / f"{result.run_dir.name}.onnx"
    metadata = {p.key: p.value for p in onnx.load(str(model_file)).metadata_props}
    assert json.loads(metadata["class_names"]) == ["ant", "bee"] and metadata["image_size"] == "48"

    files = sorted((data_dir / "ant").glob("*.jpg"))[:3] + sorted((data_dir / "bee").glob("*.jpg"))[:3]
    predicted = run_cli("predict", str(result.run_dir), *map(str, files), "--engine", "torch")
    assert predicted.returncode == 0, predicted.stderr
    expected = pd.read_csv(pd.io.common.StringIO(predicted.stdout))[["p_ant", "p_bee"]].to_numpy()
    crop = eval_transform(48, load_model(result.run_dir, engine="torch").normalization, normalize=False)
    cache = DecodedImageCache(max_side=resize_side(48))
    images = np.stack([crop(cache.get(f)).numpy() for f in files])
    assert images.dtype == np.uint8
    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    [probabilities] = session.run(None, {"images": images})
    assert probabilities == pytest.approx(expected, abs=1e-4)

    card = (result.run_dir / "export" / "MODEL_CARD.md").read_text()
    test = read_run_info(result.run_dir)["test"]
    low, high = test["ci95"]["accuracy"]
    assert f"Accuracy {test['accuracy']:.3f} (95% CI {low:.3f}–{high:.3f})" in card
    assert f"n = {test['n']}" in card and f"ECE {test['ece']:.3f}" in card
    assert "<h2>Test metrics" in (result.run_dir / "export" / "MODEL_CARD.html").read_text()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ant-bee\n", None),
        ("  ant bee  ", None),
        ("ant\nbee", "holds a line break, tab or other unprintable character"),
        ("ant\tbee", "holds a line break, tab or other unprintable character"),
        ("ant\x1b[31mbee", "holds a line break, tab or other unprintable character"),
        (" \n ", "--name must name the registered model"),
        ("ants/bees", "MLflow refuses '/' and ':'"),
    ],
)
def test_a_registered_model_name_is_trimmed_and_one_printable_line(name: str, message: str | None) -> None:
    from plantlib.errors import PlantlibError
    from plantlib.experiments.store import registered_model_name

    if message is None:
        assert registered_model_name(name) == name.strip()
        return
    with pytest.raises(PlantlibError, match=message) as caught:
        registered_model_name(name)
    assert "\n" not in str(caught.value)  # one line, the bad name shown escaped
