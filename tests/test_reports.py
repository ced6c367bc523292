"""`plantlib report` end to end on small synthetic data, checked as a reader would: in a real browser."""

import json
import re
import stat
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plantlib.errors import ConfigError, PlantlibError
from plantlib.io import current_umask
from plantlib.reporting import notebook as nb
from plantlib.reporting.runner import NOTEBOOKS, plan_parameters
from tests.conftest import CHROMIUM, guarded_environment, requires_chromium, run_cli, write_dataset

TERMINAL = "terminal.txt"


@pytest.fixture(scope="module")
def fast_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`plantlib report --fast` with no network (any attempt is logged) and an empty HOME; papermill's -p forms."""
    root = tmp_path_factory.mktemp("report")
    data = write_dataset(root / "images", {"ant": 10, "bee": 10})
    guard = root / "guard"
    result = run_cli(
        "report",
        "--fast",
        "-p",
        f"data_dir={data}",  # NAME=VALUE
        "-p",
        "image_size",  # papermill's NAME VALUE
        "64",
        "-y",
        "backbones: efficientnet_lite0,efficientnet_lite1",  # two, so pairwise verdicts and the winner logic run
        root=root,
        env={**guarded_environment(guard), "PLANTLIB_TRACKING": "on"},  # runs go to the project's own store
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (guard / TERMINAL).write_text(result.stdout)
    return root / "artifacts" / "reports"


def test_a_report_connects_nowhere_and_writes_nothing_in_home(fast_report: Path) -> None:
    guard = fast_report.parents[1] / "guard"
    assert not (guard / "network.log").exists(), (guard / "network.log").read_text()
    assert list((guard / "home").iterdir()) == []


def test_report_files_are_readable_as_the_umask_says(fast_report: Path) -> None:
    expected = 0o666 & ~current_umask()
    files = [p for p in fast_report.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert {p.suffix for p in files} >= {".html", ".json", ".ipynb"}
    assert {
        p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files if stat.S_IMODE(p.stat().st_mode) != expected
    } == {}


def test_the_terminal_shows_cells_printed_lines_and_a_summary_table(fast_report: Path) -> None:
    terminal = (fast_report.parents[1] / "guard" / TERMINAL).read_text()
    assert f"[2/{len(NOTEBOOKS)}] 02_train" in terminal and "  02_train  cell 1/" in terminal
    assert "      epoch 1/1  train loss" in terminal  # the training's epoch line, indented under its notebook
    [table_header] = [line for line in terminal.splitlines() if line.startswith("notebook ")]
    assert table_header.split() == ["notebook", "status", "seconds", "summary"]
    rows = terminal.split(table_header, 1)[1].splitlines()[1 : 1 + len(NOTEBOOKS)]
    assert [row.split()[:2] for row in rows] == [[name, "ok"] for name in NOTEBOOKS]


def test_report_writes_an_index_and_a_report_per_notebook(fast_report: Path) -> None:
    index = json.loads((fast_report / "index.json").read_text())
    assert [r["name"] for r in index] == list(NOTEBOOKS) and {r["status"] for r in index} == {"ok"}
    assert all(r["summary"] for r in index)
    assert "test accuracy" in index[1]["summary"] and index[2]["values"]["run_dir"] == index[1]["values"]["run_dir"]
    page = (fast_report / "index.html").read_text()
    for name in NOTEBOOKS:
        assert f'href="{name}.html"' in page and (fast_report / f"{name}.ipynb").is_file()
    comparison = index[3]["summary"]
    assert "2 backbones, 3-fold CV on the same folds" in comparison
    # the verdict sentence under the one rule: a winner, or which pairs differ, or none; always Holm over 1 pair
    assert "(Holm's correction over 1 pair)" in comparison
    best = index[3]["values"]["best"]
    assert best in (None, "efficientnet_lite0", "efficientnet_lite1")
    assert ("No pair differs" in comparison) == (best is None)
    page = (fast_report / "04_compare_backbones.html").read_text()
    assert "corrected t-test" in page and "<th>p holm</th>" in page  # the pairs table under the rule
    assert index[4]["summary"].startswith("study report: 3 trials")


def test_reports_are_static_and_self_contained(fast_report: Path) -> None:
    for name in NOTEBOOKS:
        page = (fast_report / f"{name}.html").read_text()
        assert 'src="http' not in page and '<script src=""' not in page
        assert "application/vnd.jupyter.widget" not in page
        assert "Traceback" not in page
    assert (fast_report / "03_evaluate.html").read_text().count('src="data:image/png;base64') >= 5


class _Cells(HTMLParser):
    """The text of every table cell (<td> and <th>) of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self._open: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("td", "th"):
            self._open = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._open is not None:
            self.cells.append("".join(self._open).strip())
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open.append(data)


def table_cells(page: str) -> list[str]:
    parser = _Cells()
    parser.feed(page)
    return parser.cells


def test_no_table_cell_on_any_page_reads_nan(fast_report: Path) -> None:
    for name in NOTEBOOKS:
        cells = table_cells((fast_report / f"{name}.html").read_text())
        assert cells, name
        assert [cell for cell in cells if cell.lower() in ("nan", "none", "nat", "<na>")] == [], name
    metrics = table_cells((fast_report / "03_evaluate.html").read_text())
    assert nb.MISSING in metrics  # macro precision/recall and ROC AUC have no interval: a dash, with the note
    assert "no 95% interval is computed for macro precision" in (fast_report / "03_evaluate.html").read_text()


def test_each_page_opens_with_its_answer(fast_report: Path) -> None:
    """The answer box comes before every other table and figure, and before the training logs of 02 and 04."""
    for name in NOTEBOOKS:
        page = (fast_report / f"{name}.html").read_text()
        body = page[page.index("<body") :]
        box = body.find(f'class="{nb.BOX_CLASS}"')
        assert box >= 0 and nb.PENDING not in body, f"{name}: no answer box, or it was never filled in"
        others = [m.start() for m in re.finditer(r"<table|<img", body) if not _inside_box(body, m.start())]
        assert others and box < min(others), name
    for name, log_line in (("02_train", "epoch 1/1"), ("04_compare_backbones", "held-out accuracy")):
        page = (fast_report / f"{name}.html").read_text()
        assert page.index(f'class="{nb.BOX_CLASS}"') < page.index(log_line), name


def _inside_box(body: str, at: int) -> bool:
    start = body.rfind(f'class="{nb.BOX_CLASS}"', 0, at)  # inside the box's own <div ...>
    return start >= 0 and 1 + body.count("<div", start, at) > body.count("</div>", start, at)


def test_04_shows_one_line_per_fold_and_keeps_each_full_log(fast_report: Path) -> None:
    page = (fast_report / "04_compare_backbones.html").read_text()
    assert page.count("held-out accuracy") == 2 * 3  # two backbones, three folds
    assert "epoch 1/1  train loss" not in page and "leading backbone blocks frozen" not in page
    logs = sorted((fast_report.parent / "cv").glob("*/repeat0-fold*/train.log"))
    assert len(logs) >= 6 and all("epoch 1/1  train loss" in log.read_text() for log in logs)
    assert "train s/fold (training epochs per fold, averaged) and ms/image" in page  # load-dependent, and said so
    assert "wall-clock time on this machine" in page


def test_05_says_what_a_short_study_can_and_cannot_say(fast_report: Path) -> None:
    page = (fast_report / "05_tune.html").read_text()
    assert "an optimistic estimate" in page and "for a single trial; as the best of 3 it is optimistic" in page
    assert "3 finished trials can show that the search runs" in page
    assert "Hyperparameter Importances" not in page  # 3 trials: no importances drawn
    assert "wall-clock time on this machine" in page


def test_numbers_keep_their_significant_figures_and_a_missing_one_is_a_dash() -> None:
    assert [nb.format_value(v) for v in (4.2e-06, 0.83333, 52.7, 110.5, 1.5, 0.0, 7, "text")] == [
        "4.2e-06",
        "0.833",
        "52.7",
        "110",
        "1.5",
        "0",
        "7",
        "text",
    ]
    assert [nb.format_value(v) for v in (None, np.nan, pd.NA, float("nan"))] == [nb.MISSING] * 4
    frame = pd.DataFrame({"weight_decay": [4.2e-06, np.nan], "state": ["complete", "pruned"]})
    html = nb.table(frame, caption="trials", notes=["a note"], missing="the trial was pruned").data
    assert table_cells(html) == ["weight decay", "state", "4.2e-06", "complete", nb.MISSING, "pruned"]
    assert f"{nb.MISSING}: the trial was pruned" in html and "a note" in html and "nan" not in html.lower()
    assert "the trial was pruned" not in nb.table(frame.dropna()).data  # no dash, no footnote


def test_the_summary_box_is_static_html_with_inline_styles_only() -> None:
    box = nb.summary_box(
        "Test accuracy 0.9 <b>", {"accuracy": "0.900 (95% CI 0.8–0.95)", "n": 60}, verdict="A beats B.", notes=["n=60"]
    ).data
    assert box.startswith(f'<div class="{nb.BOX_CLASS}" style="') and "<script" not in box and "<style" not in box
    assert "Test accuracy 0.9 &lt;b&gt;" in box and "A beats B." in box and "n=60" in box
    assert table_cells(box) == ["accuracy", "0.900 (95% CI 0.8–0.95)", "n", "60"]
    lines = nb.summary_box("t", ["one", "two"]).data
    assert "<li>one</li><li>two</li>" in lines
    frame = nb.summary_box("t", pd.DataFrame({"a": [1]}, index=pd.Index(["train"], name="split"))).data
    assert "train" in table_cells(frame)  # a meaningful index is shown


def render(page: Path) -> dict:
    """Open `page` in headless Chromium: console errors, failed requests and how many images rendered."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        tab = browser.new_page()
        tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: problems.append(str(e)))
        tab.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        tab.goto(page.as_uri(), wait_until="load")
        images = tab.evaluate(
            "Array.from(document.images).map(i => ({ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth}))"
        )
        browser.close()
    return {"problems": problems, "images": images}


@requires_chromium
@pytest.mark.parametrize("name", ["index", "03_evaluate"])
def test_reports_render_in_a_browser(fast_report: Path, name: str) -> None:
    result = render(fast_report / f"{name}.html")
    assert result["problems"] == []
    assert all(image["ok"] for image in result["images"])
    if name != "index":
        assert len(result["images"]) >= 5


def test_unknown_report_parameters_fail_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match="unknown parameter 'epoch': no notebook declares it"):
        plan_parameters({"epoch": 3})
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['bogus'\] for 02_train"):
        plan_parameters({"02_train": {"bogus": 1}})
    plan = plan_parameters({"seed": 1, "02_train": {"epochs": 2}}, fast=True)
    assert plan["02_train"] == {"seed": 1, "epochs": 2, "fast": True} and plan["01_explore"]["seed"] == 1


def test_a_failing_notebook_is_named_with_its_cell_and_still_exported(tmp_path: Path) -> None:
    result = run_cli(
        "report", "--only", "03_evaluate", "--no-input", "-p", f"run_dir={tmp_path / 'missing-run'}", root=tmp_path
    )
    assert result.returncode == 2
    assert "notebook 03_evaluate failed in cell" in result.stderr and "does not exist" in result.stderr
    page = tmp_path / "artifacts" / "reports" / "03_evaluate.html"
    assert page.is_file() and "does not exist" in page.read_text()
    assert 'class="highlight hl-ipython3"' not in page.read_text()  # --no-input: no code cell shown
    index = json.loads((tmp_path / "artifacts" / "reports" / "index.json").read_text())
    assert index[0]["status"] == "failed"


def test_the_reports_runs_are_tracked_with_the_comparison_as_a_group(fast_report: Path) -> None:
    from mlflow.tracking import MlflowClient

    index = json.loads((fast_report / "index.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{fast_report.parent / 'mlflow.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name == "plantlib"]
    runs = client.search_runs([experiment.experiment_id])
    by_name = {run.info.run_name: run for run in runs}
    trained = Path(index[1]["values"]["run_dir"]).name
    assert by_name[trained].info.status == "FINISHED"  # 02_train's run
    [comparison] = [run for run in runs if run.info.run_name.startswith("compare-")]
    cvs = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == comparison.info.run_id]
    assert sorted(run.data.tags["backbone"] for run in cvs) == ["efficientnet_lite0", "efficientnet_lite1"]
    [cv] = [run for run in cvs if run.data.tags["backbone"] == "efficientnet_lite0"]
    folds = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == cv.info.run_id]
    assert cv.data.params["backbone"] == cv.data.tags["backbone"] == "efficientnet_lite0"
    assert cv.data.params["folds"] == "3"
    assert [run.data.tags["backbone"] for run in folds] == ["efficientnet_lite0"] * 3
    assert cv.data.metrics["cv_n"] == sum(run.data.metrics["test_n"] for run in folds)  # pooled over the folds
    assert comparison.info.status == cv.info.status == "FINISHED"
    [study] = [run for run in runs if run.info.run_name == "study-report"]
    trials = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == study.info.run_id]
    assert len(trials) == 3 and {run.data.params["extra.trial"] for run in trials} == {"0", "1", "2"}
    assert "tracking: MLflow run" in (fast_report / "02_train.html").read_text()
    assert (
        f"Tracked as MLflow run <code>{comparison.info.run_id}</code>"
        in (fast_report / "04_compare_backbones.html").read_text()
    )


def test_report_accepts_papermills_parameter_forms_and_its_own(tmp_path: Path) -> None:
    from plantlib.cli import build_parser, report_parameters

    params_file = tmp_path / "params.yaml"
    params_file.write_text("seed: 7\n02_train: {epochs: 2}\n")
    forms = ["-f", str(params_file), "-y", "fast: true", "-p", "epochs", "3", "-p", "learning_rate=0.01"]
    args = build_parser().parse_args(["report", *forms, "-p", "data_dir", "None", "-r", "run_dir", "007"])
    assert report_parameters(args) == {
        "seed": 7,
        "02_train": {"epochs": 2},
        "fast": True,
        "epochs": 3,
        "learning_rate": 0.01,
        "data_dir": None,
        "run_dir": "007",
    }
    with pytest.raises(PlantlibError, match="write -p NAME VALUE"):
        report_parameters(build_parser().parse_args(["report", "-p", "epochs"]))
