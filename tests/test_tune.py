"""Optuna sweeps: search spaces checked up front, studies shared by processes, pruning, continuing a study."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from plantlib.config import RunConfig
from plantlib.errors import ConfigError, PlantlibError
from plantlib.experiments.tune import default_storage_url, load_space, open_storage, parse_space, tune
from plantlib.runs import read_run_info
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
