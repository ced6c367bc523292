"""The command line, end to end through subprocesses, as a user runs it."""

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import pattern_image, run_cli, write_dataset


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    data = write_dataset(root / "data", {"ant": 12, "bee": 12})
    result = run_cli(
        "train",
        "--data-dir",
        str(data),
        "--output-dir",
        str(root / "runs"),
        "--epochs",
        "1",
        "--image-size",
        "64",
        "--batch-size",
        "8",
        "--seed",
        "3",
    )
    assert result.returncode == 0, result.stderr
    assert "test split: accuracy" in result.stdout
    (run,) = (root / "runs").iterdir()
    return run


def test_evaluate_on_an_external_folder_prints_and_saves_metrics(trained_run: Path, tmp_path: Path) -> None:
    external = write_dataset(tmp_path / "external", {"ant": 3, "bee": 3}, seed=5)
    result = run_cli("evaluate", str(trained_run / "best.pt"), "--data-dir", str(external))
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout and "95% CI" in result.stdout
    saved = trained_run / "evaluations" / "external" / "metrics.json"
    assert saved.is_file() and '"n": 6' in saved.read_text()


def test_evaluate_a_split_of_the_run(trained_run: Path) -> None:
    result = run_cli("evaluate", str(trained_run), "--split", "val")
    assert result.returncode == 0, result.stderr
    split = pd.read_csv(json.loads((trained_run / "run.json").read_text())["split_file"])
    val = split[split["split"] == "val"]
    saved = json.loads((trained_run / "val_metrics.json").read_text())
    assert saved["n"] == len(val) == 4  # 15% of 12 images per class, rounded: 2 per class
    predictions = pd.read_csv(trained_run / "val_predictions.csv")
    assert sorted(predictions["path"]) == sorted(val["path"])  # the val images, each once
    correct = (predictions["predicted"] == predictions["path"].str.split("/").str[0]).mean()
    assert saved["accuracy"] == pytest.approx(correct)
    headline = result.stdout.splitlines()[1]
    assert result.stdout.startswith(f"{trained_run / 'best.pt'} on val split:")
    assert headline.startswith(f"accuracy {saved['accuracy']:.3f} (95% CI ") and headline.endswith(f"n={len(val)}")
    assert f"log loss {saved['log_loss']:.3f}" in headline
    assert f"metrics: {trained_run / 'val_metrics.json'}" in result.stdout


def test_predict_writes_one_row_per_readable_image(trained_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "new"
    folder.mkdir()
    for i in range(3):
        pattern_image(500 + i).save(folder / f"img {i} é.jpg")
    (folder / "broken.jpg").write_bytes(b"nope")
    out = tmp_path / "preds.csv"
    result = run_cli("predict", str(trained_run / "best.pt"), str(folder), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "skipped 1 of 4 files" in result.stderr
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["path", "predicted", "p_ant", "p_bee"] and len(frame) == 3
    assert ((frame["p_ant"] + frame["p_bee"]) - 1).abs().max() < 1e-6


def test_train_prints_where_the_run_is_tracked_and_registers_it(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", {"ant": 10, "bee": 10})
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli(
        "train", "--data-dir", str(data), "--output-dir", str(tmp_path / "runs"), "--backbone", "resnet18",
        "--no-pretrained", "--epochs", "1", "--image-size", "48", "--batch-size", "8", "--num-workers", "0",
        "--tracking", "on", "--tracking-uri", store, "--register", " ant-bee ",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    lines = result.stdout.splitlines()
    summary = lines[lines.index(next(line for line in lines if line.startswith("run directory: "))) :]
    assert summary[0].startswith(f"run directory: {run}  (best epoch 1, ")
    assert summary[1].startswith("test split: accuracy")
    run_id = json.loads((run / "tracking.json").read_text())["run_id"]
    assert f"MLflow run {run_id} (tracked) in {store}" in summary
    assert summary[-1] == f"registered {run} as ant-bee version 1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--backbone", "resnet19"], "unknown backbone 'resnet19'; choose one of:"),
        (["train", "--epochs", "-1"], "epochs=-1 is not allowed"),
        (["train", "--batch-size", "0"], "batch_size=0 is not allowed"),
        (["train", "--data-dir", "/no/such/folder"], "does not exist"),
        (["train", "--resume", "/no/such/run"], "not a run directory"),
        (["evaluate", "/no/such/best.pt"], "does not exist"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("command", "text", "holds"),
    [
        ("train", "[1, 2]", "a JSON list"),
        ("scan", "null", "JSON null"),
        ("cv", "5", "a JSON number"),
        ("tune", '"abc"', "a JSON string"),
        ("compare-backbones", '["epochs"]', "a JSON list"),
        ("lr-find", '{"epochs": 3, "data_dir": "/no/such/folder"}', None),
    ],
)
def test_a_config_file_that_is_not_an_object_is_one_line_and_exit_2(
    tmp_path: Path, command: str, text: str, holds: str | None
) -> None:
    file = tmp_path / "c.json"
    file.write_text(text, encoding="utf-8")
    result = run_cli(command, "--config", str(file))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    if holds is None:  # an object is read; what fails is its data_dir
        assert "/no/such/folder" in result.stderr and "config file" not in result.stderr
    else:
        assert f"error: {file} holds {holds}; a config file must hold one object mapping field names" in result.stderr


def test_evaluate_refuses_a_folder_with_unknown_classes(trained_run: Path, tmp_path: Path) -> None:
    other = write_dataset(tmp_path / "other", {"ant": 2, "wasp": 2})
    result = run_cli("evaluate", str(trained_run / "best.pt"), "--data-dir", str(other))
    assert result.returncode == 2 and "classes ['wasp'] that the checkpoint does not know" in result.stderr


@pytest.mark.parametrize("command", ["train", "cv", "tune", "compare-backbones"])
def test_no_tracking_turns_tracking_off_for_every_command_that_trains(command: str) -> None:
    from plantlib.cli import _config_from_args, build_parser

    args = build_parser().parse_args([command, "--no-tracking"])
    assert _config_from_args(args).tracking == "off"
    assert _config_from_args(build_parser().parse_args([command])).tracking == "auto"


def test_report_no_tracking_turns_tracking_off_in_the_notebooks_kernels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import plantlib.reporting.runner
    from plantlib.cli import build_parser
    from plantlib.experiments.tracking import TRACKING_ENV

    seen = []
    monkeypatch.setenv(TRACKING_ENV, "on")
    monkeypatch.setattr(
        plantlib.reporting.runner, "run_reports", lambda *a, **k: seen.append(os.environ[TRACKING_ENV]) or []
    )
    args = build_parser().parse_args(["report", "--no-tracking", "--out-dir", str(tmp_path)])
    assert args.run(args) == 0 and seen == ["off"]
