"""One validated configuration object for a run.

Notebook parameters, CLI flags and `config.json` all map onto `RunConfig`, so a wrong name or value fails at
once with a message naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from plantlib.errors import ConfigError
from plantlib.io import write_json

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("cosine", "step", "plateau", "onecycle", "none")
FINETUNE_MODES = ("full", "head", "two_stage")
MONITORS = ("val_loss", "val_accuracy")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TRACKING_MODES = ("auto", "on", "off")
ENGINES = ("auto", "torch", "openvino")  # inference runtimes, see plantlib.inference.engine
CONFIG_EXAMPLE = '{"epochs": 3}'
CONFIG_SHAPE = f"a config file must hold one object mapping field names to values, e.g. {CONFIG_EXAMPLE}"
# Fields of earlier versions that config.json files may still hold; read and dropped without a word.
# tracking_parent: the MLflow run a run is nested under is context, passed to `tracking_callbacks`.
LEGACY_FIELDS = ("tracking_parent",)
# The fields that decide which images a run sees and how they are split (`plantlib scan` takes these).
DATA_FIELDS = (
    "split_seed",
    "data_dir",
    "split_file",
    "new_split",
    "val_fraction",
    "test_fraction",
    "near_duplicate_distance",
    "label_overrides",
    "seed",
)


RECIPE = "recipe"  # decides the result: data, split, model, schedule, augmentation, seeds
EXECUTION = "execution"  # decides how and where it runs: device, precision, workers, memory, output, tracking


def option(default: Any, help: str, role: str = RECIPE) -> Any:
    """A config field with a help text (used by the CLI's --help) and its role: recipe or execution."""
    return field(default=default, metadata={"help": help, "role": role})


@dataclass
class RunConfig:
    """Everything that decides the outcome of a run; saved as `config.json` in its run directory.

    The recipe's fields come first, then the execution fields (`option(..., role=EXECUTION)`).
    """

    # recipe: data
    data_dir: str | None = option(None, "folder with one sub-folder per class; None: the built-in dataset")
    split_file: str | None = option(None, "split CSV to use; None: data/splits/<dataset>-seed<seed>-....csv")
    new_split: bool = option(False, "make a fresh split even when a split file exists")
    val_fraction: float = option(0.15, "share of each class held out for validation")
    test_fraction: float = option(0.15, "share of each class held out for the final test")
    near_duplicate_distance: int = option(6, "max Hamming distance of 64-bit perceptual hashes that groups images")
    label_overrides: str | None = option(
        None,
        "CSV of label fixes (path,label; label 'exclude' leaves the image out; images are never moved); "
        "None: label_overrides.csv beside the data folder when it exists; '': none",
    )
    image_size: int = option(224, "side of the square input images in pixels")
    # recipe: model
    backbone: str = option(
        "efficientnet_lite0", "pretrained feature extractor (see `plantlib.models.backbones.backbone_names()`)"
    )
    pretrained: bool = option(True, "start from ImageNet weights")
    head: str = option("mlp", "'mlp': Dropout-512-BN-128-BN head; 'linear': one Linear layer")
    dropout: float = option(0.5, "dropout before the head's first layer")
    # recipe: training
    finetune: str = option("full", "'full', 'head' (frozen backbone) or 'two_stage' (head first, then everything)")
    head_epochs: int = option(2, "epochs of the head-only stage when finetune='two_stage'")
    freeze_bn: bool = option(
        True, "keep the backbone's BatchNorm statistics fixed while fine-tuning (fused into the convolutions)"
    )
    frozen_blocks: int | None = option(
        None,
        "leading backbone blocks (the stem counts as one) kept frozen; 0: train all; "
        "None: the backbone's default (EfficientNet-Lite: stem + 5 blocks, torchvision backbones: 0)",
    )
    epochs: int = option(6, "passes over the training set")
    batch_size: int = option(32, "images per training step")
    optimizer: str = option("adam", "'adam', 'adamw' or 'sgd'")
    learning_rate: float = option(1e-3, "learning rate of the head")
    backbone_lr_factor: float = option(0.1, "backbone learning rate = learning_rate * this")
    weight_decay: float = option(0.0, "L2 penalty (decoupled for adamw)")
    momentum: float = option(0.9, "SGD momentum")
    scheduler: str = option("cosine", "'cosine', 'step', 'plateau', 'onecycle' or 'none'")
    warmup_epochs: int = option(0, "linear learning-rate warm-up (cosine and step schedules)")
    step_size: int = option(7, "StepLR period in epochs")
    gamma: float = option(0.1, "StepLR / plateau decay factor")
    label_smoothing: float = option(0.0, "cross-entropy label smoothing")
    mixup_alpha: float = option(0.0, "MixUp: blend image pairs and their labels, weight ~ Beta(α, α); 0: off")
    cutmix_alpha: float = option(0.0, "CutMix: paste a patch of another image, area ~ Beta(α, α); 0: off")
    mix_probability: float = option(1.0, "share of training batches mixed when MixUp or CutMix is on")
    grad_clip: float | None = option(None, "max gradient norm; None: no clipping")
    early_stopping_patience: int | None = option(
        5, "epochs without improvement before stopping; None: never stop early"
    )
    early_stopping_monitor: str = option("val_loss", "'val_loss' or 'val_accuracy'")
    early_stopping_min_delta: float = option(0.0, "smallest change that counts as an improvement")
    sync_bn: bool = option(False, "SyncBatchNorm across processes for BatchNorm layers that train (DDP on CUDA)")
    # recipe: seeds
    seed: int = option(42, "fixes initialisation, augmentation and batch order (and the split unless split_seed)")
    split_seed: int | None = option(None, "fixes the split and cross-validation folds; None: seed")
    # recipe: length of smoke runs and tests
    fast: bool = option(False, "smoke run: 1 epoch of 2 batches")
    max_batches: int | None = option(None, "cap on batches per epoch (tests, smoke runs)")
    # execution: device, processes, memory, output
    device: str = option("auto", "'auto', 'cpu', 'cuda[:N]' or 'mps'", role=EXECUTION)
    precision: str = option("auto", "'auto', 'fp32', 'bf16' or 'fp16' (autocast)", role=EXECUTION)
    num_workers: int | None = option(
        None,
        "DataLoader worker processes; None: 0 on the CPU (decoded images are cached), up to 8 with a GPU",
        role=EXECUTION,
    )
    dist_timeout_s: float = option(
        600.0, "seconds a distributed collective waits for the other processes before the job fails", role=EXECUTION
    )
    cache_memory_mb: float = option(
        1024.0,
        "memory for decoded images; beyond it they are kept in a temporary file in artifacts/cache",
        role=EXECUTION,
    )
    output_dir: str | None = option(None, "where run directories go; None: artifacts/runs", role=EXECUTION)
    # execution: tracking (plantlib.experiments.tracking) and notes
    tracking: str = option(
        "auto", "'auto' (MLflow when installed; $PLANTLIB_TRACKING may say on/off), 'on' or 'off'", role=EXECUTION
    )
    tracking_uri: str | None = option(
        None,
        "MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else the project's store artifacts/mlflow.db",
        role=EXECUTION,
    )
    experiment: str = option("plantlib", "MLflow experiment the run is recorded in", role=EXECUTION)
    extra: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "free-form notes recorded with the run", "role": EXECUTION}
    )

    def __post_init__(self) -> None:
        _check_types(self)
        _check_values(self)

    # serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: Path) -> None:
        write_json(Path(path), self.to_dict())

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build from a mapping; an unknown key is an error that suggests the closest valid name (a field of an
        earlier version, `LEGACY_FIELDS`, is dropped)."""
        if not isinstance(values, dict):
            raise ConfigError(
                f"a config is one mapping of field names to values, e.g. {CONFIG_EXAMPLE}; "
                f"got a {type(values).__name__}"
            )
        values = {name: value for name, value in values.items() if name not in LEGACY_FIELDS}
        check_known_names(values)
        return cls(**values)

    @classmethod
    def from_json(cls, path: Path) -> RunConfig:
        """A config file (JSON; YAML when it ends in .yaml or .yml), read by `read_config_file`."""
        return cls.from_dict(read_config_file(path))

    def recipe(self) -> dict[str, Any]:
        """The fields that decide the result (what comparisons name and content keys hash)."""
        return {name: value for name, value in self.to_dict().items() if name in RECIPE_FIELDS}

    def execution(self) -> dict[str, Any]:
        """The fields that decide how and where the run executes, not what it learns."""
        return {name: value for name, value in self.to_dict().items() if name not in RECIPE_FIELDS}

    @property
    def effective_split_seed(self) -> int:
        """The seed of the split and folds: `split_seed`, or `seed` when it is not set."""
        return self.seed if self.split_seed is None else self.split_seed

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated again)."""
        check_known_names(changes)
        return dataclasses.replace(self, **changes)


def read_config_file(
    path: str | Path,
    syntax: str | None = None,
    expected: str = CONFIG_SHAPE,
    what: str = "config file",
    empty_ok: bool = False,
) -> dict[str, Any]:
    """The mapping a JSON or YAML file holds; anything else (a list, a number, a string, nothing) is an error
    that names the file, what it holds and the shape expected. `syntax` ("JSON" or "YAML") defaults to YAML
    for a name ending in .yaml or .yml and JSON otherwise; `empty_ok` reads an empty file as {}."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    syntax = syntax or ("YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {what} {path}: {error}") from error
    return parse_config_text(text, str(path), syntax, expected, empty_ok)


def parse_config_text(
    text: str, source: str, syntax: str = "JSON", expected: str = CONFIG_SHAPE, empty_ok: bool = False
) -> dict[str, Any]:
    """The mapping `text` holds in `syntax` ("JSON" or "YAML"); `source` names it in every message."""
    if not text.strip():
        if empty_ok:
            return {}
        raise ConfigError(f"{source} is empty; {expected}")
    if syntax == "YAML":
        import yaml

        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"{source} is not valid YAML: {error}") from error
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{source} is not valid JSON: {error}") from error
    if value is None and empty_ok:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source} holds {_describe(value, syntax)}; {expected}")
    odd = [key for key in value if not isinstance(key, str)]
    if odd:
        raise ConfigError(f"{source}: {odd[0]!r} is not a name (keys must be text); {expected}")
    return value


def _describe(value: Any, syntax: str) -> str:
    """What a parsed document holds, in the words of its syntax: 'a JSON list', 'YAML null'."""
    if value is None:
        return f"{syntax} null"
    if isinstance(value, bool):
        return f"{syntax} {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"a {syntax} number"
    if isinstance(value, str):
        return f"a {syntax} string"
    if isinstance(value, list):
        return f"a {syntax} list"
    return f"a {syntax} {type(value).__name__}"


def field_names() -> list[str]:
    return [f.name for f in fields(RunConfig)]


RECIPE_FIELDS = tuple(f.name for f in fields(RunConfig) if f.metadata["role"] == RECIPE)
EXECUTION_FIELDS = tuple(f.name for f in fields(RunConfig) if f.metadata["role"] == EXECUTION)


def check_known_names(values: dict[str, Any]) -> None:
    """Fail on names that are not config fields (papermill itself only warns on them)."""
    valid = field_names()
    unknown = [name for name in values if name not in valid]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, valid, n=1)
        hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise ConfigError(f"unknown config field {', '.join(hints)}; valid fields: {', '.join(valid)}")


def _allowed_types(annotation: Any) -> tuple[type, ...]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(annotation) for t in _allowed_types(arg))
    if origin is not None:
        return (origin,)
    return (type(None),) if annotation is type(None) else (annotation,)


def _check_types(config: RunConfig) -> None:
    hints = typing.get_type_hints(RunConfig)
    for item in fields(config):
        value = getattr(config, item.name)
        allowed = _allowed_types(hints[item.name])
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            setattr(config, item.name, float(value))
            continue
        if isinstance(value, Path) and str in allowed:
            setattr(config, item.name, str(value))
            continue
        is_bool = isinstance(value, bool)
        ok = any(isinstance(value, t) and (t is bool or not is_bool) for t in allowed)
        if not ok:
            names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
            raise ConfigError(f"{item.name}={value!r} has type {type(value).__name__}; expected {names}")


def _require(condition: bool, name: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"{name}={value!r} is not allowed; {allowed}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, name, value, f"choose one of: {', '.join(choices)}")


def _check_values(c: RunConfig) -> None:
    """Every value in its allowed range; the first bad one (choices, data, training, then the rest) is the error."""
    _check_choices(c)
    _check_data(c)
    _check_training(c)
    _check_run(c)


def _check_choices(c: RunConfig) -> None:
    from plantlib.models.backbones import HEADS, get_spec  # the registry and the heads live with the models

    get_spec(c.backbone)  # "unknown backbone 'x'; choose one of: ..."
    _check_choice("optimizer", c.optimizer, OPTIMIZERS)
    _check_choice("scheduler", c.scheduler, SCHEDULERS)
    _check_choice("head", c.head, HEADS)
    _check_choice("finetune", c.finetune, FINETUNE_MODES)
    _check_choice("early_stopping_monitor", c.early_stopping_monitor, MONITORS)
    _check_choice("device", c.device.split(":")[0], DEVICES)
    _check_choice("precision", c.precision, PRECISIONS)
    _check_choice("tracking", c.tracking, TRACKING_MODES)
    _require(bool(c.experiment.strip()), "experiment", c.experiment, "name an MLflow experiment, e.g. 'plantlib'")


def _check_data(c: RunConfig) -> None:
    for name in ("val_fraction", "test_fraction"):
        value = getattr(c, name)
        _require(0.0 < value < 1.0, name, value, "use a fraction between 0 and 1 (exclusive)")
    total = c.val_fraction + c.test_fraction
    _require(
        total < 1.0,
        "val_fraction + test_fraction",
        round(total, 6),
        "the two must add up to less than 1 so images are left to train on",
    )
    _require(
        0 <= c.near_duplicate_distance <= 32,
        "near_duplicate_distance",
        c.near_duplicate_distance,
        "use 0 (exact perceptual match) to 32",
    )
    _require(c.image_size >= 32, "image_size", c.image_size, "use 32 pixels or more (224 is the default)")


def _check_training(c: RunConfig) -> None:
    _require(c.epochs >= 1, "epochs", c.epochs, "use 1 or more")
    _require(c.head_epochs >= 0, "head_epochs", c.head_epochs, "use 0 or more")
    _require(
        c.frozen_blocks is None or c.frozen_blocks >= 0,
        "frozen_blocks",
        c.frozen_blocks,
        "use 0 (train every block) or more, or None",
    )
    _require(c.batch_size >= 1, "batch_size", c.batch_size, "use 1 or more")
    _require(c.learning_rate > 0, "learning_rate", c.learning_rate, "use a positive number such as 1e-3")
    _require(c.backbone_lr_factor > 0, "backbone_lr_factor", c.backbone_lr_factor, "use a positive number")
    _require(c.weight_decay >= 0, "weight_decay", c.weight_decay, "use 0 or more")
    _require(0 <= c.momentum < 1, "momentum", c.momentum, "use a value in [0, 1)")
    _require(0 <= c.dropout < 1, "dropout", c.dropout, "use a probability in [0, 1)")
    _require(c.warmup_epochs >= 0, "warmup_epochs", c.warmup_epochs, "use 0 or more")
    _require(c.step_size >= 1, "step_size", c.step_size, "use 1 or more")
    _require(0 < c.gamma <= 1, "gamma", c.gamma, "use a factor in (0, 1]")
    _require(0 <= c.label_smoothing < 1, "label_smoothing", c.label_smoothing, "use a value in [0, 1)")
    _require(c.mixup_alpha >= 0, "mixup_alpha", c.mixup_alpha, "use 0 (off) or a positive value such as 0.2")
    _require(c.cutmix_alpha >= 0, "cutmix_alpha", c.cutmix_alpha, "use 0 (off) or a positive value such as 1.0")
    _require(0 <= c.mix_probability <= 1, "mix_probability", c.mix_probability, "use a value in [0, 1]")
    _require(c.grad_clip is None or c.grad_clip > 0, "grad_clip", c.grad_clip, "use a positive norm or None")
    patience = c.early_stopping_patience
    _require(patience is None or patience >= 1, "early_stopping_patience", patience, "use 1 or more, or None")
    _require(
        c.early_stopping_min_delta >= 0,
        "early_stopping_min_delta",
        c.early_stopping_min_delta,
        "use 0 or more",
    )


def _check_run(c: RunConfig) -> None:
    """Execution, run length and seeds."""
    _require(c.num_workers is None or c.num_workers >= 0, "num_workers", c.num_workers, "use 0 or more, or None")
    _require(c.dist_timeout_s > 0, "dist_timeout_s", c.dist_timeout_s, "use a positive number of seconds")
    _require(c.cache_memory_mb >= 0, "cache_memory_mb", c.cache_memory_mb, "use 0 (all on disk) or more")
    _require(c.max_batches is None or c.max_batches >= 1, "max_batches", c.max_batches, "use 1 or more, or None")
    _require(c.seed >= 0, "seed", c.seed, "use a non-negative integer")
    _require(
        c.split_seed is None or c.split_seed >= 0, "split_seed", c.split_seed, "use a non-negative integer or None"
    )
