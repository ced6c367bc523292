"""Fault suite: killed and interrupted processes, concurrent runs, foreign checkpoints, odd images in training."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from plantlib.checkpoint import CheckpointError, load_checkpoint
from plantlib.config import RunConfig
from plantlib.data import fetch_dataset
from plantlib.data.manifest import build_manifest, write_manifest
from plantlib.paths import manifest_path
from plantlib.training.trainer import Trainer
from tests.conftest import pattern_image, tiny_config, write_dataset

TRAIN_ARGS = [
    "--epochs",
    "4",
    "--image-size",
    "48",
    "--batch-size",
    "4",
    "--val-fraction",
    "0.25",
    "--test-fraction",
    "0.25",
    "--early-stopping-patience",
    "none",
    "--seed",
    "11",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("faults") / "d", {"ant": 12, "bee": 12})


def start_training(data_dir: Path, runs: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "plantlib", "train", "--data-dir", str(data_dir), "--output-dir", str(runs)]
    return subprocess.Popen(
        [*args, *TRAIN_ARGS, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job ignores SIGINT and a child inherits that; give the child the default back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def resume(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "plantlib", "train", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        check=False,
    )


def history(run_dir: Path) -> list[dict]:
    rows = json.loads((run_dir / "history.json").read_text())
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows]


@pytest.fixture(scope="module")
def reference_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("reference")
    process = start_training(data_dir, runs)
    assert process.wait() == 0, process.stderr.read()
    (run,) = runs.iterdir()
    return run


def run_dir_in(runs: Path, timeout_s: float = 120) -> Path:
    deadline = time.monotonic() + timeout_s
    while not any(runs.iterdir()):
        assert time.monotonic() < deadline, f"no run directory appeared in {runs}"
        time.sleep(0.05)
    return next(runs.iterdir())


def wait_for_new_checkpoint(process: subprocess.Popen, checkpoint: Path, seen: int | None) -> None:
    """Until `checkpoint` is rewritten (an epoch finished) or the process ends."""
    while process.poll() is None:
        if checkpoint.exists() and checkpoint.stat().st_mtime_ns != seen:
            return
        time.sleep(0.02)


def test_sigkill_at_random_points_then_resume_gives_the_same_result(
    data_dir: Path, reference_run: Path, tmp_path: Path
) -> None:
    rng = random.Random(2024)
    process = start_training(data_dir, tmp_path)
    run_dir = run_dir_in(tmp_path)
    last = run_dir / "last.pt"
    kills = 0
    while kills < 3:
        wait_for_new_checkpoint(process, last, last.stat().st_mtime_ns if last.exists() else None)
        time.sleep(rng.uniform(0.0, 0.4))  # somewhere in the next epoch or checkpoint write
        if process.poll() is not None:
            break
        process.kill()
        process.wait()
        kills += 1
        for name in ("last.pt", "best.pt"):
            load_checkpoint(run_dir / name)  # never half-written
        process = subprocess.Popen(
            [sys.executable, "-m", "plantlib", "train", "--resume", str(run_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert kills >= 1
    assert history(run_dir) == history(reference_run)
    ours = json.loads((run_dir / "metrics.json").read_text())
    theirs = json.loads((reference_run / "metrics.json").read_text())
    assert ours["accuracy"] == theirs["accuracy"] and ours["log_loss"] == theirs["log_loss"]
    final, expected = load_checkpoint(last)["model"], load_checkpoint(reference_run / "last.pt")["model"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_ctrl_c_saves_and_says_how_to_resume(data_dir: Path, tmp_path: Path) -> None:
    process = start_training(data_dir, tmp_path, "--epochs", "4")  # epoch 1 saved, then Ctrl-C: 3 left to resume
    run_dir = run_dir_in(tmp_path)
    wait_for_new_checkpoint(process, run_dir / "last.pt", None)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert f"Resume with: plantlib train --resume {run_dir}" in stdout
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    load_checkpoint(run_dir / "last.pt")
    assert resume(run_dir).returncode == 0


def test_two_runs_started_together_never_share_a_directory(data_dir: Path, tmp_path: Path) -> None:
    first = start_training(data_dir, tmp_path, "--epochs", "1")
    second = start_training(data_dir, tmp_path, "--epochs", "1")
    assert first.wait() == 0 and second.wait() == 0
    runs = sorted(tmp_path.iterdir())
    assert len(runs) == 2
    for run in runs:
        assert RunConfig.from_json(run / "config.json").epochs == 1 and len(history(run)) == 1


def test_a_checkpoint_of_another_backbone_or_class_list_is_refused(data_dir: Path, tmp_path: Path) -> None:
    base = tiny_config(data_dir, tmp_path, image_size=48, batch_size=4, epochs=1)
    trainer = Trainer.build(base, show_progress=False)
    trainer.fit()
    checkpoint = load_checkpoint(trainer.run_dir / "last.pt")
    other = Trainer.build(base.replace(backbone="mobilenet_v2", pretrained=False), show_progress=False)
    with pytest.raises(CheckpointError, match="checkpoint is for backbone efficientnet_lite0"):
        other.restore(checkpoint)
    checkpoint["class_names"] = ["cat", "dog"]
    with pytest.raises(CheckpointError, match=r"classes \['cat', 'dog'\]"):
        trainer.restore(checkpoint)


def test_odd_images_train_end_to_end(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "odd", {"ant": 6, "bee": 6})
    Image.new("RGB", (1, 1), (200, 10, 10)).save(root / "ant" / "tiny.png")
    pattern_image(3).convert("CMYK").save(root / "bee" / "cmyk.jpg")
    pattern_image(4).convert("P").save(root / "bee" / "palette.gif")
    (root / "ant" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    config = tiny_config(root, tmp_path / "runs", image_size=48, batch_size=4, epochs=1)
    with pytest.warns(UserWarning, match="skipped 1 of 16 files"):
        result = Trainer.build(config, show_progress=False).fit()
    assert result.test_metrics["n"] == 4 and len(result.history) == 1


def test_an_interrupted_fetch_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    mirror = write_dataset(tmp_path / "mirror", {"dandelion": 3, "grass": 3})
    write_manifest(build_manifest(mirror), manifest_path())
    dest = tmp_path / "data"
    (dest / "grass").mkdir(parents=True)
    (dest / "grass" / ".0001.jpg.abc123.tmp").write_bytes(b"half a file")  # what a SIGKILL mid-write leaves
    (dest / "grass" / "0001.jpg").write_bytes((mirror / "grass" / "0001.jpg").read_bytes()[:100])
    report = fetch_dataset(dest, source=mirror, show_progress=False)
    assert "grass/0001.jpg" in report.repaired and report.total == 6
    assert not list(dest.rglob(".*.tmp"))


def test_an_unreadable_file_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from plantlib.data import images, scan_dataset

    root = write_dataset(tmp_path / "perm", {"a": 3, "b": 3})
    locked = root / "a" / "0000.jpg"
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the open fail the way it does for other users
        real_open = images.Image.open

        def denied(path, *args, **kwargs):
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(images.Image, "open", denied)
    with pytest.warns(UserWarning, match="permission denied"):
        result = scan_dataset(root, show_progress=False)
    assert result.skipped["reason"].tolist() == ["permission denied: make the file readable"]
