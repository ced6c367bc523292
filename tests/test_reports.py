"""`plantlib report` end to end on small synthetic data, checked as a reader would: in a real browser."""

import json
import stat
from pathlib import Path

import pytest

from plantlib.errors import ConfigError, PlantlibError
from plantlib.io import current_umask
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
    assert "[2/5] 02_train" in terminal and "  02_train  cell 1/" in terminal
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
    assert "corrected t-test" in page and "p_holm" in page  # the pairs table under the rule
    assert index[4]["summary"].startswith("study report: 3 trials")


def test_reports_are_static_and_self_contained(fast_report: Path) -> None:
    for name in NOTEBOOKS:
        page = (fast_report / f"{name}.html").read_text()
        assert 'src="http' not in page and '<script src=""' not in page
        assert "application/vnd.jupyter.widget" not in page
        assert "Traceback" not in page
    assert (fast_report / "03_evaluate.html").read_text().count('src="data:image/png;base64') >= 5


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
