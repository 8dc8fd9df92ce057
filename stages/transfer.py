"""Transfer learning: a pretrained base, fed images converted to what it expects.

The base is either a Keras Applications architecture (`model.base_model: mobilenet_v2`,
weights from ImageNet or a local file) or a saved `.keras` model, e.g. one cnnlab trained
on another dataset, whose last (classification) layer is dropped. Between our input and
the base sit built-in layers only (so the saved model loads with safe_mode): back to pixel
values and to the base's own scaling for an application, grey <-> RGB, resizing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from stages.config import APPLICATIONS, ModelParams
from stages.errors import DataError

BASE_NAME = "base"
# Keras Applications' "torch" preprocessing: ImageNet channel statistics of [0, 1] pixels.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R 601 weights for RGB -> grey


def transfer_features(params: ModelParams, inputs, normalization: Mapping | None):
    """The base's output for `inputs` (called in inference mode, so its BatchNormalization
    statistics stay those of the pretraining data even when layers are unfrozen)."""
    if params.base_model.endswith(".keras"):
        base = saved_base(params.base_model)
        x = adapt_channels_and_size(inputs, tuple(base.inputs[0].shape[1:]))
    else:
        class_name, preprocessing, min_side = APPLICATIONS[params.base_model]
        height, width = inputs.shape[1:3]
        side = params.base_image_size
        target = (side or max(height, min_side), side or max(width, min_side), 3)
        base = application_base(params, class_name, target)
        x = to_pixels(inputs, normalization)
        x = adapt_channels_and_size(x, target)
        x = application_scaling(x, preprocessing)
    set_base_trainable_layers(base, params.base_trainable_layers)
    return base(x, training=False)


def saved_base(path: str):
    """A saved model without its last layer, as a nested model named `base`."""
    import keras

    if not Path(path).is_file():
        raise DataError(f"model.base_model: {path} not found; train a model first (its "
                        "models/model.keras) or give the path of a saved .keras model")
    try:
        saved = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras reports bad archives with many exception types
        raise DataError(f"model.base_model: {path} is not a loadable .keras model ({error})") from None
    if len(saved.layers) < 3:
        raise DataError(f"model.base_model: {path} has no layers left once its classifier is dropped")
    return keras.Model(saved.inputs, saved.layers[-2].output, name=BASE_NAME)


def application_base(params: ModelParams, class_name: str, input_shape: tuple[int, int, int]):
    """The Keras Applications model without its top, with the weights asked for."""
    import keras

    constructor = getattr(keras.applications, class_name)
    weights = None if params.base_weights == "none" else params.base_weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise DataError(f"model.base_weights: {weights} not found; give the path of a Keras "
                        f"weights file for {class_name} without its top, or imagenet, or none")
    try:
        return constructor(include_top=False, weights=weights, input_shape=input_shape, name=BASE_NAME)
    except Exception as error:  # no network, a weights file of another architecture, ...
        fix = ("download it where a network exists (Keras caches it in ~/.keras/models) or set "
               "model.base_weights to a local .h5 file" if weights == "imagenet"
               else f"give a weights file saved from {class_name} without its top")
        raise DataError(f"model.base_weights: cannot load {weights} weights for {class_name} "
                        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                        f"{fix}") from None


def to_pixels(x, normalization: Mapping | None):
    """Our normalized inputs back to 0..255 pixel values, the scale applications start from."""
    from keras import layers

    if normalization is None or normalization.get("method", "unit") == "unit":
        return layers.Rescaling(255.0, name="to_pixels")(x)
    mean = np.asarray(normalization["mean"], dtype=np.float32) * 255.0
    std = np.asarray(normalization["std"], dtype=np.float32) * 255.0
    return layers.Normalization(mean=mean, variance=std**2, invert=True, name="to_pixels")(x)


def adapt_channels_and_size(x, target_shape: tuple[int, int, int]):
    """Grey -> RGB (three copies) or RGB -> grey (luminance), then resize to the base's input."""
    from keras import layers

    height, width, channels = target_shape
    have = x.shape[-1]
    if have == 1 and channels == 3:
        x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    elif have == 3 and channels == 1:
        to_grey = layers.Conv2D(1, 1, use_bias=False, trainable=False, name="rgb_to_grey")
        x = to_grey(x)
        to_grey.set_weights([np.asarray(LUMINANCE, dtype=np.float32).reshape(1, 1, 3, 1)])
    elif have != channels:
        raise DataError(f"model.base_model: the base takes {channels}-channel images, ours have "
                        f"{have}; only grey <-> RGB is converted")
    if tuple(x.shape[1:3]) != (height, width):
        x = layers.Resizing(height, width, name="resize")(x)
    return x


def application_scaling(x, preprocessing: str):
    """0..255 pixels -> the input range the application was trained on."""
    from keras import layers

    if preprocessing == "tf":  # [-1, 1]
        return layers.Rescaling(1 / 127.5, offset=-1.0, name="to_base_range")(x)
    if preprocessing == "torch":  # ImageNet mean and std
        x = layers.Rescaling(1 / 255.0, name="to_unit")(x)
        return layers.Normalization(mean=IMAGENET_MEAN, variance=np.square(IMAGENET_STD),
                                    name="to_base_range")(x)
    return x  # "raw": the model rescales 0..255 itself


def set_base_trainable_layers(base, count: int) -> None:
    """Freeze the base except its last `count` layers (BatchNormalization stays frozen)."""
    from keras import layers

    base.trainable = count > 0
    if not count:
        return
    inner = [layer for layer in base.layers if not isinstance(layer, layers.InputLayer)]
    first_trainable = max(len(inner) - count, 0)
    for index, layer in enumerate(inner):
        layer.trainable = index >= first_trainable and not isinstance(layer, layers.BatchNormalization)


def find_base(model):
    """The nested base model of a transfer model."""
    return model.get_layer(BASE_NAME)
