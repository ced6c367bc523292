"""The model registry on S3-compatible storage: moto's standalone S3 server and a real `mlflow server` in front of
it (`--artifacts-destination s3://BUCKET/...`), both started here on 127.0.0.1 and stopped by PID.

moto stands in for MinIO, Ceph or AWS S3 (MinIO is not pip-installable); the AWS variables are dummies and the
endpoint is loopback, so nothing reaches AWS.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from plantlib.cli import main
from plantlib.errors import PlantlibError
from plantlib.experiments.registry import (
    ResolvedModel,
    registered_models_table,
    require_run_data,
    resolve_model_source,
    storage_location,
)
from plantlib.experiments.store import register_run
from plantlib.inference.ensemble import load_predictor
from plantlib.inference.predictor import predict_files
from plantlib.io import write_json
from plantlib.runs import list_runs
from tests.conftest import pattern_image, write_dataset

BUCKET = "plantlib-models"
DESTINATION = f"s3://{BUCKET}/mlartifacts"  # the server's --artifacts-destination
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
TINY_FLAGS = ["--backbone", "resnet18", "--no-pretrained", "--image-size", "48", "--batch-size", "8"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Service:
    """A server subprocess in its own process group, its output in a log file; stopped by PID."""

    def __init__(self, command: list[str], ready_url: str, log: Path, env: dict[str, str]) -> None:
        self.command, self.ready_url, self.log = command, ready_url, log
        with open(log, "ab") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=output, env=env, start_new_session=True)

    def wait_until_ready(self, timeout_s: float = 240) -> Service:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.command[2:4]} exited: {self.log.read_text()[-3000:]}")
            try:
                if requests.get(self.ready_url, timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.command[2:4]} did not become ready: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server and its workers, by process group
            self.process.wait(timeout=30)


@dataclass(frozen=True)
class Registry:
    uri: str  # the tracking server
    endpoint: str  # the S3 endpoint
    client_env: dict[str, str]  # what a plantlib command gets: the usual S3 variables

    def bucket_keys(self) -> list[str]:
        return [item["Key"] for item in self.s3().list_objects_v2(Bucket=BUCKET).get("Contents", [])]

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", **_keys())


def _keys() -> dict[str, str]:
    return {
        "aws_access_key_id": DUMMY_AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": DUMMY_AWS["AWS_SECRET_ACCESS_KEY"],
    }


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """moto's S3 server with an empty bucket, and `mlflow server` keeping its artifacts there."""
    folder = tmp_path_factory.mktemp("registry")
    s3_port, mlflow_port = free_port(), free_port()
    endpoint, uri = f"http://127.0.0.1:{s3_port}", f"http://127.0.0.1:{mlflow_port}"
    env = {**os.environ, **DUMMY_AWS, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_S3_ENDPOINT_URL": endpoint}
    moto = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)]
    mlflow = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port)]
    mlflow += ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--workers", "1"]
    mlflow += ["--artifacts-destination", DESTINATION]
    servers = [  # started together: the MLflow server needs the bucket only when files arrive
        Service(moto, f"{endpoint}/moto-api/", folder / "moto.log", env),
        Service(mlflow, f"{uri}/health", folder / "mlflow.log", env),
    ]
    try:
        servers[0].wait_until_ready()
        registry = Registry(uri, endpoint, {**DUMMY_AWS, "MLFLOW_S3_ENDPOINT_URL": endpoint})
        registry.s3().create_bucket(Bucket=BUCKET)
        servers[1].wait_until_ready()
        yield registry
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def trained(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny run trained, tracked on the S3-backed server and registered as tiny v1 (alias champion) by one
    `plantlib train`; (run directory, its output)."""
    folder = tmp_path_factory.mktemp("trained")
    data = write_dataset(folder / "data", {"ant": 12, "bee": 12})
    output = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(output):
        for name, value in {**registry.client_env, "PLANTLIB_PROGRESS": "off"}.items():
            patch.setenv(name, value)
        patch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main sets its own for the process
        code = main([
            "train", *TINY_FLAGS, "--data-dir", str(data), "--output-dir", str(folder / "runs"), "--epochs", "2",
            "--num-workers", "0", "--tracking", "on", "--tracking-uri", registry.uri,
            "--register", "tiny", "--alias", "champion",
        ])  # fmt: skip
    assert code == 0, output.getvalue()[-3000:]
    [run] = list_runs(folder / "runs")
    return run, output.getvalue()


@pytest.fixture
def plantlib(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> Callable[..., tuple[int, str, str]]:
    """`plantlib ARGS` as a user with the usual S3 variables runs it: (exit status, stdout, stderr). In this
    process: a new one spends many seconds importing torch and MLflow on a loaded machine."""
    for name, value in registry.client_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main sets its own for the process

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        pattern_image(900 + i).save(folder / f"new {i}.jpg")
    return folder


def test_train_register_puts_the_checkpoint_in_the_bucket_and_models_shows_where(
    registry: Registry, trained: tuple[Path, str], plantlib: Callable[..., tuple[int, str, str]]
) -> None:
    run, output = trained
    assert f"registered {run} as tiny version 1 (champion)" in output
    keys = registry.bucket_keys()
    assert any(key.endswith("/artifacts/checkpoint/best.pt") for key in keys), keys
    assert any(key.endswith("/artifacts/config.json") for key in keys), keys

    [row] = registered_models_table(registry.uri, DESTINATION).query("name == 'tiny'").to_dict("records")
    assert (row["name"], row["version"], row["aliases"]) == ("tiny", 1, "champion")
    assert row["source"].startswith("mlflow-artifacts:/") and row["source"].endswith("/checkpoint/best.pt")
    assert row["storage"].startswith(f"{DESTINATION}/")
    stored = registry.s3().get_object(Bucket=BUCKET, Key=row["storage"].removeprefix(f"s3://{BUCKET}/"))
    assert stored["Body"].read() == (run / "best.pt").read_bytes()  # the listing names the bucket's own file

    code, listed, _ = plantlib("models", "--tracking-uri", registry.uri, "--artifacts-destination", DESTINATION)
    assert code == 0 and "champion" in listed and row["storage"] in listed and row["run_id"] in listed
    code, bare, _ = plantlib("models", "--tracking-uri", registry.uri)
    assert code == 0 and row["source"] in bare and "pass the same --artifacts-destination" in bare


def test_register_adds_versions_and_moves_aliases(
    registry: Registry, trained: tuple[Path, str], plantlib: Callable[..., tuple[int, str, str]]
) -> None:
    run, _ = trained
    code, out, err = plantlib(
        "register", str(run), "--name", "ant-bee", "--alias", "champion", "--alias", "candidate",
        "--tracking-uri", registry.uri,
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == f"registered {run} as ant-bee version 1 (champion, candidate)"
    assert register_run(run, "ant-bee", registry.uri, ["candidate"]) == 2
    table = registered_models_table(registry.uri).query("name == 'ant-bee'")
    assert dict(zip(table["version"], table["aliases"], strict=True)) == {2: "candidate", 1: "champion"}
    code, _, err = plantlib("register", str(run), "--name", "ant-bee", "--alias", "v3", "--tracking-uri", registry.uri)
    assert code == 2 and err.count("\n") == 1 and "reserved by MLflow" in err


def predictions(frame: pd.DataFrame) -> np.ndarray:
    return frame[[column for column in frame.columns if column.startswith("p_")]].to_numpy()


def test_predict_from_the_registry_equals_predict_from_the_run(
    registry: Registry,
    trained: tuple[Path, str],
    images: Path,
    tmp_path: Path,
    isolated_project: Path,
    plantlib: Callable[..., tuple[int, str, str]],
) -> None:
    run, _ = trained
    code, _, err = plantlib("predict", str(run), str(images), "--out", str(tmp_path / "run.csv"))
    assert code == 0, err
    code, _, err = plantlib(
        "predict", "models:/tiny@champion", str(images), "--tracking-uri", registry.uri,
        "--out", str(tmp_path / "registry.csv"),
    )  # fmt: skip
    assert code == 0, err
    expected, got = pd.read_csv(tmp_path / "run.csv"), pd.read_csv(tmp_path / "registry.csv")
    assert list(got["path"]) == list(expected["path"]) and len(got) == 5
    np.testing.assert_allclose(predictions(got), predictions(expected), atol=1e-5, rtol=0)

    copy = isolated_project / "artifacts" / "registry" / "tiny" / "v1"
    assert (copy / "best.pt").read_bytes() == (run / "best.pt").read_bytes()
    stamp = (copy / "registry.json").stat().st_mtime_ns
    by_version = resolve_model_source("models:/tiny/1", registry.uri)
    assert by_version.path == copy / "best.pt" and (by_version.name, by_version.version) == ("tiny", "1")
    assert (copy / "registry.json").stat().st_mtime_ns == stamp  # a version never changes: reused, not fetched
    assert resolve_model_source("models:/tiny/latest", registry.uri).path == by_version.path

    code, out, err = plantlib("evaluate", "models:/tiny/1", "--tracking-uri", registry.uri)  # its run's test split
    assert code == 0, err
    assert f"{copy / 'best.pt'} on test split" in out and "accuracy" in out


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("models:/tiny@nope", "model 'tiny' has no alias 'nope' (aliases: champion); set it with plantlib register"),
        ("models:/tiny/9", "model 'tiny' has no version 9 (versions: 1)"),
        ("models:/ghost/1", "no registered model 'ghost' in http://127.0.0.1:"),
        ("models:/tiny", "'models:/tiny' is not a registry URI; write models:/NAME/VERSION, models:/NAME@ALIAS"),
    ],
)
def test_unknown_models_versions_and_aliases_are_one_line_errors(
    registry: Registry, trained: tuple[Path, str], uri: str, message: str
) -> None:
    with pytest.raises(PlantlibError) as raised:
        resolve_model_source(uri, registry.uri)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_the_cli_says_in_one_line_what_is_wrong(
    registry: Registry, trained: tuple[Path, str], images: Path, plantlib: Callable[..., tuple[int, str, str]]
) -> None:
    code, _, err = plantlib("predict", "models:/tiny@nope", str(images), "--tracking-uri", registry.uri)
    assert code == 2 and err.count("\n") == 1 and "has no alias 'nope'" in err
    gone = f"http://127.0.0.1:{free_port()}"
    code, _, err = plantlib("predict", "models:/tiny@champion", str(images), "--tracking-uri", gone)
    assert code == 2 and err.count("\n") == 1
    assert f"tracking server {gone} is not reachable" in err and "--tracking-uri" in err
    code, _, err = plantlib("train", "--alias", "champion")
    assert code == 2 and err.count("\n") == 1 and "add --register NAME" in err


def test_a_registry_model_without_its_data_here_points_at_data_dir(tmp_path: Path) -> None:
    folder = tmp_path / "v1"
    write_json(folder / "run.json", {"data_dir": "/elsewhere/data", "split_file": "/elsewhere/split.csv"})
    model = ResolvedModel(path=folder, name="tiny", version="1", uri="models:/tiny/1")
    with pytest.raises(PlantlibError, match=r"^models:/tiny/1 was trained on /elsewhere/data .* with --data-dir"):
        require_run_data(model)
    require_run_data(ResolvedModel(path=folder, name="v1", version=None, uri=str(folder)))  # a local run: its own


def test_storage_location_maps_proxied_files_into_the_destination() -> None:
    proxied = "mlflow-artifacts:/1/abc/artifacts/checkpoint/best.pt"
    assert storage_location(proxied, "s3://b/root/") == "s3://b/root/1/abc/artifacts/checkpoint/best.pt"
    assert storage_location("mlflow-artifacts://host:5000/1/x", "s3://b") == "s3://b/1/x"
    assert storage_location(proxied) == proxied
    assert storage_location("s3://b/direct/1/x", "s3://other") == "s3://b/direct/1/x"


def test_plantlib_serve_answers_for_an_alias_as_predict_does(
    registry: Registry, trained: tuple[Path, str], images: Path, tmp_path: Path, isolated_project: Path
) -> None:
    """The round trip's last step: `plantlib serve models:/tiny@champion` (its own process, as deployed) answers
    what `plantlib predict RUN` prints, to 1e-5."""
    run, _ = trained
    files = sorted(images.iterdir())
    expected = predict_files(load_predictor([run]), files)
    port, log = free_port(), tmp_path / "serve.log"
    command = [sys.executable, "-m", "plantlib", "serve", "models:/tiny@champion", "--port", str(port)]
    command += ["--tracking-uri", registry.uri]
    env = {**os.environ, **registry.client_env}
    server = Service(command, f"http://127.0.0.1:{port}/health", log, env)
    try:
        server.wait_until_ready()
        answer = requests.post(
            f"http://127.0.0.1:{port}/predict",
            files=[("files", (file.name, file.read_bytes(), "image/jpeg")) for file in files],
            timeout=120,
        )
    finally:
        server.stop()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == {"name": "tiny", "version": "1"}
    classes = [column.removeprefix("p_") for column in expected.columns if column.startswith("p_")]
    served = np.array([[entry["probabilities"][name] for name in classes] for entry in body["predictions"]])
    np.testing.assert_allclose(served, predictions(expected), atol=1e-5, rtol=0)


def test_an_export_of_a_registry_model_is_logged_to_the_versions_run(
    registry: Registry, trained: tuple[Path, str], isolated_project: Path, plantlib: Callable[..., tuple[int, str, str]]
) -> None:
    run, _ = trained
    code, out, err = plantlib("export", "models:/tiny@champion", "--tracking-uri", registry.uri)
    assert code == 0, err
    run_id = json.loads((run / "tracking.json").read_text())["run_id"]
    assert f"logged to MLflow run {run_id}" in out  # the version's own run, not a new one for the download
    assert any(key.endswith(f"{run_id}/artifacts/export/MODEL_CARD.md") for key in registry.bucket_keys())
    assert (isolated_project / "artifacts" / "registry" / "tiny" / "v1" / "export" / "MODEL_CARD.md").is_file()
