"""train.class_weight (weights reach the loss as specified), the report's imbalance warning,
and train.ema (validation and the saved model use the averaged weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages.config import ConfigError, parse_params
from stages.optimization import LossChoice, class_weights
from stages.report import imbalance_warning, per_class_section

NAMES = ["cat", "dog", "owl"]
LABELS = np.array([0] * 8 + [1] * 2 + [2] * 2)


def weights_for(setting):
    return class_weights(parse_params({"train": {"class_weight": setting}}).train, LABELS, NAMES)


def test_class_weight_settings():
    assert weights_for("none") is None
    np.testing.assert_allclose(weights_for("balanced"), [12 / (3 * 8), 12 / (3 * 2), 12 / (3 * 2)])
    np.testing.assert_allclose(weights_for({"owl": 3.0, 1: 0.5}), [1.0, 0.5, 3.0])  # names or indices


@pytest.mark.parametrize("setting", [{"cow": 2.0}, {7: 2.0}])
def test_a_class_weight_for_an_unknown_class_is_one_line(setting):
    with pytest.raises(ConfigError) as error:
        weights_for(setting)
    message = str(error.value)
    assert "'train.class_weight' must be keyed by class names (cat, dog, owl) or indices 0-2" in message
    assert "\n" not in message


def test_report_warns_about_an_imbalanced_training_set_without_class_weights():
    summary = {"class_counts": {"cat": 60, "dog": 10, "owl": 30}, "params": {"train": {"class_weight": "none"}}}
    warning = imbalance_warning(summary, 3.0)
    assert "class cat has 60 images, class dog 10 (6.0 times fewer" in warning and "balanced" in warning
    assert imbalance_warning(summary, 6.0) is None
    assert imbalance_warning({**summary, "params": {"train": {"class_weight": "balanced"}}}, 3.0) is None
    import pandas as pd

    table = per_class_section(pd.DataFrame({"class": NAMES, "precision": [1.0] * 3, "recall": [1.0] * 3,
                                            "f1": [1.0] * 3, "support": [5, 6, 7]}), None, summary["class_counts"])
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]
    assert rows[0][-2:] == ["support", "train images"]
    assert [row[-2:] for row in rows[2:]] == [["5", "60"], ["6", "10"], ["7", "30"]]


@pytest.mark.tf
@pytest.mark.parametrize("label_format", ["one_hot", "integer"])
def test_class_weights_scale_each_image_loss_as_specified(tmp_path, label_format):
    """The training pipeline's first batch, through Keras's loss: mean over the batch of
    weight[class] x cross-entropy, computed here by hand."""
    import keras

    from stages.optimization import make_loss, sample_weighting
    from stages.train import batch_reader, training_dataset

    rng = np.random.default_rng(0)
    images, labels = rng.uniform(0, 1, (12, 4, 4, 1)).astype(np.float32), LABELS
    choice = LossChoice("categorical" if label_format == "one_hot" else "sparse_categorical", label_format)
    train = parse_params({"train": {"class_weight": {"owl": 3.0, "dog": 0.5}}}).train
    weights = class_weights(train, labels, NAMES)
    dataset = training_dataset(images, labels, 12, 1, range(1), batch_reader(images, labels, choice, 3),
                               weighting=sample_weighting(weights, choice))
    batch_x, batch_y, batch_w = (value.numpy() for value in next(iter(dataset)))
    classes = batch_y.argmax(axis=1) if label_format == "one_hot" else batch_y
    np.testing.assert_allclose(batch_w, weights[classes])

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
    model.compile(loss=make_loss(choice, train))
    probabilities = model.predict(batch_x, verbose=0)
    by_hand = np.mean(batch_w * -np.log(probabilities[np.arange(12), classes]))
    unweighted = np.mean(-np.log(probabilities[np.arange(12), classes]))
    keras_loss = model.evaluate(dataset, steps=1, verbose=0)
    assert keras_loss == pytest.approx(by_hand, rel=1e-5) and abs(by_hand - unweighted) > 1e-3


@pytest.mark.tf
def test_ema_weights_are_validated_and_saved_while_training_continues_from_the_raw_ones(tmp_path):
    import keras

    from tests.training_data import train_on_tiny_data

    params = {"seed": 2, "model": {"conv_filters": [4], "dense_units": [8], "dense_dropout": 0.0},
              "train": {"epochs": 1, "batch_size": 8, "learning_rate": 0.01, "ema": 0.9}}
    summary, state = train_on_tiny_data(tmp_path, params)
    saved = keras.saving.load_model(tmp_path / "model.keras")
    raw = keras.saving.load_model(tmp_path / "model.keras")
    with np.load(tmp_path / "checkpoints" / state["checkpoint"]) as resume_state:  # raw weights, to go on from
        for index, variable in enumerate(raw.variables):
            variable.assign(resume_state[f"model_{index}"])
    assert any(not np.allclose(left, right) for left, right in zip(saved.get_weights(), raw.get_weights()))

    val_x, val_y = np.load(tmp_path / "prepared" / "val_x.npy"), np.load(tmp_path / "prepared" / "val_y.npy")
    one_hot = np.eye(3, dtype=np.float32)[val_y]
    saved_loss = saved.evaluate(val_x, one_hot, verbose=0)[0]
    raw_loss = raw.evaluate(val_x, one_hot, verbose=0)[0]
    assert saved_loss == pytest.approx(state["history"]["val_loss"][0], rel=1e-4)  # validation saw the average
    assert raw_loss != pytest.approx(saved_loss, rel=1e-4)
    assert json.loads((tmp_path / "summary.json").read_text())["params"]["train"]["ema"] == 0.9


def test_the_report_lists_a_class_weight_mapping_as_a_changed_cnnlab_param():
    from stages.report import parameters_section

    table = parameters_section({"params": {"train": {"class_weight": {"owl": 3.0}}}}).split("\n\n")[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    assert rows == [["train.class_weight.owl", "3.0000", "none"]]
