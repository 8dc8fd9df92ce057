"""Transfer learning offline: a base that a test trains and saves, and a Keras Applications
architecture with weights from a local file."""

from __future__ import annotations

import numpy as np
import pytest

from stages.config import parse_params
from stages.errors import DataError
from tests.training_data import train_on_tiny_data

pytestmark = pytest.mark.tf

HEAD = {"dense_units": [8], "dense_dropout": 0.0}
TRAIN = {"batch_size": 16, "learning_rate": 0.01}


@pytest.fixture
def saved_base(tmp_path):
    """A cnnlab model trained on 8x8 grey images of 3 classes: models/model.keras."""
    folder = tmp_path / "base"
    train_on_tiny_data(folder, {"model": {"conv_filters": [4], "dense_units": [8]},
                                "train": {**TRAIN, "epochs": 2}})
    return folder / "model.keras"


def load(path):
    import keras

    return keras.saving.load_model(path, safe_mode=True)


def base_weights(model) -> list[np.ndarray]:
    return [weight.numpy() for weight in model.get_layer("base").weights]


def test_transfer_from_a_saved_model_adapts_inputs_and_trains_only_the_head(tmp_path, saved_base):
    params = {"model": {"architecture": "transfer", "base_model": str(saved_base), **HEAD},
              "train": {**TRAIN, "epochs": 3}}
    # Another dataset: 12x12 RGB images of 4 classes.
    summary, state = train_on_tiny_data(tmp_path / "new", params, num_classes=4, shape=(12, 12, 3))
    model = load(tmp_path / "new" / "model.keras")
    assert [layer.name for layer in model.layers[1:4]] == ["rgb_to_grey", "resize", "base"]
    assert model.get_layer("base").output.shape == (None, 8)  # the old classifier is gone
    original = load(saved_base)
    for kept, trained in zip(base_weights(model), [w.numpy() for w in original.weights[:-2]], strict=True):
        np.testing.assert_array_equal(kept, trained)  # frozen: unchanged by training
    head = 8 * (8 + 1) + 4 * (8 + 1)
    assert summary["trainable_params"] == head
    assert state["history"]["loss"][-1] < state["history"]["loss"][0]


def test_fine_tuning_unfreezes_the_last_base_layers_at_a_lower_rate(tmp_path, saved_base):
    params = {"model": {"architecture": "transfer", "base_model": str(saved_base), "base_trainable_layers": 2,
                        **HEAD},
              "train": {**TRAIN, "epochs": 2, "fine_tune_epochs": 2, "fine_tune_learning_rate": 0.001,
                        "monitor": "val_loss"}}
    summary, state = train_on_tiny_data(tmp_path / "new", params)
    assert summary["epochs_run"] == 4 and state["phase"] == 1
    assert summary["best_epoch"] == 4  # still improving: the saved model is a fine-tuned one
    assert state["history"]["learning_rate"] == pytest.approx([0.01, 0.01, 0.001, 0.001])
    model, original = load(tmp_path / "new" / "model.keras"), load(saved_base)
    base = model.get_layer("base")
    assert not base.get_layer("conv1").trainable and base.get_layer("dense1").trainable
    assert not np.array_equal(base.get_layer("dense1").kernel.numpy(), original.get_layer("dense1").kernel.numpy())
    np.testing.assert_array_equal(base.get_layer("conv1").kernel.numpy(), original.get_layer("conv1").kernel.numpy())


def test_application_base_with_weights_from_a_local_file(tmp_path):
    import keras

    weights_file = tmp_path / "mobilenet_v2_no_top.weights.h5"
    keras.utils.set_random_seed(7)
    reference = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    reference.save_weights(weights_file)
    params = {"model": {"architecture": "transfer", "base_model": "mobilenet_v2",
                        "base_weights": str(weights_file), "global_pooling": True, **HEAD},
              "train": {**TRAIN, "epochs": 1, "batch_size": 32}}
    summary, _ = train_on_tiny_data(tmp_path / "new", params, scale=2)
    model = load(tmp_path / "new" / "model.keras")  # safe_mode: only built-in layers
    names = [layer.name for layer in model.layers[1:]]
    assert names[:5] == ["to_pixels", "grey_to_rgb", "resize", "to_base_range", "base"]
    assert model.get_layer("resize").output.shape == (None, 32, 32, 3)
    for loaded, saved in zip(base_weights(model), [w.numpy() for w in reference.weights], strict=True):
        np.testing.assert_array_equal(loaded, saved)
    assert summary["trainable_params"] == 1280 * 8 + 8 + 3 * (8 + 1)  # the head alone


def test_standardized_inputs_are_turned_back_into_pixels():
    import keras

    from stages.transfer import to_pixels

    normalization = {"method": "standardize", "scale": 255.0, "mean": [0.5], "std": [0.25]}
    inputs = keras.Input((2, 2, 1))
    model = keras.Model(inputs, to_pixels(inputs, normalization))
    pixels = model.predict(np.array([[[[0.0], [1.0]], [[-2.0], [2.0]]]], np.float32), verbose=0)
    np.testing.assert_allclose(pixels.ravel(), [127.5, 191.25, 0.0, 255.0], rtol=1e-5)


def test_a_missing_base_file_is_one_line(tmp_path):
    from stages.models import build_model

    params = parse_params({"model": {"architecture": "transfer", "base_model": str(tmp_path / "no.keras")}})
    with pytest.raises(DataError, match="not found") as error:
        build_model(params.model, (8, 8, 1), 3)
    assert "\n" not in str(error.value)
