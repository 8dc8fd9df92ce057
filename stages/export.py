"""export: the trained model in formats that run outside cnnlab, each checked before it is written.

Every format takes raw pixel values (what the image files hold: 0..255 for 8-bit pictures,
0..16 for digits) of meta.json's `image_shape`, float32, and applies `prepare`'s
normalization itself. Decoding, colour mode and resizing happen before the model; the
export's JSON records them.

    saved_model  a folder (replaced atomically): saved_model.pb, variables/, preprocessing.json;
                 signature `serving_default` -> probabilities, class_id, class_name
    onnx         model.onnx (tf2onnx; run with onnxruntime) and model.onnx.json -> probabilities
    tflite       model.tflite (TensorFlow's TFLite converter; run with the LiteRT interpreter) and
                 model.tflite.json -> probabilities; with int8, weights and activations are
                 quantized to 8 bits, calibrated on training images (input and output stay float32)

The check: the export runs on every test image (data/prepared/test_x.npy turned back into raw
pixels) beside models/model.keras on the same pixels. A float export must give probabilities
within `atol` of the Keras model's, an int8 export the same class for at least `min_agreement`
of the images; otherwise one line says what was measured and nothing is written. The
measured figures (largest probability difference, class agreement, both accuracies) go into
the export's JSON.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.artifacts import read_meta, read_model, read_split
from stages.errors import CnnlabError
from stages.images import normalize
from stages.io import atomic_dir, atomic_path, write_json
from stages.predict import ImageSettings
from stages.runtime import import_tensorflow, native_stderr_silenced

SIGNATURE = "serving_default"
INPUT_NAME = "images"
FORMATS = ("saved_model", "onnx", "tflite")
DEFAULT_OUTPUTS = {"saved_model": "models/model.export", "onnx": "models/model.onnx",
                   "tflite": "models/model.tflite", "tflite-int8": "models/model.int8.tflite"}
CALIBRATION_IMAGES = 500          # training images that calibrate int8 quantization
ONNX_OPSET = 17
EXTRA_HINT = "install the export tools: pip install 'cnnlab[export]'"


@dataclass(frozen=True)
class ExportOptions:
    format: str = "saved_model"
    int8: bool = False            # TFLite only: 8-bit weights and activations
    atol: float = 1e-5            # float exports: largest allowed probability difference
    min_agreement: float = 0.995  # int8 exports: smallest allowed share of identical classes

    def check(self) -> None:
        if self.format not in FORMATS:
            raise CnnlabError(f"--format: expected one of {', '.join(FORMATS)}, received {self.format!r}")
        if self.int8 and self.format != "tflite":
            raise CnnlabError(f"--int8: quantization is for --format tflite, received --format {self.format}; "
                              "drop --int8 or export tflite")

    @property
    def default_output(self) -> str:
        return DEFAULT_OUTPUTS["tflite-int8" if self.int8 else self.format]


def normalize_tensor(images, normalization: dict):
    """stages.images.normalize in TensorFlow ops: the same float32 arithmetic, inside the graph."""
    tf = import_tensorflow()
    scaled = tf.cast(images, tf.float32) / tf.constant(normalization["scale"], tf.float32)
    if normalization["method"] == "unit":
        return tf.clip_by_value(scaled, 0.0, 1.0)
    mean = tf.constant(normalization["mean"], tf.float32)
    std = tf.constant(normalization["std"], tf.float32)
    return (scaled - mean) / std


def probabilities_function(model, settings: ImageSettings):
    """Raw pixels -> {"probabilities": [batch, classes]} (a sigmoid unit p as [1 - p, p], as
    `cnnlab predict` reports it): all that ONNX and TFLite exports compute."""
    tf = import_tensorflow()
    binary_unit = model.output_shape[-1] == 1 and len(settings.class_names) == 2

    def probabilities(images):
        values = model(normalize_tensor(images, settings.normalization), training=False)
        return {"probabilities": tf.concat([1.0 - values, values], axis=-1) if binary_unit else values}

    return probabilities


def serving_function(model, settings: ImageSettings):
    """Raw pixels -> probabilities, the most likely class id and its name (the SavedModel's signature)."""
    tf = import_tensorflow()
    class_names = tf.constant(list(settings.class_names))
    probabilities = probabilities_function(model, settings)

    def serve(images):
        outputs = probabilities(images)
        class_id = tf.argmax(outputs["probabilities"], axis=1)
        return {**outputs, "class_id": class_id, "class_name": tf.gather(class_names, class_id)}

    return serve


def preprocessing_record(settings: ImageSettings) -> dict:
    height, width = settings.image_size
    return {
        "signature": SIGNATURE,
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [None, *settings.input_shape],
                  "values": f"raw pixel values, 0..{settings.normalization['scale']:g} "
                            "(normalization is applied inside the model)"},
        "image_size": [height, width],
        "color_mode": settings.color_mode,
        "resize": "Pillow bilinear to image_size after converting to color_mode (stages/images.py)",
        "normalization": settings.normalization,
        "class_names": list(settings.class_names),
        "outputs": {"probabilities": "float32 [batch, num_classes]",
                    "class_id": "int64 [batch], index into class_names",
                    "class_name": "string [batch]"},
    }


def input_spec(settings: ImageSettings):
    tf = import_tensorflow()
    return tf.TensorSpec((None, *settings.input_shape), tf.float32, name=INPUT_NAME)


def write_saved_model(model, settings: ImageSettings, folder: Path, fn=None) -> None:
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SIGNATURE, fn=fn or serving_function(model, settings),
                         input_signature=[input_spec(settings)])
    archive.write_out(str(folder), verbose=False)


def raw_pixels(images: np.ndarray, normalization: dict) -> np.ndarray:
    """Normalized images back to the whole pixel values the image files held (prepare's inverse)."""
    values = np.asarray(images, np.float64)
    if normalization["method"] == "standardize":
        values = values * np.asarray(normalization["std"]) + np.asarray(normalization["mean"])
    return np.rint(values * normalization["scale"]).astype(np.float32)


def import_tool(module: str, purpose: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise CnnlabError(f"{purpose} needs the Python package {module}, which is not installed; "
                          f"{EXTRA_HINT}") from None


# --- converters: the model bytes, and a function running them on raw pixels ----------------------
def convert_onnx(model, settings: ImageSettings) -> bytes:
    tf = import_tensorflow()
    tf2onnx = import_tool("tf2onnx", "--format onnx")
    function = tf.function(probabilities_function(model, settings), input_signature=[input_spec(settings)])
    proto, _ = tf2onnx.convert.from_function(function, input_signature=[input_spec(settings)], opset=ONNX_OPSET)
    return proto.SerializeToString()


def run_onnx(content: bytes, pixels: np.ndarray) -> np.ndarray:
    onnxruntime = import_tool("onnxruntime", "checking an ONNX export")
    session = onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {INPUT_NAME: pixels})[0]


def convert_tflite(model, settings: ImageSettings, calibration: np.ndarray | None) -> bytes:
    """TensorFlow's TFLite converter, from a SavedModel of the probabilities function; with
    `calibration` images, int8 post-training quantization calibrated on them."""
    tf = import_tensorflow()
    with tempfile.TemporaryDirectory() as folder:
        write_saved_model(model, settings, Path(folder), probabilities_function(model, settings))
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        if calibration is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([image[np.newaxis]] for image in calibration)
        return converter.convert()


def run_tflite(content: bytes, pixels: np.ndarray) -> np.ndarray:
    interpreter_module = import_tool("ai_edge_litert.interpreter", "checking a TFLite export")
    with native_stderr_silenced():  # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate"
        interpreter = interpreter_module.Interpreter(model_content=content)
        given = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(given["index"], pixels.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(given["index"], pixels)
        interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def run_saved_model(folder: Path, pixels: np.ndarray) -> np.ndarray:
    tf = import_tensorflow()
    serve = tf.saved_model.load(str(folder)).signatures[SIGNATURE]
    return serve(**{INPUT_NAME: tf.constant(pixels)})["probabilities"].numpy()


# --- the check -----------------------------------------------------------------------------------
def keras_probabilities(model, pixels: np.ndarray, settings: ImageSettings) -> np.ndarray:
    """models/model.keras on the pixels normalized as prepare normalizes (a sigmoid unit p as [1 - p, p])."""
    probabilities = model.predict(normalize(pixels, settings.normalization), verbose=0, batch_size=256)
    if probabilities.shape[-1] == 1 and len(settings.class_names) == 2:
        probabilities = np.concatenate([1.0 - probabilities, probabilities], axis=-1)
    return probabilities


def check_export(options: ExportOptions, probabilities: np.ndarray, expected: np.ndarray,
                 labels: np.ndarray) -> dict:
    """The check's figures; one CnnlabError line (nothing is written) when they miss the criterion."""
    difference = float(np.abs(probabilities - expected).max()) if len(labels) else 0.0
    agreement = float(np.mean(probabilities.argmax(axis=1) == expected.argmax(axis=1))) if len(labels) else 1.0
    figures = {
        "test_images": int(len(labels)),
        "criterion": (f"class agreement >= {options.min_agreement:g}" if options.int8
                      else f"max probability difference <= {options.atol:g}"),
        "max_probability_difference": difference,
        "class_agreement": agreement,
        "keras_accuracy": float(np.mean(expected.argmax(axis=1) == labels)) if len(labels) else None,
        "export_accuracy": float(np.mean(probabilities.argmax(axis=1) == labels)) if len(labels) else None,
    }
    passed = agreement >= options.min_agreement if options.int8 else difference <= options.atol
    if not passed:
        kind = "int8 " if options.int8 else ""
        raise CnnlabError(
            f"{kind}{options.format} export failed its check against model.keras on {len(labels)} test images: "
            f"class agreement {agreement:.4f}, max probability difference {difference:.3g}; needed "
            f"{figures['criterion']}; nothing written (change --atol/--min-agreement only if that is acceptable)")
    return figures


def export_record(settings: ImageSettings, options: ExportOptions, figures: dict, size: int) -> dict:
    record = preprocessing_record(settings)
    if options.format != "saved_model":
        record.pop("signature")
        record["outputs"] = {"probabilities": record["outputs"]["probabilities"]}
    return {"format": options.format, "quantization": "int8" if options.int8 else "none",
            "size_bytes": size, **record, "check": figures}


def export(model_path: str | Path, meta_path: str | Path, output: str | Path,
           options: ExportOptions = ExportOptions()) -> dict:
    """Convert, check against the Keras model on the test images, then write; return the record."""
    options.check()
    meta = read_meta(meta_path)
    settings = ImageSettings.from_meta(meta, meta_path)
    prepared = Path(meta_path).parent
    test_x, test_y = read_split(prepared, "test", meta)
    model = read_model(model_path, meta)  # checked before TensorFlow starts, then loaded
    pixels = raw_pixels(test_x, settings.normalization)
    expected = keras_probabilities(model, pixels, settings)
    output = Path(output)
    if options.format == "saved_model":
        with atomic_dir(output) as folder:
            write_saved_model(model, settings, folder)
            figures = check_export(options, run_saved_model(folder, pixels), expected, test_y)
            size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
            record = export_record(settings, options, figures, size)
            write_json(folder / "preprocessing.json", record)
        return record
    if options.format == "onnx":
        content = convert_onnx(model, settings)
        probabilities = run_onnx(content, pixels)
    else:
        calibration = None
        if options.int8:
            train_x, _ = read_split(prepared, "train", meta)
            calibration = raw_pixels(train_x[:CALIBRATION_IMAGES], settings.normalization)
        content = convert_tflite(model, settings, calibration)
        probabilities = run_tflite(content, pixels)
    record = export_record(settings, options, check_export(options, probabilities, expected, test_y), len(content))
    with atomic_path(output) as temp:
        temp.write_bytes(content)
    write_json(output.with_name(output.name + ".json"), record)
    return record
