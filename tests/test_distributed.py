"""DistributedDataParallel under torchrun: 2 gloo processes on the CPU, tiny data, a tiny model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from plantlib.checkpoint import load_checkpoint
from plantlib.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    per_rank_batch_size,
    shard,
    unshard,
)
from plantlib.errors import ConfigError
from plantlib.inference.predictor import evaluate_split, load_model
from plantlib.runs import list_runs, read_run_info
from plantlib.training.launch import torchrun_command
from tests.conftest import run_cli, tiny_config, write_dataset

TINY = ["--backbone", "resnet18", "--no-pretrained", "--image-size", "48", "--batch-size", "8", "--num-workers", "0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ddp") / "d", {"ant": 14, "bee": 13})


def _train_flags(data_dir: Path, runs: Path, epochs: int) -> list[str]:
    return [
        *TINY,
        "--data-dir",
        str(data_dir),
        "--output-dir",
        str(runs),
        "--epochs",
        str(epochs),
        "--val-fraction",
        "0.25",
        "--test-fraction",
        "0.3",
        "--early-stopping-patience",
        "none",
    ]


def test_sharding_covers_every_item_once_and_unshards_in_order() -> None:
    items = list(range(11))
    parts = [list(shard(items, DistributedContext(rank=r, world_size=3, backend="gloo"))) for r in range(3)]  # type: ignore[arg-type]
    assert sorted(i for part in parts for i in part) == items and [len(p) for p in parts] == [4, 4, 3]
    assert shard(items, SINGLE_PROCESS) is items  # type: ignore[arg-type]
    local = np.arange(6.0).reshape(3, 2)
    assert unshard(local, 3, SINGLE_PROCESS) is local


def test_global_batch_must_divide_over_processes() -> None:
    assert per_rank_batch_size(32, DistributedContext(world_size=4)) == 8
    with pytest.raises(ConfigError, match=r"batch_size=30 is the global batch .* multiple of 4"):
        per_rank_batch_size(30, DistributedContext(world_size=4))


def test_nproc_launches_torchrun_for_one_node() -> None:
    command = torchrun_command(2, ["--epochs", "1"])
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc_per_node=2" in command and command[-4:] == ["plantlib", "train", "--epochs", "1"]
    with pytest.raises(ConfigError, match="nproc=0"):
        torchrun_command(0, [])


def test_two_process_run_writes_one_run_dir_whose_checkpoint_matches_single_process(
    data_dir: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracked = ["--tracking", "on", "--tracking-uri", store, "--register", "ant-bee"]
    done = run_cli("train", "--nproc", "2", *_train_flags(data_dir, runs, epochs=2), *tracked)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "distributed: 2 processes (gloo), global batch 8 = 4 per process" in done.stdout
    assert done.stdout.count("epoch 2/2 ") == 1  # rank 0 alone logs
    [run] = list_runs(runs)
    assert done.stdout.count(f"run directory: {run}  (best epoch ") == 1  # and prints the summary once
    assert done.stdout.count(f"registered {run} as ant-bee version 1") == 1  # --register reaches rank 0
    info = read_run_info(run)
    assert info["status"] == "finished" and info["distributed"]["world_size"] == 2
    assert info["distributed"]["per_process_batch_size"] == 4 and info["distributed"]["global_batch_size"] == 8
    assert [row["epoch"] for row in json.loads((run / "history.json").read_text())] == [1, 2]

    recorded = json.loads((run / "metrics.json").read_text())
    loaded = load_model(run / "best.pt", device="cpu")  # saved under DDP, loaded in one process
    metrics, frame = evaluate_split(loaded, "test", save=False)
    assert metrics["n"] == recorded["n"] == len(pd.read_csv(run / "predictions.csv"))  # no image counted twice
    assert metrics["accuracy"] == recorded["accuracy"]
    assert metrics["log_loss"] == pytest.approx(recorded["log_loss"], abs=1e-4)
    probs = pd.read_csv(run / "predictions.csv")[["p_ant", "p_bee"]].to_numpy()
    assert frame[["p_ant", "p_bee"]].to_numpy() == pytest.approx(probs, abs=1e-4)

    # And against an evaluation that shares none of plantlib's loading, preprocessing, inference or metric code.
    independent = _plain_torch_test_predictions(run)
    assert recorded["n"] == len(independent)
    recorded_probs = pd.read_csv(run / "predictions.csv").set_index("path").loc[independent.index]
    assert recorded_probs[["p_ant", "p_bee"]].to_numpy() == pytest.approx(independent.to_numpy(), abs=1e-4)
    targets = np.array([["ant", "bee"].index(path.split("/")[0]) for path in independent.index])
    chosen = independent.to_numpy()[np.arange(len(targets)), targets]
    assert recorded["accuracy"] == pytest.approx((independent.to_numpy().argmax(1) == targets).mean())
    assert recorded["log_loss"] == pytest.approx(-np.log(chosen).mean(), abs=1e-4)


def _plain_torch_test_predictions(run: Path) -> pd.DataFrame:
    """Class probabilities of the run's test images, computed by hand: the checkpoint's weights in a freshly built
    network (logits divided by its recorded temperature), each image decoded by Pillow, its shorter side resized
    (bicubic) to image_size * 256 / 224, centre cropped and normalised with the recorded mean and std."""
    from plantlib.models.backbones import build_model

    payload = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    info = read_run_info(run)
    saved = payload["config"]  # the model's shape is recorded in its config alone
    model = build_model(
        saved["backbone"],
        len(payload["class_names"]),
        pretrained=False,
        head=saved["head"],
        fuse_bn=saved["freeze_bn"] or saved["finetune"] == "head",  # fixed BatchNorm is saved fused
    )
    model.load_state_dict(payload["model"])
    model.eval()
    size = saved["image_size"]
    mean = torch.tensor(payload["normalization"]["mean"]).view(3, 1, 1)
    std = torch.tensor(payload["normalization"]["std"]).view(3, 1, 1)
    split = pd.read_csv(info["split_file"])
    paths = sorted(split.loc[split["split"] == "test", "path"])
    crops = []
    for path in paths:
        with Image.open(Path(info["data_dir"]) / path) as image:
            image = image.convert("RGB")
        scale = round(size * 256 / 224) / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        left, top = round((image.width - size) / 2), round((image.height - size) / 2)
        pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
        crops.append((torch.from_numpy(pixels).permute(2, 0, 1) - mean) / std)
    temperature = (payload.get("calibration") or {}).get("temperature", 1.0)  # fitted on the validation split
    with torch.no_grad():
        probs = torch.softmax(model(torch.stack(crops)) / temperature, dim=1).numpy()
    return pd.DataFrame(probs, index=paths, columns=payload["class_names"])


def test_a_dying_rank_stops_the_job_and_the_run_resumes_under_ddp(data_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    config = tiny_config(
        data_dir,
        runs,
        backbone="resnet18",
        pretrained=False,
        image_size=48,
        epochs=3,
        val_fraction=0.25,
        test_fraction=0.3,
        dist_timeout_s=60,
    )
    config.to_json(tmp_path / "config.json")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--max_restarts=0",
        str(Path(__file__).parent / "helpers" / "ddp_crash.py"),
        str(tmp_path / "config.json"),
    ]
    started = time.monotonic()
    crashed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert crashed.returncode != 0 and time.monotonic() - started < 240  # stopped, did not hang
    # torchrun's failure report names the dead rank and its exit code: "rank      : 1 (local_rank: 1)" followed by
    # "exitcode  : 3 (pid: 1234)".
    failed_rank = re.search(r"^\s*rank\s*: 1 \(local_rank: 1\)\n\s*exitcode\s*: (-?\d+) ", crashed.stderr, re.M)
    assert failed_rank is not None and failed_rank.group(1) == "3", crashed.stderr[-3000:]
    [run] = list_runs(runs)
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 2
    model = load_model(run / "last.pt", device="cpu").model
    assert model(torch.rand(2, 3, 48, 48)).shape == (2, 2)  # the last checkpoint stays usable

    resumed = run_cli("train", "--nproc", "2", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3] and read_run_info(run)["status"] == "finished"
    assert list_runs(runs) == [run]


def test_the_train_notebook_runs_a_two_process_job(data_dir: Path, tmp_path: Path) -> None:
    import papermill

    from plantlib.reporting.notebook import notebook_paths
    from plantlib.reporting.runner import kernel_name

    notebook = next(p for p in notebook_paths() if p.stem == "02_train")
    runs = tmp_path / "runs"
    papermill.execute_notebook(
        str(notebook),
        str(tmp_path / "02_train.ipynb"),
        parameters={
            "data_dir": str(data_dir),
            "output_dir": str(runs),
            "backbone": "resnet18",
            "pretrained": False,
            "image_size": 48,
            "batch_size": 8,
            "epochs": 1,
            "nproc": 2,
        },
        kernel_name=kernel_name(),
        progress_bar=False,
        cwd=str(notebook.parent),
    )
    [run] = list_runs(runs)
    assert read_run_info(run)["distributed"]["world_size"] == 2
    executed = (tmp_path / "02_train.ipynb").read_text(encoding="utf-8")
    assert "distributed: 2 processes (gloo)" in executed  # torchrun's output is shown in the notebook
    assert "resnet18: test accuracy" in executed
