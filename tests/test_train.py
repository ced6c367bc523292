"""The Trainer on tiny data: run directory contents, determinism, exact resume, stages and schedules."""

import sys
from pathlib import Path

import pytest
import torch

from plantlib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from plantlib.config import RunConfig
from plantlib.errors import PlantlibError
from plantlib.experiments import train
from plantlib.training.build import build_run
from plantlib.training.optim import build_optimizer, build_scheduler
from plantlib.training.trainer import Trainer
from tests.conftest import tiny_config, write_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("train") / "d", {"ant": 16, "bee": 16})


def tiny(data_dir: Path, tmp_path: Path, **changes) -> RunConfig:
    return tiny_config(data_dir, tmp_path / "runs", **changes)


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in history]


def test_a_run_writes_a_complete_self_describing_run_directory(data_dir: Path, tmp_path: Path) -> None:
    config = tiny(data_dir, tmp_path)
    result = train(config, show_progress=False)
    names = {p.name for p in result.run_dir.iterdir()}
    assert {
        "config.json",
        "run.json",
        "history.json",
        "best.pt",
        "last.pt",
        "metrics.json",
        "predictions.csv",
    } <= names
    assert RunConfig.from_json(result.run_dir / "config.json") == config
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.best_record == result.history[result.best_epoch - 1]  # the record of the epoch best.pt holds
    assert result.best_record["val_loss"] == result.best_metric  # the default monitor
    assert set(result.history[0]) >= {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr", "seconds"}
    checkpoint = load_checkpoint(result.run_dir / "best.pt")
    assert checkpoint["class_names"] == ["ant", "bee"] and checkpoint["config"]["image_size"] == 64
    # The default backbone, EfficientNet-Lite0, was trained on (pixel - 127) / 128 in 0..255 units.
    assert config.backbone == "efficientnet_lite0"
    assert checkpoint["normalization"] == {"mean": [127 / 255] * 3, "std": [128 / 255] * 3}
    assert 0.0 <= result.test_metrics["accuracy"] <= 1.0 and result.test_metrics["n"] == 8
    # Only last.pt resumes: best.pt carries no optimiser state, so it is well under last.pt's size with Adam.
    last = load_checkpoint(result.run_dir / "last.pt")
    assert {"optimizer", "scheduler", "scaler"} <= set(last) and not {"optimizer", "scheduler", "scaler"} & set(
        checkpoint
    )
    assert (result.run_dir / "best.pt").stat().st_size < 0.8 * (result.run_dir / "last.pt").stat().st_size
    with pytest.raises(CheckpointError, match=r"weights only; resume from the run's last\.pt"):
        Trainer.build(config, show_progress=False).restore(checkpoint)


def test_same_seed_same_history_and_another_seed_differs(data_dir: Path, tmp_path: Path) -> None:
    first = train(tiny(data_dir, tmp_path, epochs=2), show_progress=False)
    second = train(tiny(data_dir, tmp_path, epochs=2), show_progress=False)
    assert first.run_dir != second.run_dir
    assert without_timing(first.history) == without_timing(second.history)
    assert first.test_metrics["log_loss"] == second.test_metrics["log_loss"]
    other = train(tiny(data_dir, tmp_path, epochs=2, seed=7, split_file=str(tmp_path / "s7.csv")), show_progress=False)
    assert without_timing(other.history) != without_timing(first.history)


def test_an_interrupted_run_resumes_to_the_same_result(data_dir: Path, tmp_path: Path) -> None:
    reference = train(tiny(data_dir, tmp_path, epochs=4), show_progress=False)

    def interrupt_after_epoch_2(trainer: Trainer, record: dict) -> None:
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    trainer = Trainer.build(
        tiny(data_dir, tmp_path, epochs=4), callbacks=[interrupt_after_epoch_2], show_progress=False
    )
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert load_checkpoint(trainer.run_dir / "last.pt")["epoch"] == 2
    resumed = Trainer.resume(trainer.run_dir, show_progress=False).fit()
    assert without_timing(resumed.history) == without_timing(reference.history)
    final = load_checkpoint(resumed.run_dir / "last.pt")["model"]
    expected = load_checkpoint(reference.run_dir / "last.pt")["model"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    with pytest.raises(PlantlibError, match="already finished"):
        Trainer.resume(trainer.run_dir)
    with pytest.raises(PlantlibError, match="not a run directory"):
        Trainer.resume(tmp_path / "no-such-run")


def test_two_stage_keeps_the_backbone_fixed_during_the_head_stage(data_dir: Path, tmp_path: Path) -> None:
    snapshots = []

    def snapshot(trainer: Trainer, record: dict) -> None:
        snapshots.append([p.detach().clone() for p in trainer.model.backbone.parameters()])

    config = tiny(data_dir, tmp_path, finetune="two_stage", head_epochs=1, epochs=2)
    trainer = Trainer.build(config, callbacks=[snapshot], show_progress=False)
    before = [p.detach().clone() for p in trainer.model.backbone.parameters()]
    result = trainer.fit()
    assert [row["backbone_trainable"] for row in result.history] == [False, True]
    assert all(torch.equal(a, b) for a, b in zip(before, snapshots[0], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[0], snapshots[1], strict=True))


def test_early_stopping_stops_after_patience(data_dir: Path, tmp_path: Path) -> None:
    config = tiny(
        data_dir,
        tmp_path,
        epochs=6,
        early_stopping_patience=2,
        early_stopping_monitor="val_accuracy",
        early_stopping_min_delta=2.0,
    )  # no accuracy can improve by 2: stop after 1 + 2 epochs
    result = train(config, show_progress=False)
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


@pytest.mark.parametrize("scheduler", ["cosine", "step", "plateau", "onecycle", "none"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_every_optimizer_and_schedule_builds_and_steps(scheduler: str, optimizer: str) -> None:
    from plantlib.models.backbones import build_model

    model = build_model("resnet18", 2, pretrained=False)
    config = RunConfig(optimizer=optimizer, scheduler=scheduler, warmup_epochs=1, step_size=1, epochs=3)
    opt = build_optimizer(model, config)
    assert type(opt) is OPTIMIZERS[optimizer]
    base, gamma = config.learning_rate, config.gamma
    assert opt.param_groups[1]["lr"] == base
    assert opt.param_groups[0]["lr"] == pytest.approx(base * config.backbone_lr_factor)
    if optimizer == "sgd":
        assert opt.defaults["momentum"] == config.momentum
    sched = build_scheduler(opt, config, steps_per_epoch=4, epochs=3)
    lrs = [opt.param_groups[1]["lr"]]  # the head's rate: before any step, then after each of 12 batches
    for _ in range(12):
        opt.step()
        if scheduler == "plateau":
            sched.step(1.0)  # a validation loss that never improves
        else:
            sched.step()
        lrs.append(opt.param_groups[1]["lr"])
    # Warm-up (1 epoch = 4 batches) ramps linearly: 1/4, 2/4, 3/4 of the rate, then the full rate.
    warm_up = [base / 4, base / 2, 3 * base / 4, base]
    if scheduler == "none":
        assert lrs == pytest.approx(warm_up + [base] * 9)
    elif scheduler == "step":  # times gamma after every epoch (step_size=1)
        assert lrs == pytest.approx(warm_up + [base * gamma] * 4 + [base * gamma**2] * 4 + [base * gamma**3])
    elif scheduler == "cosine":  # after the warm-up, half a cosine from the full rate down to 1% of it
        assert lrs[:4] == pytest.approx(warm_up)
        assert lrs[3:] == sorted(lrs[3:], reverse=True)
        assert lrs[8] == pytest.approx(base * (0.01 + 0.99 / 2)) and lrs[-1] == pytest.approx(base / 100)
    elif scheduler == "plateau":  # patience 1: the first bad epoch is forgiven, the second cuts the rate by gamma
        assert lrs[:5] == pytest.approx([base, base, base, base * gamma, base * gamma])
        assert lrs[5] == pytest.approx(base * gamma**2)
    else:  # onecycle brings its own warm-up: from max/25 up to the rate, then down far below the start
        used = lrs[:12]  # the rates the 12 batches ran with (a 13th step is past the cycle's end)
        peak = used.index(max(used))
        assert used[0] == pytest.approx(base / 25) and max(used) == pytest.approx(base, rel=0.01)
        assert 0 < peak < 11 and used[: peak + 1] == sorted(used[: peak + 1])
        assert used[peak:] == sorted(used[peak:], reverse=True) and used[-1] < used[0] / 100


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or not a plantlib checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"state": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a plantlib checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    save_checkpoint(tmp_path / "ok.pt", {"epoch": 1})
    assert load_checkpoint(tmp_path / "ok.pt")["epoch"] == 1


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_frozen_blocks_stay_fixed_and_the_checkpoint_predicts_as_the_run_did(
    data_dir: Path, tmp_path: Path, freeze_bn: bool
) -> None:
    import pandas as pd

    from plantlib.inference.predictor import evaluate_split, load_model
    from plantlib.models.backbones import backbone_blocks
    from plantlib.models.fusion import has_batchnorm2d

    config = tiny(data_dir, tmp_path, epochs=1, frozen_blocks=3, freeze_bn=freeze_bn)
    trainer = Trainer.build(config, show_progress=False)
    assert has_batchnorm2d(trainer.model.backbone) is not freeze_bn  # fixed statistics are folded away
    blocks = backbone_blocks(trainer.model)
    frozen_before = [p.detach().clone() for m in blocks[0] + blocks[1] + blocks[2] for p in m.parameters()]
    later_before = [p.detach().clone() for m in blocks[-1] for p in m.parameters()]
    result = trainer.fit()
    frozen_after = [p for m in blocks[0] + blocks[1] + blocks[2] for p in m.parameters()]
    later_after = [p for m in blocks[-1] for p in m.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, frozen_after, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(later_before, later_after, strict=True))
    saved = load_checkpoint(result.run_dir / "best.pt")["model"]
    assert any(key.startswith("backbone.") and key.endswith("running_var") for key in saved) is not freeze_bn

    loaded = load_model(result.run_dir / "best.pt")
    assert not has_batchnorm2d(loaded.model.backbone)  # inference always runs the folded form
    _, frame = evaluate_split(loaded, "test", save=False)
    recorded = pd.read_csv(result.run_dir / "predictions.csv")
    assert frame["path"].tolist() == recorded["path"].tolist()
    for column in ("p_ant", "p_bee"):
        assert frame[column].to_numpy() == pytest.approx(recorded[column].to_numpy(), abs=1e-4)


def test_a_trainer_is_built_without_file_or_network_io(data_dir: Path, tmp_path: Path) -> None:
    """The parts are built first (data, model, loaders); making the Trainer itself opens, creates and connects
    nothing, even for a run directory inside a read-only folder. Its run directory is made when `fit` starts."""
    config = tiny(data_dir, tmp_path)
    parts = build_run(config, show_progress=False)
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    events: list[tuple[str, object]] = []
    watching = [False]
    watched = ("open", "os.mkdir", "os.rename", "os.remove", "os.chmod", "shutil.copyfile")

    def audit(event: str, args: tuple) -> None:
        if watching[0] and (event in watched or event.startswith("socket.")):
            events.append((event, args[0] if args else None))

    sys.addaudithook(audit)  # hooks cannot be removed; this one goes quiet when the block ends
    read_only.chmod(0o500)
    watching[0] = True
    try:
        trainers = [Trainer(parts), Trainer(parts, run_dir=read_only / "run", callbacks=[lambda trainer, record: None])]
    finally:
        watching[0] = False
    read_only.chmod(0o700)
    assert events == []
    assert trainers[0].run_dir is None and not (tmp_path / "runs").exists()
    assert list(read_only.iterdir()) == []
    result = trainers[0].fit()  # the run directory appears with the first write
    assert result.run_dir.parent == tmp_path / "runs" and (result.run_dir / "config.json").is_file()
