"""What `make setup` installs besides packages: nbstripout as a git filter (whatever JupyterLab saves, `git add`
stages notebooks without outputs or execution counts, with their cell ids; the working copy keeps its outputs),
and JupyterLab defaults for this environment (no news pop-up, no update check)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from plantlib.frontend import install_lab_settings

ROOT = Path(__file__).resolve().parents[1]

needs_git_and_make = pytest.mark.skipif(not (shutil.which("git") and shutil.which("make")), reason="needs git, make")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def install_filter(repo: Path) -> str:
    """The Makefile's `git-filter` target, run in `repo` with this test's Python environment."""
    done = subprocess.run(
        ["make", "-s", "-f", str(ROOT / "Makefile"), "git-filter", f"VENV={sys.prefix}"],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def saved_by_lab(path: Path) -> None:
    """A notebook as JupyterLab saves it after a run: outputs, execution counts, ids."""
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print('hello')", id="greeting")
    cell.execution_count = 3
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    notebook.cells = [nbformat.v4.new_markdown_cell("# Title", id="title"), cell]
    nbformat.write(notebook, path)


@needs_git_and_make
def test_git_add_strips_outputs_and_keeps_cell_ids(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    assert "git filter installed" in install_filter(repo)
    assert install_filter(repo) == ""  # installed once; setup runs it every time
    assert "*.ipynb filter=nbstripout" in (repo / ".gitattributes").read_text()
    saved_by_lab(repo / "run.ipynb")
    git(repo, "add", "run.ipynb", ".gitattributes")
    staged = json.loads(git(repo, "show", ":run.ipynb"))
    code = staged["cells"][1]
    assert code["outputs"] == [] and code["execution_count"] is None
    assert [cell["id"] for cell in staged["cells"]] == ["title", "greeting"]
    assert nbformat.read(repo / "run.ipynb", as_version=4).cells[1].outputs  # the working copy keeps them
    assert git(repo, "status", "--porcelain", "run.ipynb").startswith("A ")


def test_the_checkout_declares_the_filter_and_its_notebooks_pass_it_unchanged() -> None:
    """The committed notebooks are already what the filter writes, so installing it dirties nothing."""
    assert "*.ipynb filter=nbstripout" in (ROOT / ".gitattributes").read_text()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        text = path.read_text(encoding="utf-8")
        stripped = subprocess.run(
            [sys.executable, "-m", "nbstripout", "--keep-id"], input=text, capture_output=True, text=True, check=True
        ).stdout
        assert stripped == text, f"{path.name} changes under nbstripout: commit it through the filter (make setup)"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_jupyterlab_starts_without_the_news_pop_up(tmp_path: Path) -> None:
    """The settings `plantlib kernel` writes for this environment are what a running JupyterLab serves."""
    settings_file = install_lab_settings(prefix=tmp_path / "env")
    install_lab_settings(prefix=tmp_path / "env")  # idempotent, other keys kept
    port, token = free_port(), "plantlib-test"
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "user"), "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--allow-root",
            f"--IdentityProvider.token={token}",
            f"--LabApp.app_settings_dir={settings_file.parent}",
            f"--ServerApp.root_dir={tmp_path}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/lab/api/settings/@jupyterlab/apputils-extension:notification?token={token}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    served = json.loads(response.read())
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "JupyterLab did not start"
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)
    defaults = served["schema"]["properties"]  # overrides.json changes the defaults; user settings still win
    assert defaults["fetchNews"]["default"] == "false" and defaults["checkForUpdates"]["default"] is False
