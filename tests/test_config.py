from dataclasses import fields
from pathlib import Path

import pytest

from plantlib.config import EXECUTION, RECIPE, RunConfig, field_names
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
        ({"near_duplicate_distance": 40}, r"near_duplicate_distance=40 is not allowed; use 0 .* to 32"),
        ({"num_workers": -1}, r"num_workers=-1 is not allowed; use 0 or more, or None"),
        ({"split_seed": -2}, r"split_seed=-2 is not allowed"),
        ({"epochs": 0, "seed": -1, "head": "conv"}, r"head='conv' is not allowed"),  # choices are checked first
        ({"epochs": 0, "num_workers": -1}, r"epochs=0 is not allowed"),  # then data, training, the rest
    ],
)
def test_bad_values_name_the_field_and_the_fix(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig(**changes)


def test_recipe_fields_come_first_and_execution_fields_last() -> None:
    """Field order is the order of config.json's keys and of the CLI's flags: what decides the result first."""
    roles = [item.metadata["role"] for item in fields(RunConfig)]
    assert set(roles) == {RECIPE, EXECUTION}
    assert roles == sorted(roles, key=[RECIPE, EXECUTION].index)
    recipe = [name for name, role in zip(field_names(), roles, strict=True) if role == RECIPE]
    assert {"seed", "split_seed", "fast", "max_batches", "sync_bn"} <= set(recipe)
    assert {"device", "output_dir", "tracking", "extra"}.isdisjoint(recipe)


def test_replace_validates_again() -> None:
    with pytest.raises(ConfigError, match="scheduler"):
        RunConfig().replace(scheduler="linear")


NOT_AN_OBJECT = [
    ("[1, 2]", "a JSON list"),
    ("null", "JSON null"),
    ("5", "a JSON number"),
    ('"abc"', "a JSON string"),
    ('["epochs"]', "a JSON list"),
]


@pytest.mark.parametrize(("text", "holds"), NOT_AN_OBJECT)
def test_a_config_file_that_is_not_an_object_names_the_file_and_the_shape(
    tmp_path: Path, text: str, holds: str
) -> None:
    file = tmp_path / "c.json"
    file.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_json(file)
    expected = 'a config file must hold one object mapping field names to values, e.g. {"epochs": 3}'
    assert str(caught.value) == f"{file} holds {holds}; {expected}"


def test_a_config_file_holding_an_object_is_read_as_json_or_yaml(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text('{"epochs": 3}', encoding="utf-8")
    (tmp_path / "c.yaml").write_text("epochs: 4\n", encoding="utf-8")
    assert RunConfig.from_json(tmp_path / "c.json").epochs == 3
    assert RunConfig.from_json(tmp_path / "c.yaml").epochs == 4
    with pytest.raises(ConfigError, match=r"c.yaml: 1 is not a name"):
        (tmp_path / "c.yaml").write_text("1: 2\n", encoding="utf-8")
        RunConfig.from_json(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="a config is one mapping"):
        RunConfig.from_dict(["epochs"])  # type: ignore[arg-type]
