"""params.yaml validation: every bad value is one clear line naming key, expectation and value."""

from __future__ import annotations

import pytest

from stages.config import Params, describe_params, load_params, params_table_markdown, parse_params
from stages.errors import ConfigError
from tests.conftest import REPO_ROOT


def test_repository_params_are_valid_and_match_the_declared_defaults():
    assert load_params(REPO_ROOT / "params.yaml") == Params()


def test_empty_params_take_every_default():
    params = parse_params({})
    assert params.train.optimizer == "adam"
    assert params.model.conv_filters == (32, 64)


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        ({"train": {"optimizer": "adamm"}}, ["'train.optimizer'", "one of 'sgd', 'momentum', 'nesterov', 'rmsprop', 'adam', 'adamw', 'nadam'", "'adamm'"]),
        ({"train": {"epochs": -1}}, ["'train.epochs'", "an integer in [1, 10000]", "-1"]),
        ({"train": {"epochs": 2.5}}, ["'train.epochs'", "an integer", "2.5"]),
        ({"train": {"batch_size": True}}, ["'train.batch_size'", "True"]),
        ({"train": {"learning_rate": "fast"}}, ["'train.learning_rate'", "a number", "'fast'"]),
        ({"model": {"conv_filters": [32, 0]}}, ["'model.conv_filters'", "a list", "[32, 0]"]),
        ({"prepare": {"dataset": "imagenet"}}, ["'prepare.dataset'", "'digits'", "'imagenet'"]),
        ({"prepare": {"val_split": 0.5, "test_split": 0.5}}, ["'prepare.val_split'", "< 0.9"]),
        ({"train": "adam"}, ["'train.'", "a mapping"]),
    ],
)
def test_bad_values_name_the_key_the_expectation_and_the_value(raw, fragments):
    with pytest.raises(ConfigError) as caught:
        parse_params(raw)
    message = str(caught.value)
    assert "\n" not in message
    assert "-S " in message  # says how to fix it
    for fragment in fragments:
        assert fragment in message


def test_unknown_key_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key 'train.optimzer'; did you mean 'train.optimizer'"):
        parse_params({"train": {"optimzer": "adam"}})


def test_unknown_group_is_rejected():
    with pytest.raises(ConfigError, match=r"unknown key 'trian'"):
        parse_params({"trian": {}})


def test_yaml_off_is_read_as_the_off_mode():
    # `dvc exp run -S augment.mode=off` reaches us as YAML false.
    assert parse_params({"augment": {"mode": False}}).augment.mode == "off"


def test_lists_become_tuples_so_configs_stay_frozen():
    params = parse_params({"model": {"dense_units": [128, 64]}})
    assert params.model.dense_units == (128, 64)
    with pytest.raises(AttributeError):
        params.model.dense_units = (1,)  # type: ignore[misc]


def test_unreadable_yaml_and_missing_file_are_config_errors(tmp_path):
    broken = tmp_path / "params.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_params(broken)
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")


def test_readme_params_table_matches_the_declarations():
    keys = [row[0] for row in describe_params()]
    assert "train.optimizer" in keys and "seed" in keys
    assert len(keys) == len(set(keys))
    reference = (REPO_ROOT / "docs" / "params.md").read_text()
    assert params_table_markdown() in reference, "docs/params.md's table is stale: run `make params-table`"
