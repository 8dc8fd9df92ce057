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


def test_exported_model_gives_the_keras_model_classes(trained_digits, tmp_path, cnnlab_in_process):
    import keras
    import tensorflow as tf

    export_dir = tmp_path / "model.export"
    cnnlab_in_process("export", "--output", str(export_dir), cwd=trained_digits)

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
    meta = meta_record(["cat", "dog"], [4, 4, 3], splits={"test": 16})
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    pixels = np.random.default_rng(1).integers(0, 256, (16, 4, 4, 3)).astype(np.float32)
    np.save(tmp_path / "test_x.npy", normalize(pixels, meta["normalization"]))  # what export checks on
    np.save(tmp_path / "test_y.npy", np.arange(16) % 2)

    export(tmp_path / "binary.keras", tmp_path / "meta.json", tmp_path / "model.export")

    serve = tf.saved_model.load(str(tmp_path / "model.export")).signatures["serving_default"]
    result = serve(images=tf.constant(pixels))
    dog = model.predict(normalize(pixels, meta["normalization"]), verbose=0)[:, 0]
    np.testing.assert_allclose(result["probabilities"].numpy(), np.stack([1 - dog, dog], axis=1), atol=1e-6)
    assert result["class_id"].numpy().tolist() == (dog > 0.5).astype(int).tolist()


# --- ONNX and TFLite, each checked against model.keras before it is written -----------------------
FORMATS = [("saved_model", False), ("onnx", False), ("tflite", False), ("tflite", True)]
# The session's model trains for seconds on tiny digits: quantization flips a few more of its
# uncertain test images than the 0.5% the default allows (the default model's int8 export keeps all).
TINY_MODEL_AGREEMENT = 0.95


def digits_test_pixels(folder):
    from stages.export import raw_pixels

    prepared = folder / "data" / "prepared"
    meta = json.loads((prepared / "meta.json").read_text())
    return raw_pixels(np.load(prepared / "test_x.npy"), meta["normalization"]), np.load(prepared / "test_y.npy")


def run_written(export_format: str, path, pixels: np.ndarray) -> np.ndarray:
    """The written export, loaded by its own runtime (not cnnlab's code)."""
    if export_format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": pixels})[0]
    if export_format == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
        interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], pixels.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    import tensorflow as tf

    return tf.saved_model.load(str(path)).signatures["serving_default"](images=tf.constant(pixels))["probabilities"].numpy()


@pytest.fixture(scope="module")
def exports(trained_digits, tmp_path_factory) -> dict:
    """Each format exported once from the session's trained digits model: {(format, int8): (path, record)}."""
    from stages.export import ExportOptions, export

    folder = tmp_path_factory.mktemp("exports")
    written = {}
    for export_format, int8 in FORMATS:
        path = folder / f"model{'.int8' if int8 else ''}.{export_format}"
        record = export(trained_digits / "models" / "model.keras", trained_digits / "data" / "prepared" / "meta.json",
                        path, ExportOptions(export_format, int8, min_agreement=TINY_MODEL_AGREEMENT))
        written[export_format, int8] = path, record
    return written


@pytest.mark.parametrize("export_format, int8", FORMATS)
def test_each_export_round_trips_and_its_json_holds_the_check(exports, trained_digits, export_format, int8):
    import keras

    path, record = exports[export_format, int8]
    pixels, labels = digits_test_pixels(trained_digits)
    meta = json.loads((trained_digits / "data" / "prepared" / "meta.json").read_text())
    model = keras.saving.load_model(trained_digits / "models" / "model.keras", safe_mode=True)
    expected = model.predict(normalize(pixels, meta["normalization"]), verbose=0)
    got = run_written(export_format, path, pixels)

    agreement = np.mean(got.argmax(axis=1) == expected.argmax(axis=1))
    if int8:
        assert agreement >= TINY_MODEL_AGREEMENT and np.abs(got - expected).max() > 1e-5  # quantized, same classes
    else:
        np.testing.assert_allclose(got, expected, atol=1e-5)
    json_path = path / "preprocessing.json" if export_format == "saved_model" else path.with_name(path.name + ".json")
    written = json.loads(json_path.read_text())
    assert written == record and written["format"] == export_format
    assert written["quantization"] == ("int8" if int8 else "none")
    check = written["check"]
    assert check["test_images"] == len(labels)
    assert check["criterion"] == (f"class agreement >= {TINY_MODEL_AGREEMENT}" if int8 else "max probability difference <= 1e-05")
    assert check["class_agreement"] == pytest.approx(agreement)
    assert check["max_probability_difference"] == pytest.approx(np.abs(got - expected).max(), abs=1e-7)
    assert check["export_accuracy"] == pytest.approx(np.mean(got.argmax(axis=1) == labels))
    assert check["keras_accuracy"] == pytest.approx(np.mean(expected.argmax(axis=1) == labels))
    if export_format != "saved_model":
        assert written["size_bytes"] == path.stat().st_size


def test_int8_is_smaller_than_float_tflite(exports):
    assert exports["tflite", True][1]["size_bytes"] < exports["tflite", False][1]["size_bytes"]


def test_a_check_that_cannot_pass_writes_nothing_and_exits_2(trained_digits, tmp_path):
    from conftest import error_line

    output = tmp_path / "model.tflite"
    result = run_cnnlab("export", "--format", "tflite", "--atol", "0", "--output", str(output), cwd=trained_digits)
    line = error_line(result)
    assert "failed its check against model.keras" in line and "max probability difference <= 0" in line
    assert list(tmp_path.iterdir()) == []


def test_the_check_measures_agreement_and_difference():
    from stages.errors import CnnlabError
    from stages.export import ExportOptions, check_export

    expected = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    got = expected + np.array([[0, 0], [0, 0], [-0.2, 0.2], [0, 0]])  # the third image changes class
    figures = check_export(ExportOptions("tflite", int8=True, min_agreement=0.75), got, expected, np.array([0, 1, 0, 1]))
    assert figures["class_agreement"] == 0.75 and figures["max_probability_difference"] == pytest.approx(0.2)
    assert figures["keras_accuracy"] == 1.0 and figures["export_accuracy"] == 0.75
    with pytest.raises(CnnlabError, match="class agreement 0.7500"):
        check_export(ExportOptions("tflite", int8=True), got, expected, np.array([0, 1, 0, 1]))
    with pytest.raises(CnnlabError, match="max probability difference 0.2"):
        check_export(ExportOptions("onnx"), got, expected, np.array([0, 1, 0, 1]))


def test_int8_is_refused_for_other_formats(trained_digits, tmp_path):
    from conftest import error_line

    result = run_cnnlab("export", "--format", "onnx", "--int8", "--output", str(tmp_path / "m.onnx"), cwd=trained_digits)
    assert "--int8" in error_line(result) and not (tmp_path / "m.onnx").exists()
