"""cnnlab export: a SavedModel that takes raw pixels and gives models/model.keras's classes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cnnlab
from training_data import meta_record
from stages.images import normalize

pytestmark = pytest.mark.tf


@pytest.mark.parametrize("normalization", [
    {"method": "unit", "scale": 255.0},
    {"method": "standardize", "scale": 255.0, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]},
])
def test_the_graph_normalizes_exactly_like_prepare(normalization):
    from stages.export import normalize_tensor

    pixels = np.random.default_rng(0).integers(0, 256, (4, 5, 5, 3)).astype(np.float32)
    pixels[0, 0, 0] = 300.0  # out of range: "unit" clips, as prepare does
    assert np.array_equal(normalize_tensor(pixels, normalization).numpy(), normalize(pixels, normalization))


def test_exported_model_gives_the_keras_model_classes(trained_digits, tmp_path):
    import keras
    import tensorflow as tf

    export_dir = tmp_path / "model.export"
    result = run_cnnlab("export", "--output", str(export_dir), cwd=trained_digits)
    assert result.returncode == 0, result.stderr

    prepared = trained_digits / "data" / "prepared"
    meta = json.loads((prepared / "meta.json").read_text())
    test_x = np.load(prepared / "test_x.npy")
    raw_pixels = np.rint(test_x * meta["normalization"]["scale"]).astype(np.float32)  # what PNGs hold

    serve = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    outputs = serve(images=tf.constant(raw_pixels))
    keras_model = keras.saving.load_model(trained_digits / "models" / "model.keras", safe_mode=True)
    expected = keras_model.predict(test_x, verbose=0)

    assert np.array_equal(outputs["class_id"].numpy(), expected.argmax(axis=1))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-6)
    names = [name.decode() for name in outputs["class_name"].numpy()]
    assert names == [meta["class_names"][index] for index in expected.argmax(axis=1)]

    record = json.loads((export_dir / "preprocessing.json").read_text())
    assert record["image_size"] == meta["image_shape"][:2] and record["color_mode"] == "grayscale"
    assert record["normalization"] == meta["normalization"]
    assert record["class_names"] == meta["class_names"]
    assert record["input"]["shape"] == [None, *meta["image_shape"]]


def test_export_without_a_model_is_a_user_error(trained_digits, tmp_path):
    result = run_cnnlab("export", "--model", str(tmp_path / "missing.keras"),
                        "--output", str(tmp_path / "out"), cwd=trained_digits)
    assert result.returncode == 2 and "trained model not found" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_binary_sigmoid_model_exports_two_class_probabilities(tmp_path):
    import keras
    import tensorflow as tf

    from stages.export import export

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 3))
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "binary.keras")
    meta = meta_record(["cat", "dog"], [4, 4, 3])
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    pixels = np.random.default_rng(1).integers(0, 256, (16, 4, 4, 3)).astype(np.float32)

    export(tmp_path / "binary.keras", tmp_path / "meta.json", tmp_path / "model.export")

    serve = tf.saved_model.load(str(tmp_path / "model.export")).signatures["serving_default"]
    result = serve(images=tf.constant(pixels))
    dog = model.predict(normalize(pixels, meta["normalization"]), verbose=0)[:, 0]
    np.testing.assert_allclose(result["probabilities"].numpy(), np.stack([1 - dog, dog], axis=1), atol=1e-6)
    assert result["class_id"].numpy().tolist() == (dog > 0.5).astype(int).tolist()
