"""export: the trained model as a TensorFlow SavedModel, for serving outside cnnlab.

The SavedModel's `serving_default` signature takes raw pixel values (what the image
files hold: 0..255 for 8-bit pictures, 0..16 for digits) of meta.json's `image_shape` and
applies `prepare`'s normalization itself, so TF Serving, TFLite converters or a plain
`tf.saved_model.load` give the same classes as `cnnlab predict`. Decoding, colour mode and
resizing happen before the model; preprocessing.json (next to saved_model.pb) records them.

Writes one folder (replaced atomically):
    saved_model.pb, variables/   the SavedModel (signature `serving_default`)
    preprocessing.json           input size, colour mode, normalization, class names, outputs
"""

from __future__ import annotations

from pathlib import Path

from stages.artifacts import read_meta, read_model
from stages.io import atomic_dir, write_json
from stages.predict import ImageSettings
from stages.runtime import import_tensorflow

SIGNATURE = "serving_default"
INPUT_NAME = "images"


def normalize_tensor(images, normalization: dict):
    """stages.images.normalize in TensorFlow ops: the same float32 arithmetic, inside the graph."""
    tf = import_tensorflow()
    scaled = tf.cast(images, tf.float32) / tf.constant(normalization["scale"], tf.float32)
    if normalization["method"] == "unit":
        return tf.clip_by_value(scaled, 0.0, 1.0)
    mean = tf.constant(normalization["mean"], tf.float32)
    std = tf.constant(normalization["std"], tf.float32)
    return (scaled - mean) / std


def serving_function(model, settings: ImageSettings):
    """Raw pixels -> probabilities, the most likely class id and its name."""
    tf = import_tensorflow()
    class_names = tf.constant(list(settings.class_names))

    binary_unit = model.output_shape[-1] == 1 and len(settings.class_names) == 2

    def serve(images):
        probabilities = model(normalize_tensor(images, settings.normalization), training=False)
        if binary_unit:  # one sigmoid unit p -> [1 - p, p], as `cnnlab predict` reports it
            probabilities = tf.concat([1.0 - probabilities, probabilities], axis=-1)
        class_id = tf.argmax(probabilities, axis=1)
        return {"probabilities": probabilities, "class_id": class_id,
                "class_name": tf.gather(class_names, class_id)}

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


def export(model_path: str | Path, meta_path: str | Path, output_dir: str | Path) -> dict:
    """Write the SavedModel and preprocessing.json; return the preprocessing record."""
    meta = read_meta(meta_path)
    settings = ImageSettings.from_meta(meta, meta_path)
    model = read_model(model_path, meta)  # checked before TensorFlow starts, then loaded
    tf = import_tensorflow()
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=SIGNATURE, fn=serving_function(model, settings),
        input_signature=[tf.TensorSpec((None, *settings.input_shape), tf.float32, name=INPUT_NAME)],
    )
    record = preprocessing_record(settings)
    with atomic_dir(output_dir) as folder:
        archive.write_out(str(folder), verbose=False)
        write_json(folder / "preprocessing.json", record)
    return record
