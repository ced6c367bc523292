"""Quiet on the network and tidy on disk: no connection nobody asked for, nothing in HOME, files others can read."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from plantlib.io import current_umask, write_json, write_text
from tests.conftest import guarded_environment, run_cli, write_dataset


def network_attempts(tmp: Path) -> list[str]:
    log = tmp / "network.log"
    return log.read_text().splitlines() if log.is_file() else []


def home_contents(tmp: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp / "home")) for p in (tmp / "home").rglob("*"))


def run_guarded_python(code: str, tmp: Path) -> None:
    """`python -c code` under the network guard with an empty HOME (variables given as None are unset)."""
    merged = {**os.environ, **guarded_environment(tmp)}
    env = {name: value for name, value in merged.items() if value is not None}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


def test_the_guard_catches_a_lookup_and_a_connection(tmp_path: Path) -> None:
    probe = (
        "import socket, urllib.request\n"
        "for attempt in (lambda: urllib.request.urlopen('http://example.org', timeout=2),\n"
        "                lambda: socket.create_connection(('192.0.2.1', 80), timeout=2)):\n"
        "    try: attempt()\n"
        "    except OSError: pass\n"
    )
    run_guarded_python(probe, tmp_path)
    attempts = network_attempts(tmp_path)
    assert any("name lookup 'example.org'" in line for line in attempts), attempts
    assert any("connect ('192.0.2.1', 80)" in line for line in attempts), attempts


def test_train_evaluate_and_predict_connect_nowhere_and_leave_home_empty(tmp_path: Path) -> None:
    images = write_dataset(tmp_path / "images", {"ant": 12, "bee": 12}, size=(72, 64))
    root = tmp_path / "project"
    env = {**guarded_environment(tmp_path), "PLANTLIB_TRACKING": "on"}  # the embedded MLflow store too
    train = run_cli(
        "train",
        "--data-dir", str(images), "--image-size", "64", "--batch-size", "8", "--epochs", "1",
        "--val-fraction", "0.25", "--test-fraction", "0.25",
        root=root, env=env,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert network_attempts(tmp_path) == [] and home_contents(tmp_path) == []
    [run_dir] = (root / "artifacts" / "runs").iterdir()
    evaluate = run_cli("evaluate", str(run_dir), "--engine", "openvino", root=root, env=env)
    assert evaluate.returncode == 0, evaluate.stderr
    assert network_attempts(tmp_path) == [] and home_contents(tmp_path) == [], "evaluate (OpenVINO)"
    predict = run_cli("predict", str(run_dir / "best.pt"), str(images / "ant"), root=root, env=env)
    assert predict.returncode == 0, predict.stderr
    assert predict.stdout.count(".jpg") == 12
    assert network_attempts(tmp_path) == [] and home_contents(tmp_path) == [], "predict"
    caches = root / "data" / ".cache" / "tools"
    assert (caches / "matplotlib").is_dir()  # what would have gone to ~/.cache/matplotlib


def test_openvino_is_imported_without_its_telemetry(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from plantlib.inference.engine import import_openvino\n"
        "openvino = import_openvino(); openvino.Core()\n"
        "assert sys.modules.get('openvino_telemetry') is None\n"
    )
    run_guarded_python(code, tmp_path)
    assert network_attempts(tmp_path) == [] and home_contents(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002, 0o077])
def test_atomic_writes_give_files_the_mode_the_umask_says(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        write_text(tmp_path / "page.html", "<p>report</p>")
        write_json(tmp_path / "summary.json", {"ok": True})
    finally:
        os.umask(previous)
    for name in ("page.html", "summary.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
