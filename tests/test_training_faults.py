"""Training that ends badly says what is saved: Ctrl-C during a checkpoint write, a disk that fills up."""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import plantlib.training.trainer as train_module
from plantlib import cli
from plantlib.checkpoint import load_checkpoint
from plantlib.processes import this_process
from plantlib.runs import read_run_info, run_status
from plantlib.training.trainer import Trainer
from tests.conftest import tiny_config, write_dataset

TINY = ["--backbone", "resnet18", "--no-pretrained", "--image-size", "48", "--batch-size", "4", "--epochs", "2"]
TINY += ["--val-fraction", "0.25", "--test-fraction", "0.25", "--early-stopping-patience", "none"]
SHORT_WRITE = "[enforce fail at inline_container.cc:664] . unexpected pos 1853824 vs 1853712"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("training-faults") / "d", {"ant": 8, "bee": 8})


@pytest.fixture(autouse=True)
def keep_warning_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """`cli.main` sets a one-line warning format for the process; give pytest its own back afterwards."""
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)


def test_ctrl_c_during_epoch_2s_checkpoint_names_the_epoch_last_pt_holds(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    real_save = train_module.save_checkpoint

    def interrupted_save(path: Path, payload: dict) -> None:
        if Path(path).name == "last.pt" and payload["epoch"] == 2:
            raise KeyboardInterrupt  # Ctrl-C while epoch 2's last.pt is being written
        real_save(path, payload)

    monkeypatch.setattr(train_module, "save_checkpoint", interrupted_save)
    config = tiny_config(data_dir, tmp_path, backbone="resnet18", pretrained=False, image_size=48, batch_size=4)
    trainer = Trainer.build(config.replace(epochs=2), show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    printed = capsys.readouterr().out
    assert "last.pt holds epoch 1" in printed and f"Resume with: plantlib train --resume {trainer.run_dir}" in printed
    assert load_checkpoint(trainer.run_dir / "last.pt")["epoch"] == 1
    assert read_run_info(trainer.run_dir)["status"] == "interrupted"


def full_disk_on_first_checkpoint(monkeypatch: pytest.MonkeyPatch, error: Exception) -> list[Path]:
    """torch.save writes part of the file, then fails like a full disk; only the first call. Returns the targets."""
    real_save = torch.save
    calls: list[Path] = []

    def save(obj, target, *args, **kwargs):
        calls.append(Path(target))
        if len(calls) > 1:
            return real_save(obj, target, *args, **kwargs)
        Path(target).write_bytes(b"PK\x03\x04" + b"\0" * 4096)
        raise error

    monkeypatch.setattr(torch, "save", save)
    return calls


@pytest.mark.parametrize("kind", ["ENOSPC", "torch short write"])
def test_a_full_disk_says_so_in_one_line_and_the_run_resumes_from_epoch_1(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, kind: str
) -> None:
    if kind == "ENOSPC":
        error: Exception = OSError(errno.ENOSPC, "No space left on device")
    else:
        error = RuntimeError(SHORT_WRITE)  # what torch raises when its zip writer cannot write
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1024))
    calls = full_disk_on_first_checkpoint(monkeypatch, error)
    runs = tmp_path / "runs"

    code = cli.main(["train", "--data-dir", str(data_dir), "--output-dir", str(runs), *TINY])

    captured = capsys.readouterr()
    (run_dir,) = runs.iterdir()
    errors = captured.err.strip().splitlines()
    assert code == 2 and len(errors) == 1, captured.err
    assert errors[0].startswith(f"plantlib train: error: no space left on {run_dir} (needs ~")
    assert "MB for best.pt" in errors[0] and "Traceback" not in captured.err
    assert f"no epoch was saved yet. Resume with: plantlib train --resume {run_dir}" in captured.out
    assert read_run_info(run_dir)["status"] == "failed"
    assert not list(run_dir.glob("*.pt")) and not list(run_dir.glob(".*.tmp")) and len(calls) == 1

    monkeypatch.undo()  # space was freed
    assert cli.main(["train", "--resume", str(run_dir)]) == 0
    resumed = capsys.readouterr().out
    assert "no epoch was saved yet; training from epoch 1" in resumed
    assert [row["epoch"] for row in json.loads((run_dir / "history.json").read_text())] == [1, 2]
    assert read_run_info(run_dir)["status"] == "finished" and load_checkpoint(run_dir / "last.pt")["epoch"] == 2


def test_a_short_write_with_room_to_spare_is_not_called_a_full_disk(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full_disk_on_first_checkpoint(monkeypatch, RuntimeError(SHORT_WRITE))
    config = tiny_config(data_dir, tmp_path, backbone="resnet18", pretrained=False, image_size=48, batch_size=4)
    trainer = Trainer.build(config.replace(epochs=1), show_progress=False)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        trainer.fit()
    assert read_run_info(trainer.run_dir)["status"] == "failed"


def test_resume_without_last_pt_names_the_epoch_best_pt_holds(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    seen = []

    def interrupt_after_epoch_1(trainer: Trainer, record: dict) -> None:
        seen.append(read_run_info(trainer.run_dir))
        raise KeyboardInterrupt

    config = tiny_config(data_dir, tmp_path, backbone="resnet18", pretrained=False, image_size=48, batch_size=4)
    trainer = Trainer.build(config.replace(epochs=2), callbacks=[interrupt_after_epoch_1], show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert seen[0]["status"] == "running" and seen[0]["process"] == this_process()  # who runs it, while it runs
    assert "process" not in read_run_info(trainer.run_dir)
    (trainer.run_dir / "last.pt").unlink()
    capsys.readouterr()
    Trainer.resume(trainer.run_dir, show_progress=False)
    printed = capsys.readouterr().out
    assert "last.pt is missing; best.pt holds epoch 1, but weights only (resuming needs last.pt" in printed
    assert "training from epoch 1" in printed and "no epoch was saved yet" not in printed


def test_a_running_run_whose_process_is_gone_reads_as_interrupted(tmp_path: Path) -> None:
    code = "import json; from plantlib.processes import this_process; print(json.dumps(this_process()))"
    ended = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
    me = this_process()
    owners = {
        "ended": (ended, "interrupted"),  # exited (and reaped) before anyone reads its run.json
        "reused": ({**me, "started": f"{me['started']}0"}, "interrupted"),  # the pid now names another process
        "alive": (me, "running"),
        "elsewhere": ({**me, "host": socket.gethostname() + "-other"}, "running"),  # cannot tell: assumed alive
        "unrecorded": (None, "running"),  # a run.json from before processes were recorded
    }
    assert ended["pid"] != os.getpid() and ended["started"] is not None
    for name, (owner, expected) in owners.items():
        run_dir = tmp_path / name
        run_dir.mkdir()
        info = {"status": "running", **({"process": owner} if owner else {})}
        (run_dir / "run.json").write_text(json.dumps(info), encoding="utf-8")
        assert run_status(run_dir) == expected, name
        assert read_run_info(run_dir)["status"] == expected, name
        assert json.loads((run_dir / "run.json").read_text(encoding="utf-8")) == info  # the file is left alone
