from pathlib import Path

import pytest

from plantlib.config import RunConfig
from plantlib.errors import ConfigError


def test_defaults_are_valid_and_round_trip_through_json(tmp_path: Path) -> None:
    config = RunConfig(epochs=3, data_dir="somewhere", grad_clip=1)
    config.to_json(tmp_path / "config.json")
    again = RunConfig.from_json(tmp_path / "config.json")
    assert again == config
    assert again.grad_clip == 1.0 and isinstance(again.grad_clip, float)


def test_unknown_field_suggests_the_closest_name() -> None:
    with pytest.raises(ConfigError, match=r"'epoch' \(did you mean 'epochs'\?\)"):
        RunConfig.from_dict({"epoch": 3})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": -1}, r"epochs=-1 is not allowed; use 1 or more"),
        ({"batch_size": 0}, r"batch_size=0 is not allowed"),
        ({"optimizer": "adagrad"}, r"optimizer='adagrad' .*adam, adamw, sgd"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, r"val_fraction \+ test_fraction=1.1"),
        ({"epochs": "10"}, r"epochs='10' has type str; expected int"),
        ({"pretrained": 1}, r"pretrained=1 has type int; expected bool"),
    ],
)
def test_bad_values_name_the_field_and_the_fix(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig(**changes)


def test_replace_validates_again() -> None:
    with pytest.raises(ConfigError, match="scheduler"):
        RunConfig().replace(scheduler="linear")
