"""`plantlib report` invocations keep to themselves: concurrent reports, bad parameters, Ctrl-C, SIGTERM, dead
processes."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plantlib.errors import ConfigError
from plantlib.reporting import runner as reports
from plantlib.reporting.index import RECORD_FILE, REPORTS_FILE, read_invocations, write_index
from tests.conftest import write_dataset
from tests.helpers.process_tree import HAS_PROC, descendants, group_members, kill_all, process_groups, survivors


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("report-data") / "images", {"ant": 10, "bee": 10})


def start_report(root: Path, *args: str) -> subprocess.Popen:
    """`plantlib report ARGS` in project `root`, as a user starts it (Ctrl-C reaches it as SIGINT)."""
    return subprocess.Popen(
        [sys.executable, "-m", "plantlib", "report", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PLANTLIB_ROOT": str(root)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def evaluated_run(output: str) -> str:
    """The run 03_evaluate names at the end of its summary line: `… n=4 (<run>)`."""
    (line,) = [line for line in output.splitlines() if re.search(r"ok in \d+s: test accuracy .* n=\d+ \(", line)]
    return re.search(r"n=\d+ \(([^)]+)\)$", line.strip()).group(1)


def test_two_reports_started_together_each_evaluate_their_own_run(images: Path, tmp_path: Path) -> None:
    common = ["--fast", "-p", f"data_dir={images}", "-p", "image_size=64", "--only", "02_train", "03_evaluate"]
    started = {seed: start_report(tmp_path, *common, "-p", f"seed={seed}") for seed in (1, 2)}
    outputs = {seed: process.communicate(timeout=600)[0] for seed, process in started.items()}
    for seed, process in started.items():
        assert process.returncode == 0, outputs[seed]

    runs = tmp_path / "artifacts" / "runs"
    evaluated = {seed: evaluated_run(outputs[seed]) for seed in started}
    assert evaluated[1] != evaluated[2], outputs
    for seed, name in evaluated.items():  # each report evaluated the run it trained, with its own seed
        assert json.loads((runs / name / "config.json").read_text())["seed"] == seed

    records = {r["parameters"]["seed"]: r for r in read_invocations(tmp_path / "artifacts" / "reports")}
    assert set(records) == {1, 2} and {r["status"] for r in records.values()} == {"ok"}
    for seed, record in records.items():
        trained, evaluation = record["notebooks"]
        assert trained["values"]["run_dir"] == evaluation["values"]["run_dir"] == str(runs / evaluated[seed])
        assert Path(trained["html"]).parent == Path(record["folder"]) and Path(trained["html"]).is_file()


def test_report_parameters_are_checked_before_any_notebook_runs(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    monkeypatch.setattr(reports, "run_notebook", lambda name, *args, **kwargs: ran.append(name))
    bad = [
        ({"epochs": "abc"}, r"02_train: parameter epochs='abc' has type str; expected int"),
        ({"epochs": -3}, r"02_train: epochs=-3 is not allowed; use 1 or more"),
        ({"backbone": "nope"}, r"02_train: unknown backbone 'nope'; choose one of: .*resnet18"),
        ({"backbones": "resnet18,nope"}, r"04_compare_backbones: unknown backbone 'nope'"),
        ({"n_mistakes": "many"}, r"03_evaluate: parameter n_mistakes='many' has type str; expected int"),
        ({"02_train": {"learning_rate": 0}}, r"02_train: learning_rate=0(\.0)? is not allowed"),
    ]
    for parameters, message in bad:
        with pytest.raises(ConfigError, match=message):
            reports.run_reports({"data_dir": str(images), **parameters}, fast=True, out_dir=tmp_path / "reports")
    assert ran == [] and not (tmp_path / "reports").exists()

    result = subprocess.run(
        [sys.executable, "-m", "plantlib", "report", "--fast", "-p", f"data_dir={images}", "-p", "epochs=abc"],
        capture_output=True,
        text=True,
        env={**os.environ, "PLANTLIB_ROOT": str(tmp_path)},
    )
    assert result.returncode == 2 and "[1/5] 01_explore" not in result.stdout and "cell 1/" not in result.stdout
    assert result.stderr.strip() == (
        "plantlib report: error: 02_train: parameter epochs='abc' has type str; expected int "
        "(passes over the training set)"
    )
    assert not (tmp_path / "artifacts" / "reports").exists()


def wait_for(process: subprocess.Popen, lines: list[str], text: str, timeout_s: float = 300) -> None:
    """Read the process's output into `lines` until a line holds `text`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        assert line, "the report ended early:\n" + "".join(lines)
        lines.append(line)
        if text in line:
            return
    raise AssertionError(f"no line with {text!r} in {timeout_s} s")


def test_an_interrupted_report_leaves_the_published_one_whole_and_says_so(images: Path, tmp_path: Path) -> None:
    reports_root = tmp_path / "artifacts" / "reports"
    data = ["-p", f"data_dir={images}", "-p", "image_size=64"]
    first = start_report(tmp_path, "--fast", *data, "--only", "01_explore", "02_train")
    assert first.wait(timeout=600) == 0, first.stdout.read()
    published = {p.name: p.read_bytes() for p in reports_root.iterdir() if p.suffix in (".html", ".ipynb", ".json")}

    slow = ["-p", "samples_per_class=2", "-p", "epochs=300", "--only", "01_explore", "02_train"]
    second = start_report(tmp_path, *data, *slow)
    lines: list[str] = []
    wait_for(second, lines, "epoch 1/300")  # streamed: 01_explore is done and its pages written; 02_train trains
    second.send_signal(signal.SIGINT)
    rest, _ = second.communicate(timeout=120)
    assert second.returncode == 130, "".join(lines) + rest

    # The published report (the top-level pages and index.json) is still the first one, byte for byte.
    for name in ("01_explore.html", "01_explore.ipynb", "02_train.html", "02_train.ipynb", "index.json"):
        assert (reports_root / name).read_bytes() == published[name], name
    newest, previous = read_invocations(reports_root)
    assert newest["status"] == "interrupted" and previous["status"] == "ok"
    statuses = [(r["name"], r["status"]) for r in newest["notebooks"]]
    assert statuses == [("01_explore", "ok"), ("02_train", "interrupted")]
    assert json.loads((reports_root / REPORTS_FILE).read_text())["published"] == previous["id"]
    page = (reports_root / "index.html").read_text()
    assert f'<a href="{newest["id"]}/01_explore.html">' in page and '<tr class="interrupted">' in page
    assert f"<h2>Latest report: {previous['id']} (ok)</h2>" in page


def test_a_report_whose_process_died_is_listed_as_interrupted(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = tmp_path / "20260101-120000-abcdef"
    folder.mkdir()
    record = {
        "id": folder.name,
        "folder": str(folder),
        "status": "running",
        "started": "2026-01-01 12:00:00",
        "pid": int(dead.stdout),
        "host": socket.gethostname(),
        "parameters": {"seed": 3},
        "notebooks": [
            {"name": "01_explore", "status": "ok", "summary": "fine", "started": "", "seconds": 1.0},
            {"name": "02_train", "status": "running", "started": "", "seconds": 0.0},
            {"name": "03_evaluate", "status": "waiting", "started": "", "seconds": 0.0},
        ],
    }
    (folder / RECORD_FILE).write_text(json.dumps(record))
    (record_view,) = read_invocations(tmp_path)
    assert record_view["status"] == "interrupted"
    assert [r["status"] for r in record_view["notebooks"]] == ["ok", "interrupted", "not run"]
    page = write_index(tmp_path).read_text()
    assert "seed=3" in page and page.count('<tr class="interrupted">') == 1 and "No report has run to its end" in page


@pytest.mark.skipif(not HAS_PROC, reason="reads the process tree from /proc (Linux)")
def test_a_report_stopped_by_sigterm_ends_its_kernel_and_records_the_interruption(images: Path, tmp_path: Path) -> None:
    slow = ["-p", f"data_dir={images}", "-p", "image_size=64", "-p", "samples_per_class=2", "-p", "epochs=300"]
    report = start_report(tmp_path, *slow, "--only", "02_train")
    lines: list[str] = []
    family: dict[int, str] = {}
    try:
        wait_for(report, lines, "epoch 1/300")
        family = descendants(report.pid)
        # each kernel leads a process group of its own
        kernels = [pid for pid, group in process_groups(family).items() if group == pid]
        assert kernels, family
        report.send_signal(signal.SIGTERM)  # the report's process alone, as a process manager stops it
        rest, _ = report.communicate(timeout=120)
    finally:
        if report.poll() is None:
            report.kill()
            report.wait()
        kill_all(family)
    assert report.returncode == 143, "".join(lines) + rest
    assert rest.rstrip().endswith("plantlib report: stopped by SIGTERM")
    assert survivors(family) == [] and all(group_members(kernel) == [] for kernel in kernels)
    (record_file,) = (tmp_path / "artifacts" / "reports").glob(f"*/{RECORD_FILE}")
    record = json.loads(record_file.read_text())  # as written by the report, not inferred from its dead process
    assert record["status"] == "interrupted" and record["notebooks"][0]["status"] == "interrupted"


def test_a_stopped_report_drops_only_the_dead_kernel_task_traceback() -> None:
    """papermill's cell task fails with DeadKernelError once a stop ends its kernel; asyncio would print that
    traceback when the task is collected, after the one-line stop message. Other task errors still show."""
    import asyncio
    import gc
    import io
    import logging

    from nbclient.exceptions import DeadKernelError

    from plantlib.reporting import runner

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger("asyncio").addHandler(handler)
    try:
        runner.drop_dead_kernel_task_logs()

        async def fails(error: Exception) -> None:
            raise error

        loop = asyncio.new_event_loop()
        tasks = [loop.create_task(fails(DeadKernelError("Kernel died"))), loop.create_task(fails(ValueError("x")))]
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()
        del tasks
        gc.collect()
    finally:
        logging.getLogger("asyncio").removeHandler(handler)
    assert "Task exception was never retrieved" in stream.getvalue() and "ValueError" in stream.getvalue()
    assert "DeadKernelError" not in stream.getvalue()
