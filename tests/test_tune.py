"""Optuna sweeps: search spaces checked up front, studies shared by processes, pruning on the study's metric,
per-trial sampling seeds, trials that never see the test split, continuing a study, confirming its best config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

from plantlib.checkpoint import load_checkpoint
from plantlib.config import RunConfig
from plantlib.data import prepare_data
from plantlib.errors import ConfigError, PlantlibError
from plantlib.experiments.confirm import confirm_best
from plantlib.experiments.tune import (
    EPOCH_METRICS,
    PruneOnMetric,
    default_storage_url,
    load_space,
    open_storage,
    open_study,
    parse_space,
    trial_value,
    tune,
)
from plantlib.runs import read_cv_info, read_run_info
from plantlib.training.stopping import EarlyStopping
from plantlib.training.trainer import StopTraining, TrainingResult
from tests.conftest import tiny_config, write_dataset

SPACE = """
learning_rate: {type: float, low: 0.0003, high: 0.003, log: true}
dropout: {type: float, low: 0.2, high: 0.5}
head: {type: categorical, choices: [mlp, linear]}
"""
TINY = {"backbone": "resnet18", "pretrained": False, "image_size": 48, "epochs": 2}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("tune") / "d", {"ant": 10, "bee": 10})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr: {type: float, low: 0.1, high: 1}", "'lr' is not a config field"),
        ("dropout: {type: uniform, low: 0.1, high: 0.2}", "dropout needs type: one of float, int, categorical"),
        ("dropout: {type: float, low: 0.5, high: 0.2}", "needs numbers low < high"),
        ("weight_decay: {type: float, low: 0, high: 0.1, log: true}", "log-scaled, so low must be above 0"),
        ("head: {type: categorical, choices: [mlp, conv]}", "head='conv' is not allowed"),
        ("dropout: {type: float, low: 0.5, high: 1.5}", "dropout=1.5 is not allowed"),
        ("[1, 2]", "must map config fields to ranges"),
    ],
)
def test_a_bad_search_space_fails_before_any_trial(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_space(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs: {type: int, low: 1.5, high: 1.7}", r"epochs is int, so it needs whole numbers low < high"),
        ("learning_rate: {type: float, low: 0.001, high: 0.1, lgo: true}", r"unknown key 'lgo' \(did you mean 'log'"),
        ("head: {type: categorical, choices: [mlp], low: 1}", "head: low is for types float and int only"),
        ("dropout: {type: float, low: 0.1, high: 0.5, choices: [0.2]}", "choices is for type categorical only"),
        ("dropout: {type: float, low: 0.1, high: 0.5, log: maybe}", "log must be true or false"),
        ("epochs: {type: float, low: 1, high: 3}", "epochs=1.0 has type float; expected int"),
        ("epochs: {type: categorical, choices: [2, 2.5]}", "epochs=2.5 has type float; expected int"),
        ("epoch: {type: int, low: 1, high: 3}", r"'epoch' is not a config field \(did you mean 'epochs'\?\)"),
        ("- epochs", "holds a YAML list; a search space must map config fields to ranges"),
    ],
)
def test_a_loose_search_space_is_refused_and_the_message_names_its_file(
    tmp_path: Path, text: str, message: str
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as caught:
        load_space(space)
    assert str(caught.value).startswith(str(space))


def test_an_int_parameter_keeps_whole_bounds() -> None:
    (epochs,) = parse_space("epochs: {type: int, low: 2, high: 4}")
    assert (epochs.kind, epochs.low, epochs.high, epochs.log) == ("int", 2, 4, False)


def test_the_default_space_covers_the_recipes_knobs() -> None:
    names = {parameter.name for parameter in load_space(None)}
    assert {"learning_rate", "backbone_lr_factor", "frozen_blocks", "dropout", "label_smoothing"} <= names


class PruneTrialOne(optuna.pruners.BasePruner):
    """Prunes trial 1 at its first report and no other: a pruned trial on demand."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == 1


def test_a_study_runs_prunes_continues_and_is_shared_by_two_worker_processes(
    data_dir: Path, isolated_project: Path, tmp_path: Path
) -> None:
    base = tiny_config(data_dir, tmp_path / "runs", **TINY)
    space = parse_space(SPACE)
    first = tune(base, space, trials=3, study_name="s", pruner=PruneTrialOne())
    storage = open_storage(None)
    assert Path(default_storage_url()).is_relative_to(isolated_project)  # the embedded journal is in the project
    study = optuna.load_study(study_name="s", storage=storage)
    states = [t.state for t in study.trials]
    assert states == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.COMPLETE,
    ]
    assert read_run_info(Path(study.trials[1].user_attrs["run_dir"]))["status"] == "pruned"
    for trial in study.trials:  # finished and pruned trials keep their best weights, not their resume state
        checkpoints = sorted(p.name for p in Path(trial.user_attrs["run_dir"]).glob("*.pt"))
        assert checkpoints == ["best.pt"], (trial.number, checkpoints)
    best = RunConfig.from_json(first.best_config_file)  # what `plantlib train --config` reads
    assert {k: getattr(best, k) for k in first.best_params} == first.best_params
    assert best.data_dir == base.data_dir and best.output_dir is None

    (tmp_path / "space.yaml").write_text(SPACE)
    base.to_json(tmp_path / "base.json")
    command = [sys.executable, "-m", "plantlib", "tune", "--space", str(tmp_path / "space.yaml"), "--trials", "2"]
    command += ["--study", "s", "--config", str(tmp_path / "base.json")]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in "ab"]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    assert all("is an optimistic estimate: it was selected on the same validation images" in o for o in outputs)
    numbers = [t.number for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert sorted(numbers) == list(range(7))  # 3 + 2 workers x 2, no number twice

    again = tune(base, space, trials=1, study_name="s")  # rerunning the name continues the study
    assert again.trials == 8


def test_a_study_with_no_finished_trial_says_so(data_dir: Path, tmp_path: Path) -> None:
    base = tiny_config(data_dir, tmp_path / "runs", **TINY)

    class PruneAll(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            return True

    with pytest.raises(PlantlibError, match="study p has no finished trial yet"):
        tune(base, parse_space(SPACE), trials=1, study_name="p", pruner=PruneAll())


# ------------------------------------------------------------------------------ pruning on the study's metric

PRUNED, COMPLETE = optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE


def epochs(losses: tuple[float, ...], accuracies: tuple[float, ...]) -> list[dict[str, float]]:
    """History rows as the Trainer hands them to `on_epoch_end`."""
    return [
        {"epoch": epoch, "val_loss": loss, "val_accuracy": accuracy}
        for epoch, (loss, accuracy) in enumerate(zip(losses, accuracies, strict=True), start=1)
    ]


STARTUP = [  # three ordinary trials: at each epoch their median loss is 1.0, 0.7, 0.5 and median accuracy .55, .7, .8
    epochs((1.0, 0.7, 0.5), (0.55, 0.7, 0.8)),
    epochs((0.95, 0.65, 0.45), (0.6, 0.72, 0.82)),
    epochs((1.05, 0.75, 0.55), (0.5, 0.68, 0.78)),
]
IMPROVING = epochs((0.9, 0.6, 0.3), (0.6, 0.75, 0.9))  # ahead of the median at every epoch
WORSENING = epochs((1.1, 1.5, 2.0), (0.5, 0.45, 0.4))  # behind it from the first epoch


def run_trial(study: optuna.Study, metric: str, records: list[dict[str, float]]) -> optuna.trial.TrialState:
    """One real trial of `study` fed `records` through the tuning callback, told as pruned or finished."""
    trial = study.ask()
    callback = PruneOnMetric(trial, metric)
    try:
        for record in records:
            callback.on_epoch_end(None, record)  # type: ignore[arg-type]  # the callback reads only the record
    except StopTraining as stop:
        assert stop.status == "pruned"
        study.tell(trial, state=PRUNED)
        return PRUNED
    study.tell(trial, records[-1][EPOCH_METRICS[metric]])
    return COMPLETE


@pytest.mark.parametrize("metric", ["log_loss", "accuracy"])
def test_the_default_pruner_stops_the_worse_trial_on_the_studys_metric(metric: str, tmp_path: Path) -> None:
    study = open_study(str(tmp_path / "journal.log"), f"prune-{metric}", metric, seed=0)  # as tune builds it
    assert study.direction.name.lower() == {"log_loss": "minimize", "accuracy": "maximize"}[metric]
    assert [run_trial(study, metric, records) for records in STARTUP] == [COMPLETE] * 3
    assert run_trial(study, metric, IMPROVING) == COMPLETE  # loss falling 0.9 -> 0.3, accuracy rising: kept
    assert run_trial(study, metric, WORSENING) == PRUNED  # loss rising 1.1 -> 2.0, accuracy falling: pruned
    improving, worsening = study.trials[3], study.trials[4]
    key = EPOCH_METRICS[metric]
    assert improving.intermediate_values == {row["epoch"]: row[key] for row in IMPROVING}  # the metric, not the loss
    assert worsening.intermediate_values == {1: WORSENING[0][key]}  # stopped after its first epoch


def test_a_study_continued_with_the_other_metric_is_refused(tmp_path: Path) -> None:
    open_study(str(tmp_path / "journal.log"), "s", "accuracy", seed=0)
    with pytest.raises(ConfigError, match="study 's' was created to maximize its metric, but metric='log_loss'"):
        open_study(str(tmp_path / "journal.log"), "s", "log_loss", seed=0)


# ------------------------------------------------------------------------------ sampling seeds per trial


def sampled(study: optuna.Study, trials: int = 1) -> None:
    space = parse_space(SPACE)
    study.optimize(lambda trial: float(len([p.sample(trial) for p in space])), n_trials=trials)


def params_by_number(storage: str, name: str) -> dict[int, dict[str, Any]]:
    return {t.number: t.params for t in optuna.load_study(study_name=name, storage=open_storage(storage)).trials}


def test_workers_sharing_a_study_draw_different_values_and_one_worker_is_reproducible(tmp_path: Path) -> None:
    shared = str(tmp_path / "shared.log")
    workers = [open_study(shared, "s", "accuracy", seed=42) for _ in "ab"]  # two processes' view of one study
    for worker in workers:
        sampled(worker)
    drawn = params_by_number(shared, "s")
    assert sorted(drawn) == [0, 1] and drawn[0] != drawn[1]
    assert drawn[0]["learning_rate"] != drawn[1]["learning_rate"]

    for attempt in ("once", "twice"):  # one worker, the same study seed: the same values, trial by trial
        alone = str(tmp_path / f"{attempt}.log")
        sampled(open_study(alone, "s", "accuracy", seed=42), trials=2)
        assert params_by_number(alone, "s") == drawn

    other = str(tmp_path / "other-seed.log")
    sampled(open_study(other, "s", "accuracy", seed=43))
    assert params_by_number(other, "s")[0] != drawn[0]


# ------------------------------------------------------------------------------ what a trial scores

HISTORY = [
    {"epoch": 1, "val_loss": 0.70, "val_accuracy": 0.60},
    {"epoch": 2, "val_loss": 0.40, "val_accuracy": 0.75},  # the lowest loss
    {"epoch": 3, "val_loss": 0.45, "val_accuracy": 0.85},  # the highest accuracy
    {"epoch": 4, "val_loss": 0.55, "val_accuracy": 0.85},  # a tie is no improvement: best.pt keeps epoch 3
]


@pytest.mark.parametrize(("monitor", "best_epoch"), [("val_loss", 2), ("val_accuracy", 3)])
def test_a_trial_scores_the_epoch_its_best_checkpoint_holds(monitor: str, best_epoch: int, tmp_path: Path) -> None:
    stopping = EarlyStopping(monitor=monitor, patience=None)
    for row in HISTORY:  # what the Trainer does each epoch: best.pt is written when this says improved
        stopping.update(row[monitor], row["epoch"])
    assert stopping.best_epoch == best_epoch
    result = TrainingResult(tmp_path, HISTORY, stopping.best_epoch, stopping.best, False, 1.0)
    held = HISTORY[best_epoch - 1]
    assert trial_value(result, "accuracy") == held["val_accuracy"]
    assert trial_value(result, "log_loss") == held["val_loss"]


def test_a_trial_never_evaluates_or_logs_the_test_split(data_dir: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = tiny_config(
        data_dir, tmp_path / "runs", **TINY, tracking="on", tracking_uri=store, early_stopping_monitor="val_accuracy"
    )
    result = tune(base, parse_space(SPACE), trials=1, study_name="t", metric="log_loss", out_dir=tmp_path / "tune")
    [trial] = optuna.load_study(study_name="t", storage=open_storage(None)).trials
    run_dir = Path(trial.user_attrs["run_dir"])
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "predictions.csv").exists()
    info = read_run_info(run_dir)
    assert info["status"] == "finished" and "test" not in info and info["test_evaluated"] is False
    assert info["tracking"]["status"] == "tracked"
    held = load_checkpoint(run_dir / "best.pt")["epoch"]  # the epoch best.pt holds (val_accuracy monitor)
    history = json.loads((run_dir / "history.json").read_text(encoding="utf-8"))
    assert trial.value == result.best_value == history[held - 1]["val_loss"]

    client = MlflowClient(tracking_uri=store)
    [experiment] = [e for e in client.search_experiments() if e.name == base.experiment]
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    tracked = runs[run_dir.name]
    assert tracked.info.status == "FINISHED" and "val_loss" in tracked.data.metrics
    assert not [key for key in tracked.data.metrics if key.startswith("test")], tracked.data.metrics
    assert runs["study-t"].data.tags["best_value"].startswith("optimistic")
    assert "optimistic estimate" in result.statement and result.finished == 1


# ------------------------------------------------------------------------------ confirming the best config


def test_confirm_cross_validates_best_and_base_on_the_same_fresh_folds_and_seeds(
    data_dir: Path, tmp_path: Path
) -> None:
    base = tiny_config(data_dir, tmp_path / "runs", **{**TINY, "epochs": 1})
    best_file = tmp_path / "tune" / "best_config.json"
    best_file.parent.mkdir()
    base.replace(dropout=0.3, output_dir=None).to_json(best_file)
    with pytest.raises(ConfigError, match="the seed of the study's trials"):
        confirm_best(best_file, base, folds=2, seeds=[base.seed])
    with pytest.raises(ConfigError, match="made the study's split and folds"):
        confirm_best(best_file, base, folds=2, split_seed=base.effective_split_seed)

    confirmation = confirm_best(best_file, base, folds=2)
    assert confirmation.split_seed != base.effective_split_seed and base.seed not in confirmation.seeds
    infos = [read_cv_info(cv) for cv in (confirmation.best_cv, confirmation.base_cv)]
    assert [info["config"]["dropout"] for info in infos] == [0.3, base.dropout]
    for info in infos:
        assert info["fold_seed"] == confirmation.split_seed and info["seeds"] == confirmation.seeds
    folds = [pd.read_csv(cv / "folds.csv") for cv in (confirmation.best_cv, confirmation.base_cv)]
    pd.testing.assert_frame_equal(folds[0], folds[1])  # the same folds: compared image by image
    test_images = set(prepare_data(base, show_progress=False).frame("test")["path"])
    assert test_images and not test_images & set(folds[0]["path"])  # the study's test split stays untouched
    assert len(confirmation.comparison.pairs) == 1 and confirmation.sentence
