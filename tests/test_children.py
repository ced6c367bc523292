"""Long-lived children end with the plantlib process that started them: the MLflow UI server, torchrun.

Each test signals the plantlib process alone (not its group), as a process manager or a notebook's stop button
does, then checks that nothing it started still runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from plantlib.children import owned_process_group
from tests.conftest import run_cli
from tests.helpers.process_tree import (
    HAS_PROC,
    descendants,
    group_members,
    kill_all,
    process_group,
    process_groups,
    survivors,
)

pytestmark = pytest.mark.skipif(not HAS_PROC, reason="reads the process tree from /proc (Linux)")

STOP_SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nothing accepts connections on 127.0.0.1:`port`, and a server could bind it."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds: closing connections aside
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_plantlib(*args: str, root: Path, output: Path) -> subprocess.Popen:
    """`python -m plantlib ARGS` in a session of its own (so the test can clean up after a failure), Ctrl-C reaching
    it as SIGINT as in a terminal, its output going to `output`."""
    with output.open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "plantlib", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PLANTLIB_ROOT": str(root)},
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def wait_until_serving(process: subprocess.Popen, port: int, output: Path, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"plantlib ui ended early:\n{output.read_text()}"
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return
        except requests.RequestException:
            time.sleep(0.5)
    raise AssertionError(f"the UI did not answer on port {port} in {timeout_s} s:\n{output.read_text()}")


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda signum: signum.name)
def test_stopping_plantlib_ui_ends_its_server_and_frees_the_port(signum: signal.Signals, tmp_path: Path) -> None:
    port, output = free_port(), tmp_path / "ui.log"
    ui = start_plantlib("ui", "--port", str(port), root=tmp_path, output=output)
    family: dict[int, str] = {}
    try:
        wait_until_serving(ui, port, output)
        family = descendants(ui.pid)  # mlflow server, uvicorn, the job runner and its huey consumers
        groups = set(process_groups(family).values())
        assert len(family) >= 2 and process_group(ui.pid) not in groups, "the server has a process group of its own"

        began = time.monotonic()
        second = run_cli("ui", "--port", str(port), root=tmp_path)
        assert second.returncode == 2 and time.monotonic() - began < 30, second.stdout + second.stderr
        assert second.stderr.strip() == (
            f"plantlib ui: error: port {port} on 127.0.0.1 is taken (another plantlib ui or program?); "
            "choose another with --port"
        )

        os.kill(ui.pid, signum)  # the plantlib process alone
        assert ui.wait(timeout=60) == 128 + signum, output.read_text()
        assert survivors(family) == [], output.read_text()
        assert all(group_members(group) == [] for group in groups)
        assert port_is_free(port)
        said = "interrupted" if signum == signal.SIGINT else f"stopped by {signum.name}"
        assert f"plantlib ui: {said}" in output.read_text()
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait()
        kill_all(family)


def test_a_ui_server_that_ends_before_it_serves_is_a_one_line_error(tmp_path: Path) -> None:
    store = tmp_path / "broken.db"
    store.write_text("not a database")
    port = free_port()
    result = run_cli("ui", "--port", str(port), "--tracking-uri", f"sqlite:///{store}", root=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("plantlib ui: error: the MLflow server ended (exit status ")
    assert last.endswith(f"before it served port {port}; its output is above")
    assert port_is_free(port)


FAKE_TORCHRUN = """
import os, signal, subprocess, sys, time
helper = subprocess.Popen(["sleep", "600"])  # stays in torchrun's group
worker = subprocess.Popen(["sleep", "600"], start_new_session=True)  # torchrun starts each worker in its own

def pass_on(signum, frame):  # as torchrun does: the signal goes to the workers, then torchrun ends
    os.killpg(worker.pid, signum)
    worker.wait()
    sys.exit(1)

for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(signum, pass_on)
print("ready", flush=True)
time.sleep(600)
"""
RELAY = """
import os, sys
from plantlib.training.launch import relay
sys.exit(relay([sys.executable, "-c", sys.argv[1]], dict(os.environ)))
"""


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda signum: signum.name)
def test_stopping_a_torchrun_launcher_ends_torchrun_and_its_workers(signum: signal.Signals, tmp_path: Path) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", RELAY, FAKE_TORCHRUN],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    family: dict[int, str] = {}
    try:
        assert launcher.stdout.readline() == "ready\n"
        family = descendants(launcher.pid)
        assert len(family) == 3 and process_group(launcher.pid) not in set(process_groups(family).values())
        os.kill(launcher.pid, signum)
        launcher.communicate(timeout=60)
        # Stopped exits with 128 + signum; an uncaught KeyboardInterrupt ends Python by SIGINT, as it should
        assert launcher.returncode == (-signum if signum == signal.SIGINT else 128 + signum)
        assert survivors(family) == []
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        kill_all(family)


IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
LEADER_AND_STRAY = f"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", {IGNORES_SIGTERM!r}], start_new_session=True)
print("ready", flush=True)
time.sleep(600)
"""


def test_what_ignores_sigterm_is_killed_after_the_grace_period_even_in_a_group_of_its_own() -> None:
    handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    command = [sys.executable, "-c", LEADER_AND_STRAY]
    family: dict[int, str] = {}
    try:
        with (
            pytest.raises(RuntimeError, match="leaving"),
            owned_process_group(command, grace_s=1.0, stdout=subprocess.PIPE) as child,
        ):
            assert child.stdout.readline() == b"ready\n"
            family = descendants(child.pid, itself=True)
            raise RuntimeError("leaving the block")
        assert len(family) == 2 and survivors(family) == []
        assert child.returncode == -signal.SIGKILL
        assert {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} == handlers  # restored
    finally:
        kill_all(family)
