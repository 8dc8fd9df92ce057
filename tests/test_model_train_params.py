"""The `model` and `train` params: every switch accepted, every bad value one clear line (no TF)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stages.config import (
    ACTIVATIONS, ARCHITECTURES, LOSSES, OPTIMIZERS, SCHEDULES, ConfigError, parse_params, per_block, read_yaml,
)
from tests.conftest import REPO_ROOT, run_cnnlab, write_params

EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))


def parse(**groups):
    return parse_params(groups)


NAMED_CHOICES = [("model", "activation", ACTIVATIONS), ("train", "optimizer", OPTIMIZERS),
                 ("train", "schedule", SCHEDULES), ("train", "loss", LOSSES)]


@pytest.mark.parametrize(("group", "key", "name"),
                         [(group, key, name) for group, key, names in NAMED_CHOICES for name in names])
def test_every_named_choice_is_accepted(group, key, name):
    companions = {"one_cycle": {"warmup_epochs": 1}}.get(name, {})  # the rising half of the cycle
    assert getattr(getattr(parse(**{group: {key: name, **companions}}), group), key) == name


def test_one_cycle_without_warm_up_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"'train.warmup_epochs' must be at least 1 when train.schedule is "
                                          r"'one_cycle'.*got 0"):
        parse(train={"schedule": "one_cycle"})


def test_residual_blocks_need_batch_norm_and_same_padding():
    with pytest.raises(ConfigError, match="'model.batch_norm' must be true when model.residual is true"):
        parse(model={"residual": True})
    with pytest.raises(ConfigError, match="'model.padding' must be 'same' for every block after the first"):
        parse(model={"residual": True, "batch_norm": True, "conv_filters": [8, 8], "padding": ["valid", "valid"]})
    assert parse(model={"residual": True, "batch_norm": True, "padding": ["valid", "same"]}).model.residual


def test_every_architecture_is_accepted():
    for name in ARCHITECTURES:
        model = {"architecture": name, "base_model": "mobilenet_v2" if name == "transfer" else None}
        assert parse(model=model).model.architecture == name


def test_per_block_values_take_one_value_or_one_per_block():
    model = parse(model={"conv_filters": [8, 16, 32], "pooling": ["max", "average", "none"],
                         "kernel_size": 5, "conv_dropout": [0, 0, 0.3]}).model
    assert model.pooling == ("max", "average", "none")
    assert per_block(model.kernel_size, 3) == (5, 5, 5)
    assert per_block(model.conv_dropout, 3) == (0.0, 0.0, 0.3)


def test_base_weights_null_means_none_and_a_weights_file_is_accepted():
    assert parse(model={"base_weights": None}).model.base_weights == "none"
    assert parse(model={"base_weights": "weights/mobilenet.h5"}).model.base_weights == "weights/mobilenet.h5"


@pytest.mark.parametrize(("groups", "key"), [
    ({"model": {"architecture": "resnet"}}, "model.architecture"),
    ({"model": {"activation": "swish"}}, "model.activation"),
    ({"model": {"pooling": "min"}}, "model.pooling"),
    ({"model": {"conv_filters": [8, 16], "pooling": ["max"]}}, "model.pooling"),
    ({"model": {"conv_filters": [8, 16], "kernel_size": [3, 3, 3]}}, "model.kernel_size"),
    ({"model": {"dense_units": [32], "dense_dropout": [0.1, 0.2]}}, "model.dense_dropout"),
    ({"model": {"conv_dropout": 1.0}}, "model.conv_dropout"),
    ({"model": {"l2": -0.1}}, "model.l2"),
    ({"model": {"max_norm": 0}}, "model.max_norm"),
    ({"model": {"batch_norm": "yes"}}, "model.batch_norm"),
    ({"model": {"architecture": "transfer"}}, "model.base_model"),
    ({"model": {"base_model": "vgg16"}}, "model.base_model"),
    ({"model": {"base_weights": "weights.bin"}}, "model.base_weights"),
    ({"model": {"base_image_size": 16}}, "model.base_image_size"),
    ({"train": {"optimizer": "adagrad"}}, "train.optimizer"),
    ({"train": {"schedule": "cyclic"}}, "train.schedule"),
    ({"train": {"learning_rate": 0}}, "train.learning_rate"),
    ({"train": {"decay_rate": 1.5}}, "train.decay_rate"),
    ({"train": {"warmup_epochs": 2}}, "train.warmup_epochs"),
    ({"train": {"schedule": "cosine", "warmup_epochs": 30, "epochs": 30}}, "train.warmup_epochs"),
    ({"train": {"min_learning_rate": 0.01, "learning_rate": 0.001}}, "train.min_learning_rate"),
    ({"train": {"clip_norm": 1.0, "clip_value": 0.5}}, "train.clip_value"),
    ({"train": {"loss": "sparse_categorical", "label_smoothing": 0.1}}, "train.label_smoothing"),
    ({"train": {"loss": "hinge"}}, "train.loss"),
    ({"train": {"monitor": "val_f1"}}, "train.monitor"),
    ({"train": {"patience": 0}}, "train.patience"),
    ({"train": {"precision": "float64"}}, "train.precision"),
    ({"train": {"fine_tune_epochs": 3}}, "train.fine_tune_epochs"),
    ({"model": {"architecture": "transfer", "base_model": "mobilenet_v2"}, "train": {"fine_tune_epochs": 3}},
     "train.fine_tune_epochs"),
])
def test_bad_values_are_one_line_naming_the_key(groups, key):
    with pytest.raises(ConfigError) as error:
        parse_params(groups)
    message = str(error.value)
    assert "\n" not in message
    assert f"'{key}' must be" in message


def test_cli_rejects_a_bad_value_with_one_line_and_exit_code_2(tmp_path: Path):
    write_params(tmp_path, {"train": {"optimizer": "adamax"}})
    result = run_cnnlab("check", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "'train.optimizer' must be one of" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_example_model_and_train_groups_are_valid(path: Path):
    # The prepare group names datasets other branches add; model and train are ours.
    raw = read_yaml(path.read_text())  # as DVC and cnnlab read it (YAML 1.2)
    params = parse_params({key: raw[key] for key in ("seed", "model", "train") if key in raw}, str(path))
    assert params.model.architecture in ARCHITECTURES


def test_project_params_file_is_valid():
    params = parse_params(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))
    assert params.train.precision == "float32"  # committed reports reproduce on any CPU
