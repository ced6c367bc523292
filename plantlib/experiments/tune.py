"""Hyperparameter sweeps with Optuna: a YAML search space, a study that any number of processes can share.

Storage: by default a journal file inside the project (`artifacts/optuna/journal.log`), which Optuna locks so
several processes on one machine can work on one study; any database URL (e.g. PostgreSQL) lets processes on
several machines share it. Rerunning a study name continues it. Each trial is an ordinary (tracked) run that
never looks at the test split, or a cross-validation. Single-run trials are pruned on the metric the study
optimises, per epoch and in its direction. Every trial samples with a seed of its own, derived from the study
seed and its trial number: one worker is reproducible, and workers sharing a study draw different values.

The best trial's value is optimistic (it was selected on the very images it was measured on); `confirm_best`
cross-validates the best and the base config on folds and seeds the study never used and compares them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from plantlib.checkpoint import drop_resume_state
from plantlib.config import RunConfig, field_names, parse_config_text, read_config_file
from plantlib.errors import ConfigError, PlantlibError
from plantlib.evaluation.metrics import proportion_ci
from plantlib.experiments.cv import cross_validate
from plantlib.experiments.tracking import ParentRun, tracking_callbacks
from plantlib.paths import artifacts_dir
from plantlib.runs import RunDir, StudyDir, is_cv_dir, read_cv_info
from plantlib.training.trainer import Callback, StopTraining, Trainer, TrainingResult

DEFAULT_SPACE = """
learning_rate: {type: float, low: 0.0003, high: 0.003, log: true}
backbone_lr_factor: {type: float, low: 0.03, high: 0.3, log: true}
frozen_blocks: {type: int, low: 4, high: 6}
dropout: {type: float, low: 0.2, high: 0.6}
label_smoothing: {type: float, low: 0.0, high: 0.15}
weight_decay: {type: float, low: 0.000001, high: 0.01, log: true}
epochs: {type: int, low: 3, high: 6}
"""
METRICS = {"accuracy": "maximize", "log_loss": "minimize"}  # what a study optimises, and in which direction
EPOCH_METRICS = {"accuracy": "val_accuracy", "log_loss": "val_loss"}  # each metric's column in a run's history
PARAMETER_TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class Parameter:
    """One searched config field: a float or int range (optionally log-scaled) or a list of choices."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def sample(self, trial: Any) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))


SPACE_EXAMPLE = "e.g. 'dropout: {type: float, low: 0.2, high: 0.5}'"
SPACE_SHAPE = f"a search space must map config fields to ranges, {SPACE_EXAMPLE}"


def parse_space(text: str, source: str = "search space") -> list[Parameter]:
    """Parameters from YAML `name: {type: float|int|categorical, low, high, log, choices}`, checked as config."""
    return space_parameters(parse_config_text(text, source, "YAML", SPACE_SHAPE), source)


def space_parameters(raw: dict[str, Any], source: str) -> list[Parameter]:
    """The parameters a search-space mapping names, checked as config fields.

    Every message names `source` (the file). Keys are checked per type: `choices` belongs to categorical only,
    `low`, `high` and `log` to float and int only, and an int parameter needs whole-number bounds.
    """
    if not raw:
        raise ConfigError(f"{source} must map config fields to ranges, {SPACE_EXAMPLE}; it names none")
    return [_space_parameter(name, spec, source) for name, spec in raw.items()]


# The keys each parameter type takes in a search space.
_SPACE_KEYS = {
    "categorical": ("type", "choices"),
    "float": ("type", "low", "high", "log"),
    "int": ("type", "low", "high", "log"),
}


def _space_parameter(name: str, spec: Any, source: str) -> Parameter:
    """One search-space entry as a Parameter: a config field, a known type, its keys, and values the field takes."""
    import difflib

    if name not in field_names():
        close = difflib.get_close_matches(name, field_names(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; valid: {', '.join(field_names())}"
        raise ConfigError(f"{source}: {name!r} is not a config field{hint}")
    if not isinstance(spec, dict) or spec.get("type") not in PARAMETER_TYPES:
        raise ConfigError(f"{source}: {name} needs type: one of {', '.join(PARAMETER_TYPES)}, {SPACE_EXAMPLE}")
    _check_space_keys(name, spec, source)
    if spec["type"] == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{source}: {name} is categorical and needs a non-empty choices list, e.g. [a, b]")
        for choice in choices:
            _check_field_value(name, choice, source)  # each choice must be a valid value
        return Parameter(name, "categorical", choices=tuple(choices))
    return _range_parameter(name, spec, source)


def _check_space_keys(name: str, spec: dict[str, Any], source: str) -> None:
    """Fail on a key the parameter's type does not take, naming the keys it does take (and a likely typo)."""
    import difflib

    kind = spec["type"]
    a_kind = f"{'an' if kind == 'int' else 'a'} {kind} parameter"
    for key in spec:
        if key in _SPACE_KEYS[kind]:
            continue
        if key == "choices":
            raise ConfigError(f"{source}: {name}: choices is for type categorical only; {a_kind} takes low, high, log")
        if key in ("low", "high", "log"):
            raise ConfigError(f"{source}: {name}: {key} is for types float and int only; {a_kind} takes choices")
        known = ["type", "low", "high", "log", "choices"]
        swapped = [k for k in known if sorted(k) == sorted(str(key))]  # letters swapped: 'lgo' is 'log'
        close = swapped or difflib.get_close_matches(str(key), known, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{source}: {name}: unknown key {key!r}{hint}; {a_kind} takes {', '.join(_SPACE_KEYS[kind])}")


def _range_parameter(name: str, spec: dict[str, Any], source: str) -> Parameter:
    """A float or int range: numbers low < high (whole for int), log-scaled only above 0 (from 1 for int)."""
    kind, low, high = spec["type"], spec.get("low"), spec.get("high")
    number = int if kind == "int" else (int, float)
    if not all(isinstance(v, number) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        what = "whole numbers" if kind == "int" else "numbers"
        raise ConfigError(f"{source}: {name} is {kind}, so it needs {what} low < high (got low={low!r}, high={high!r})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{source}: {name}: log must be true or false (got {log!r})")
    if log and kind == "int" and low < 1:
        raise ConfigError(f"{source}: {name} is log-scaled, so low must be 1 or more (got {low})")
    if log and low <= 0:
        raise ConfigError(f"{source}: {name} is log-scaled, so low must be above 0 (got {low})")
    _check_field_value(name, low if kind == "int" else float(low), source)
    _check_field_value(name, high if kind == "int" else float(high), source)
    return Parameter(name, kind, float(low), float(high), log)


def _check_field_value(name: str, value: Any, source: str) -> None:
    """Fail, naming `source`, when config field `name` refuses `value`."""
    try:
        RunConfig().replace(**{name: value})
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def load_space(path: Path | None) -> list[Parameter]:
    """The search space in the YAML file `path` (None: `DEFAULT_SPACE`)."""
    if path is None:
        return parse_space(DEFAULT_SPACE, "the default search space")
    return space_parameters(read_config_file(path, "YAML", SPACE_SHAPE, "search space file"), str(path))


def default_storage_url() -> str:
    return str(artifacts_dir() / "optuna" / "journal.log")


def open_storage(url: str | None) -> Any:
    """A database URL as it is; a file path (the default) as a journal file, safe for processes on one machine."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    url = url or default_storage_url()
    if "://" in url:
        return url
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


# ------------------------------------------------------------------------------ sampling, pruning, the study


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The sampling seed of one trial: the same for the same (study seed, trial number), different across trials."""
    return int(np.random.SeedSequence([study_seed, trial_number]).generate_state(1)[0])


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Optuna's TPE sampler, seeded afresh for every trial with `trial_seed(seed, trial.number)`.

    Seeding one sampler per process with the study seed makes workers that share a study draw the same values;
    the storage numbers trials uniquely across workers, so a seed derived from the trial number keeps one worker
    reproducible and makes many workers diverse. Every sampler method is handed to that trial's TPE sampler.
    """

    def __init__(self, seed: int, **tpe_options: Any) -> None:
        self.seed = seed
        self.tpe_options = tpe_options
        self._samplers: dict[int, optuna.samplers.TPESampler] = {}  # by trial number, while the trial runs

    def _sampler(self, trial: optuna.trial.FrozenTrial) -> optuna.samplers.TPESampler:
        sampler = self._samplers.get(trial.number)
        if sampler is None:
            sampler = optuna.samplers.TPESampler(seed=trial_seed(self.seed, trial.number), **self.tpe_options)
            self._samplers[trial.number] = sampler
        return sampler

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._samplers.pop(trial.number, None)  # a new trial starts from its seed
        self._sampler(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return self._sampler(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        return self._sampler(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        return self._sampler(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._sampler(trial).after_trial(study, trial, state, values)
        self._samplers.pop(trial.number, None)

    def reseed_rng(self) -> None:
        """Nothing to reseed: every trial's sampler is seeded from its own trial number."""


def default_pruner() -> optuna.pruners.BasePruner:
    """The median pruner: after 3 finished trials, a trial whose best epoch so far is behind the median of the
    others at the same epoch stops (it reads the reported values in the study's direction)."""
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)


def open_study(
    storage: str | None, study_name: str, metric: str, seed: int, pruner: optuna.pruners.BasePruner | None = None
) -> optuna.Study:
    """Create or continue `study_name` optimising `metric` in its direction; an existing study must agree."""
    if metric not in METRICS:
        raise ConfigError(f"metric={metric!r} is not allowed; choose one of: {', '.join(METRICS)}")
    study = optuna.create_study(
        storage=open_storage(storage),
        study_name=study_name,
        direction=METRICS[metric],
        load_if_exists=True,
        sampler=TrialSeededSampler(seed),
        pruner=pruner or default_pruner(),
    )
    found = study.direction.name.lower()
    if found != METRICS[metric]:
        raise ConfigError(
            f"study {study_name!r} was created to {found} its metric, but metric={metric!r} is to be "
            f"{METRICS[metric]}d; pass the metric it was created with, or a new study name"
        )
    return study


class PruneOnMetric(Callback):
    """Reports each epoch's validation value of the study's metric to the trial (val_accuracy for accuracy,
    val_loss for log_loss) and stops the run when the pruner, reading it in the study's direction, says so."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        if metric not in METRICS:
            raise ConfigError(f"metric={metric!r} is not allowed; choose one of: {', '.join(METRICS)}")
        direction = trial.study.direction.name.lower()
        if direction != METRICS[metric]:
            raise ConfigError(f"metric {metric} is to be {METRICS[metric]}d, but the trial's study is to {direction}")
        self.trial = trial
        self.key = EPOCH_METRICS[metric]

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        value, epoch = float(record[self.key]), int(record["epoch"])
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise StopTraining(
                "pruned", f"trial {self.trial.number} pruned after epoch {epoch} ({self.key} {value:.4f})"
            )


def trial_value(result: TrainingResult, metric: str) -> float:
    """A single-run trial's score: the validation `metric` of the epoch its best.pt holds.

    That is the early-stopping monitor's best epoch (`result.best_epoch`), under either monitor: with
    `early_stopping_monitor="val_accuracy"` the epoch of the lowest validation loss may be one best.pt never held.
    """
    record = result.best_record
    if record is None:
        raise PlantlibError(f"{result.run_dir}: its history has no row for best epoch {result.best_epoch}")
    return float(record[EPOCH_METRICS[metric]])


def optimism_note(finished: int, scored_on: str = "validation images") -> str:
    """What the best value of a study is worth: it was chosen on the images it was measured on."""
    trials = "trial" if finished == 1 else "trials"
    return f"the best of {finished} {trials} is an optimistic estimate: it was selected on the same {scored_on}"


@dataclass
class TuneResult:
    """A study's best trial. `best_value` is optimistic: the best of `finished` trials, selected on the same images
    it was measured on, so it overstates what the config does on new images; `confirm_best` measures it afresh."""

    study_name: str
    best_value: float
    best_params: dict[str, Any]
    best_config_file: Path
    trials: int  # trials of the study in any state
    metric: str = "accuracy"
    finished: int = 0  # trials that finished (the ones the best was chosen from)
    scored_on: str = "validation images"

    @property
    def caveat(self) -> str:
        return optimism_note(self.finished, self.scored_on)

    @property
    def statement(self) -> str:
        """`best accuracy 0.9500 (the best of 8 trials is an optimistic estimate: ...)`."""
        return f"best {self.metric} {self.best_value:.4f} ({self.caveat})"


def _objective(
    base: RunConfig, space: list[Parameter], metric: str, cv_folds: int, runs_dir: Path, parent: str | None
) -> Any:
    def objective(trial: optuna.Trial) -> float:
        values = {parameter.name: parameter.sample(trial) for parameter in space}
        config = base.replace(
            **values,
            output_dir=str(runs_dir / f"trial-{trial.number:04d}"),
            extra={**base.extra, "study": trial.study.study_name, "trial": trial.number},
        )
        if cv_folds:  # held-out folds of the pool are evaluated; the test split stays out of it
            result = cross_validate(config, folds=cv_folds, show_progress=False, parent_run_id=parent)
            trial.set_user_attr("cv_dir", str(result.cv_dir))
            return float(result.metrics[metric])
        callbacks = [*tracking_callbacks(config, parent), PruneOnMetric(trial, metric)]
        run_dir = RunDir.create(config).path  # named in the study before training starts
        trainer = Trainer.build(config, run_dir=run_dir, callbacks=callbacks, show_progress=False)
        trial.set_user_attr("run_dir", str(run_dir))
        # A finished or pruned trial is never resumed (a rerun of the study starts new trials); a trial that failed
        # otherwise keeps its last.pt.
        try:
            trained = trainer.fit(evaluate_test=False)  # choosing hyperparameters must not see test scores
        except StopTraining as stop:
            drop_resume_state(run_dir)
            raise optuna.TrialPruned(str(stop)) from stop
        drop_resume_state(run_dir)
        return trial_value(trained, metric)

    return objective


def tune(
    base: RunConfig,
    space: list[Parameter],
    trials: int | None = 12,
    timeout_s: float | None = None,
    storage: str | None = None,
    study_name: str = "plantlib",
    cv_folds: int = 0,
    metric: str = "accuracy",
    out_dir: Path | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> TuneResult:
    """Run (or continue) Optuna study `study_name` for `trials` more trials; the best config as a config.json.

    The metric is the validation accuracy (or loss) of the epoch a trial's best.pt holds, or with `cv_folds` the
    pooled out-of-fold one. Several processes calling this with the same storage and study name share the work.
    The best value is optimistic (see `TuneResult`); `confirm_best` checks the best config on fresh folds.
    """
    if metric not in METRICS:
        raise ConfigError(f"metric={metric!r} is not allowed; choose one of: {', '.join(METRICS)}")
    if cv_folds == 1 or cv_folds < 0:
        raise ConfigError(f"cv_folds={cv_folds} is not allowed; use 0 (single runs) or 2 or more folds")
    out = StudyDir.create(out_dir or artifacts_dir() / "tune" / study_name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(storage, study_name, metric, base.effective_split_seed, pruner)
    params = {"trials": trials, "cv_folds": cv_folds, "metric": metric}
    tags = {"best_value": "optimistic: the best trial was selected on the same images it was measured on"}
    with ParentRun(base, f"study-{study_name}", params, tags) as group:
        objective = _objective(base, space, metric, cv_folds, out.trials_dir, group.run_id)
        study.optimize(objective, n_trials=trials, timeout=timeout_s, catch=(PlantlibError,))
        finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not finished:
            raise PlantlibError(f"study {study_name} has no finished trial yet; run more trials")
        best = study.best_trial
        best_file = out.write_best_config(base.replace(**best.params, output_dir=None))
        group.log_file(best_file)
        group.log_metrics({f"best_{metric}": float(best.value)})
    scored_on = "cross-validation folds" if cv_folds else "validation images"
    return TuneResult(
        study_name,
        float(best.value),
        dict(best.params),
        best_file,
        len(study.trials),
        metric=metric,
        finished=len(finished),
        scored_on=scored_on,
    )


# ------------------------------------------------------------------------------------------ what a study shows


IMPORTANCE_MIN_TRIALS = 10  # fewer finished trials than this, and parameter importances are noise: none are drawn
# The colour map of the parallel-coordinates plot and the part of it used: every trial's line keeps a contrast
# of 3:1 or more against the white background (WCAG's minimum for graphics), the worst trial's too.
PARALLEL_COLOURS = ("viridis", 0.0, 0.6)


@dataclass(frozen=True)
class StudyOverview:
    """How many trials a study holds in each state, and how many images scored its best trial."""

    complete: int
    pruned: int
    failed: int
    running: int
    scored_images: int | None  # the best trial's validation images (or its CV pool); None when unknown


def study_overview(storage: str | None, study_name: str) -> StudyOverview:
    """Count the study's trials by state; read the best trial's run (or CV) directory for its number of images."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    states = [trial.state for trial in study.trials]
    count = {state: states.count(state) for state in optuna.trial.TrialState}
    scored = None
    if count[optuna.trial.TrialState.COMPLETE]:
        attrs = study.best_trial.user_attrs
        if "run_dir" in attrs and RunDir(Path(attrs["run_dir"])).info_file.is_file():
            scored = RunDir(Path(attrs["run_dir"])).read_info().get("sizes", {}).get("val")
        elif "cv_dir" in attrs and is_cv_dir(attrs["cv_dir"]):
            scored = read_cv_info(attrs["cv_dir"]).get("pool_size")
    return StudyOverview(
        count[optuna.trial.TrialState.COMPLETE],
        count[optuna.trial.TrialState.PRUNED],
        count[optuna.trial.TrialState.FAIL],
        count[optuna.trial.TrialState.RUNNING],
        scored,
    )


def best_value_line(result: TuneResult, overview: StudyOverview) -> str:
    """The best value with what it rests on: "0.950 validation accuracy on 60 images (95% CI 0.861–0.990 for a
    single trial; as the best of 3 it is optimistic)"."""
    images = overview.scored_images
    what = "pooled out-of-fold" if result.scored_on != "validation images" else "validation"
    line = f"{result.best_value:.3f} {what} {result.metric}" + (f" on {images} images" if images else "")
    if result.metric == "accuracy" and images:
        low, high = proportion_ci(round(result.best_value * images), images)
        line += f" (95% CI {low:.3f}–{high:.3f} for a single trial; as the best of {result.finished} it is optimistic)"
    else:
        line += f" (the best of {result.finished}: optimistic)"
    return line


def study_limits(overview: StudyOverview, scored_on: str = "validation images") -> list[str]:
    """What a study of this size can and cannot say, in sentences for the page that shows it."""
    finished, images = overview.complete, overview.scored_images
    note = optimism_note(finished, scored_on)
    lines = [
        f"{note[0].upper()}{note[1:]}"
        + (f" ({images} of them)" if images else "")
        + ", so part of its lead is the luck of those images and of one training run: it overstates what the config"
        " does on new images."
    ]
    if finished < IMPORTANCE_MIN_TRIALS:
        lines.append(
            f"{finished} finished trial{'s' * (finished != 1)} can show that the search runs and which settings fail "
            "outright; they cannot rank hyperparameters or say by how much the best config beats another. Parameter "
            f"importances need {IMPORTANCE_MIN_TRIALS} or more finished trials, so none are drawn."
        )
    else:
        lines.append("Parameter importances describe these trials (which parameters moved the score here), not a law.")
    return lines


def study_figures(storage: str | None, study_name: str) -> dict[str, Any]:
    """Static (matplotlib) figures of a study: optimisation history, parameter importances (from
    `IMPORTANCE_MIN_TRIALS` finished trials on), parallel coordinates with every trial visible."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    finished = sum(trial.state == optuna.trial.TrialState.COMPLETE for trial in study.trials)
    drawings = [("history", optuna_plots.plot_optimization_history)]
    if finished >= IMPORTANCE_MIN_TRIALS:
        drawings.append(("importances", optuna_plots.plot_param_importances))
    drawings.append(("parallel", optuna_plots.plot_parallel_coordinate))
    figures: dict[str, Any] = {}
    for name, draw in drawings:
        try:
            with plt.style.context("default"), warnings.catch_warnings():  # optuna sets ggplot for good: not past here
                warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # stable enough
                warnings.filterwarnings("ignore", message="Attempting to set identical low and high ylims")  # constant
                axes = draw(study)
        except (ValueError, RuntimeError) as error:  # e.g. nothing finished yet
            from plantlib.evaluation.plots import message_figure

            figures[name] = message_figure(f"{name}: {error}")
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        if name == "parallel":
            _recolour_parallel(axes)
        figure.set_size_inches(11, 5)
        figures[name] = figure
    return figures


def _recolour_parallel(axes: Any) -> None:
    """Optuna colours trials with Blues on a grey background, which fades the worst one to near-white: use the
    darker part of viridis and thicker lines on white, the best trial still the darkest."""
    import matplotlib
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap

    name, low, high = PARALLEL_COLOURS
    for lines in [c for c in axes.collections if isinstance(c, LineCollection)]:
        stops = np.linspace(low, high, 256)
        best_low = lines.get_cmap().name.endswith("_r")  # optuna reverses Blues when lower values are better
        lines.set_cmap(ListedColormap(matplotlib.colormaps[name](stops if best_low else stops[::-1])))
        lines.set_linewidth(2.0)
        if lines.colorbar is not None:
            lines.colorbar.update_normal(lines)
    axes.set_facecolor("white")


def trials_frame(storage: str | None, study_name: str) -> Any:
    """The study's trials as a DataFrame: trial, state, value, parameters, seconds (wall-clock)."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration"))
    frame.columns = [c.removeprefix("params_") for c in frame.columns]
    frame = frame.rename(columns={"number": "trial"})
    if "state" in frame.columns:
        frame["state"] = frame["state"].astype(str).str.lower()
    if "duration" in frame.columns:
        frame["seconds"] = frame.pop("duration").dt.total_seconds().round(1)
    return frame
