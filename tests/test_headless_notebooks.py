"""Plain `papermill` + `jupyter nbconvert --to html` give the same static report `plantlib report` does.

No plantlib variable is set here: every figure must reach the HTML as an image, no output may be a widget (an
empty placeholder offline), and progress output must read as whole lines.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from plantlib.paths import notebooks_dir
from plantlib.progress import LineProgress, WholeLines
from tests.conftest import write_dataset

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
EMPTY_BAR = re.compile(r"\|\s*0/\d+ \[")  # tqdm's "| 0/9 [" before any work
PLANTLIB_VARIABLES = ("PLANTLIB_SUMMARY_FILE", "PLANTLIB_PROGRESS", "PLANTLIB_HEADLESS")


def tool(name: str) -> list[str]:
    return [str(Path(sys.executable).with_name(name))]


@pytest.fixture(scope="module")
def plain_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """01–03 run one after the other by plain papermill, each converted by plain nbconvert."""
    root = tmp_path_factory.mktemp("plain")
    (root / "data").mkdir()
    images = write_dataset(root / "images", {"ant": 10, "bee": 10})
    env = {k: v for k, v in os.environ.items() if k not in PLANTLIB_VARIABLES}
    env["PLANTLIB_ROOT"] = str(root)
    common = ["-p", "fast", "True"]
    extra = {
        "01_explore": ["-p", "data_dir", str(images), "-p", "image_size", "64"],
        "02_train": ["-p", "data_dir", str(images), "-p", "image_size", "64", "-p", "epochs", "1"],
        "03_evaluate": [],
    }
    for name, parameters in extra.items():
        output = root / f"{name}.ipynb"
        command = [*tool("papermill"), str(notebooks_dir() / f"{name}.ipynb"), str(output), *common, *parameters]
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=root, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        converted = subprocess.run(
            [*tool("jupyter"), "nbconvert", "--to", "html", str(output)], env=env, capture_output=True, text=True
        )
        assert converted.returncode == 0, converted.stderr[-3000:]
    return root


def outputs(notebook: Path) -> list[dict]:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return [out for cell in cells if cell["cell_type"] == "code" for out in cell["outputs"]]


@pytest.mark.parametrize("name", ["01_explore", "02_train", "03_evaluate"])
def test_every_figure_is_an_image_and_no_output_is_a_widget(plain_runs: Path, name: str) -> None:
    produced = outputs(plain_runs / f"{name}.ipynb")
    assert not [out for out in produced if WIDGET_VIEW in out.get("data", {})]
    figures = sum("image/png" in out.get("data", {}) for out in produced)
    assert figures >= {"01_explore": 5, "02_train": 1, "03_evaluate": 5}[name]
    page = (plain_runs / f"{name}.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == figures
    assert WIDGET_VIEW not in page and "jupyter-widgets" not in page.split("</style>")[-1]


def test_03_shows_the_static_gallery_and_says_where_the_widgets_are(plain_runs: Path) -> None:
    text = "".join("".join(out.get("text", "")) for out in outputs(plain_runs / "03_evaluate.ipynb"))
    assert "interactive widgets appear here as well" in text


@pytest.mark.parametrize("name", ["01_explore", "02_train", "03_evaluate"])
def test_printed_output_reads_as_whole_lines(plain_runs: Path, name: str) -> None:
    for out in outputs(plain_runs / f"{name}.ipynb"):
        if out["output_type"] == "stream":
            text = "".join(out["text"])
            assert "\r" not in text and "\x1b[" not in text
            assert not EMPTY_BAR.search(text), text


def test_line_progress_writes_one_line_per_refresh_and_no_empty_bar() -> None:
    stream = io.StringIO()
    with LineProgress(total=4, desc="epoch 1", mininterval=0, file=WholeLines(stream), leave=False) as bar:
        for _ in range(4):
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 4
    assert [re.search(r"(\d)/4", line).group(1) for line in lines] == ["1", "2", "3", "4"]
