"""Architectures from params: the course's reference models exactly, every switch, the layer
table and the `summary --explain` formulas checked against Keras."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from stages.config import ACTIVATIONS, parse_params
from tests.conftest import REPO_ROOT, run_cnnlab
from tests.training_data import meta_record

pytestmark = pytest.mark.tf

# examples/ file -> (input shape from meta.json, classes, parameters the course or docs/ list,
# of which non-trainable: BatchNormalization's moving means and variances)
REFERENCE = {
    "mnist_cnn": ((28, 28, 1), 10, 166_986, 0),
    "mnist_cnn_same": ((28, 28, 1), 10, 220_234, 0),
    "cifar10_tutorial": ((32, 32, 3), 10, 122_570, 0),
    "cifar10_small": ((32, 32, 3), 10, 528_054, 0),
    "mnist_mlp": ((28, 28, 1), 10, 669_706, 0),
    "fashion_mnist_93": ((28, 28, 1), 10, 175_354, 1_008),
}


def example_params(name: str):
    raw = yaml.safe_load((REPO_ROOT / "examples" / f"{name}.yaml").read_text())
    return parse_params({key: raw[key] for key in ("seed", "model", "train")})


def build(model: dict, shape=(8, 8, 1), num_classes=3):
    from stages.models import build_model

    return build_model(parse_params({"model": model}).model, shape, num_classes)


def layer_types(model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_architectures_have_the_course_parameter_counts(name):
    from stages.models import build_model, parameter_totals

    shape, classes, expected, non_trainable = REFERENCE[name]
    model = build_model(example_params(name).model, shape, classes)
    assert parameter_totals(model) == {"total_params": expected, "trainable_params": expected - non_trainable,
                                       "non_trainable_params": non_trainable}


def test_mnist_cnn_layer_table_matches_the_course_summary():
    from stages.models import build_model, layer_table

    rows = layer_table(build_model(example_params("mnist_cnn").model, (28, 28, 1), 10))
    assert [(row["type"], row["output_shape"], row["params"]) for row in rows] == [
        ("Conv2D", [None, 26, 26, 32], 320), ("MaxPooling2D", [None, 13, 13, 32], 0),
        ("Conv2D", [None, 11, 11, 64], 18496), ("MaxPooling2D", [None, 6, 6, 64], 0),
        ("Flatten", [None, 2304], 0), ("Dense", [None, 64], 147520), ("Dense", [None, 10], 650),
    ]
    assert set(rows[0]) == {"name", "type", "output_shape", "params", "trainable"}
    json.dumps(rows)  # summary.json stores it as is


def test_cifar10_small_has_dropout_after_the_last_conv_block_only():
    from stages.models import build_model

    model = build_model(example_params("cifar10_small").model, (32, 32, 3), 10)
    assert layer_types(model)[1:] == [
        "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Dropout",
        "Flatten", "Dense", "Dropout", "Dense"]
    assert model.get_layer("conv3_dropout").rate == 0.3 and model.get_layer("dense1_dropout").rate == 0.4


def test_linear_is_the_classification_layer_alone():
    model = build({"architecture": "linear", "dense_units": [64]}, shape=(28, 28, 1), num_classes=10)
    assert layer_types(model)[1:] == ["Flatten", "Dense"]
    assert model.count_params() == 10 * (784 + 1)


def test_mlp_has_hidden_dense_layers_and_no_convolutions():
    model = build({"architecture": "mlp", "dense_units": [16, 8], "dense_dropout": [0.1, 0.0]})
    assert layer_types(model)[1:] == ["Flatten", "Dense", "Dropout", "Dense", "Dense"]


def test_two_classes_get_one_sigmoid_unit():
    model = build({"architecture": "mlp"}, num_classes=2)
    classifier = model.get_layer("classifier")
    assert classifier.units == 1 and classifier.activation.__name__ == "sigmoid"
    assert build({"architecture": "mlp"}).get_layer("classifier").activation.__name__ == "softmax"


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_hidden_activation(name):
    model = build({"activation": name, "conv_filters": [4], "dense_units": [4]})
    assert model.get_layer("conv1").activation.__name__ == name
    assert model.get_layer("dense1").activation.__name__ == name


def test_batch_norm_goes_between_each_hidden_layer_and_its_activation():
    model = build({"batch_norm": True, "conv_filters": [4, 8], "dense_units": [16]})
    assert layer_types(model)[1:5] == ["Conv2D", "BatchNormalization", "Activation", "MaxPooling2D"]
    assert model.get_layer("conv1").activation.__name__ == "linear"
    assert model.get_layer("dense1_bn") and model.get_layer("dense1_act").activation.__name__ == "relu"
    assert len(model.non_trainable_weights) == 2 * 3  # moving mean and variance of 3 BN layers


def test_conv_and_dense_dropout_rates_are_separate():
    model = build({"conv_filters": [4, 8], "conv_dropout": 0.2, "dense_dropout": 0.5})
    assert model.get_layer("conv1_dropout").rate == 0.2 and model.get_layer("conv2_dropout").rate == 0.2
    assert model.get_layer("dense1_dropout").rate == 0.5
    assert "Dropout" not in layer_types(build({"conv_dropout": 0, "dense_dropout": 0}))


def test_l1_l2_penalties_and_max_norm_reach_every_kernel():
    import keras

    model = build({"l1": 0.001, "l2": 0.01, "max_norm": 3.0, "conv_filters": [4], "dense_units": [8]})
    for name in ("conv1", "dense1", "classifier"):
        layer = model.get_layer(name)
        assert isinstance(layer.kernel_regularizer, keras.regularizers.L1L2)
        assert layer.kernel_regularizer.l2 == pytest.approx(0.01)
        assert isinstance(layer.kernel_constraint, keras.constraints.MaxNorm)
    assert len(model.losses) == 3  # one penalty per kernel, added to the loss
    plain = build({"conv_filters": [4], "dense_units": [8]})
    assert plain.get_layer("conv1").kernel_regularizer is None and not plain.losses


def test_pooling_kinds_strides_and_global_average_pooling():
    model = build({"conv_filters": [4, 8, 8], "pooling": ["average", "none", "max"], "strides": [1, 2, 1],
                   "pool_size": [2, 2, 3], "pool_padding": "same", "global_pooling": True},
                  shape=(16, 16, 1))
    assert layer_types(model)[1:6] == ["Conv2D", "AveragePooling2D", "Conv2D", "Conv2D", "MaxPooling2D"]
    assert model.get_layer("conv2").output.shape[1:3] == (4, 4)   # 8x8 at stride 2
    assert model.get_layer("pool3").output.shape[1:3] == (2, 2)   # ceil(4 / 3)
    assert model.get_layer("global_pool").output.shape == (None, 8)


def test_residual_blocks_add_the_input_projected_only_when_the_shape_changes():
    model = build({"conv_filters": [8, 8, 16], "strides": [2, 1, 2], "pooling": "none", "batch_norm": True,
                   "residual": True, "global_pooling": True, "dense_units": []}, shape=(16, 16, 1))
    names = [layer.name for layer in model.layers]
    assert names[1:4] == ["conv1", "conv1_bn", "conv1_act"]  # the stem: one plain convolution
    assert "conv2_project" not in names  # 8 -> 8 filters at stride 1: the input is added as it is
    assert model.get_layer("conv2_add").input[0].name == model.get_layer("conv1_act").output.name
    assert model.get_layer("conv3_project").strides == (2, 2) and model.get_layer("conv3a").strides == (2, 2)
    assert model.get_layer("conv3_act").output.shape == (None, 4, 4, 16)
    assert layer_types(model).count("Add") == 2 and layer_types(model)[-2:] == ["GlobalAveragePooling2D", "Dense"]


def test_separable_convolutions_replace_every_convolution_after_the_stem():
    model = build({"conv_filters": [8, 16, 16], "batch_norm": True, "separable": True}, shape=(16, 16, 1))
    assert [type(model.get_layer(f"conv{index}")).__name__ for index in (1, 2, 3)] == [
        "Conv2D", "SeparableConv2D", "SeparableConv2D"]
    # 3x3 depthwise + 1x1 pointwise: 3*3*8 + 8*16 + 16 weights instead of 3*3*8*16 + 16
    assert model.get_layer("conv2").count_params() == 3 * 3 * 8 + 8 * 16 + 16


EXPLAIN_CASES = {
    "batch norm, strides, same padding with odd sides": {
        "conv_filters": [6, 10], "kernel_size": [2, 5], "strides": [2, 3], "padding": "same",
        "pool_padding": ["valid", "same"], "pool_size": [3, 2], "batch_norm": True},
    "valid padding, average pooling, global pooling": {
        "conv_filters": [4, 4], "padding": "valid", "pooling": "average", "global_pooling": True},
    "mlp without dense layers": {"architecture": "mlp", "dense_units": []},
    "residual and separable blocks after a strided stem": {
        "conv_filters": [8, 8, 12], "strides": [2, 1, 2], "pooling": ["none", "max", "none"],
        "batch_norm": True, "residual": True, "separable": True, "global_pooling": True},
}


@pytest.mark.parametrize("model", EXPLAIN_CASES.values(), ids=EXPLAIN_CASES.keys())
def test_explained_formulas_agree_with_keras(model):
    from stages.summary import explain_layer

    built = build(model, shape=(29, 23, 3))
    explained = [explain_layer(layer) for layer in built.layers[1:]]
    assert all(row["agrees"] is True for row in explained), explained


@pytest.mark.parametrize("name", REFERENCE)
def test_explained_formulas_agree_for_the_reference_models(name):
    from stages.models import build_model
    from stages.summary import explain_layer

    shape, classes, *_ = REFERENCE[name]
    built = build_model(example_params(name).model, shape, classes)
    assert all(explain_layer(layer)["agrees"] for layer in built.layers[1:])


def test_explain_shows_the_course_formulas():
    from stages.summary import explain_layer

    built = build({"conv_filters": [32], "padding": "valid", "dense_units": [64], "pool_padding": "valid"},
                  shape=(28, 28, 1), num_classes=10)
    conv = explain_layer(built.get_layer("conv1"))
    assert conv["shape_formula"] == "(W − F + 2P)/S + 1 = (28 − 3 + 0)/1 + 1 = 26"
    assert conv["params_formula"] == "filters × (k × k × C_in) + filters = 32 × (3 × 3 × 1) + 32 = 320"
    dense = explain_layer(built.get_layer("dense1"))
    assert dense["params_formula"] == "units × (inputs + 1) = 64 × (5,408 + 1) = 346,176"


def test_cnnlab_summary_prints_the_table_and_the_explained_formulas(tmp_path: Path, cnnlab_in_process):
    raw = yaml.safe_load((REPO_ROOT / "examples" / "mnist_cnn.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": raw["model"], "train": raw["train"]}))
    prepared = tmp_path / "data" / "prepared"
    prepared.mkdir(parents=True)  # summary needs only the shapes in meta.json
    (prepared / "meta.json").write_text(json.dumps(meta_record(list("0123456789"), [28, 28, 1])))

    plain = cnnlab_in_process("summary", cwd=tmp_path).stdout
    assert "147,520" in plain and "Total params:" in plain and "166,986" in plain
    explained = cnnlab_in_process("summary", "--explain", cwd=tmp_path).stdout
    assert "(W − F + 2P)/S + 1 = (28 − 3 + 0)/1 + 1 = 26" in explained
    assert "units × (inputs + 1) = 64 × (2,304 + 1) = 147,520" in explained
    assert explained.count("✓ agrees with Keras") == 7 and "✗" not in explained


def test_cnnlab_summary_without_prepared_data_says_what_to_run(tmp_path: Path):
    (tmp_path / "params.yaml").write_text("{}\n")
    result = run_cnnlab("summary", cwd=tmp_path)
    assert result.returncode == 2
    assert "prepared metadata not found" in result.stderr and "Traceback" not in result.stderr
