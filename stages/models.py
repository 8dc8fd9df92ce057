"""Architectures built from the `model` params (Keras functional API), and their layer table.

    linear    Flatten -> classifier                      (the course's "single layer")
    mlp       Flatten -> Dense blocks -> classifier
    cnn       conv blocks -> Flatten or global average pooling -> Dense blocks -> classifier
    transfer  input adapter -> pretrained base -> pooling -> Dense blocks -> classifier

A conv block is Conv2D [-> BatchNormalization -> Activation] [-> pooling] [-> Dropout]; with
`model.residual`, every block after the first (the stem) is a residual block instead (He et
al., 2016, as in the keras-io ResNet examples): two 3x3 convolutions with BatchNormalization
whose output is added to the block's input (through a 1x1 convolution when the filters or
strides change), then the activation, [pooling] and [Dropout]. `model.separable` makes those
convolutions depthwise-separable (SeparableConv2D, MobileNet's building block): about k*k
times fewer multiplications. A dense block is Dense [-> BatchNormalization -> Activation]
[-> Dropout]. Input shape and
class count come from data/prepared/meta.json; the classifier is a softmax over the
classes, or a single sigmoid unit when there are two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from stages.config import ModelParams, bad_value, per_block

BLOCK_SETTINGS = ("kernel_size", "strides", "padding", "pooling", "pool_size", "pool_padding", "conv_dropout")


def build_model(params: ModelParams, input_shape: tuple[int, ...], num_classes: int,
                normalization: Mapping | None = None):
    """The Keras model for `params`; `normalization` (meta.json's) is needed by transfer bases."""
    import keras

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    if params.architecture == "transfer":
        from stages.transfer import transfer_features

        x = flatten(transfer_features(params, inputs, normalization), params.global_pooling)
    elif params.architecture == "cnn":
        x = inputs
        for index in range(len(params.conv_filters)):
            x = conv_block(params, index, x)
        x = flatten(x, params.global_pooling)
    else:
        x = flatten(inputs, global_pooling=False)
    if params.architecture != "linear":
        dropout = per_block(params.dense_dropout, len(params.dense_units))
        for index, units in enumerate(params.dense_units):
            x = dense_block(params, index, units, dropout[index], x)
    outputs = classifier(params, num_classes, x)
    return keras.Model(inputs, outputs, name=params.architecture)


def weight_options(params: ModelParams) -> dict:
    """kernel_regularizer (L1/L2) and kernel_constraint (max-norm) shared by conv and dense layers."""
    import keras

    options = {}
    if params.l1 or params.l2:
        options["kernel_regularizer"] = keras.regularizers.L1L2(l1=params.l1, l2=params.l2)
    if params.max_norm is not None:
        options["kernel_constraint"] = keras.constraints.MaxNorm(params.max_norm)
    return options


def normalized_activation(params: ModelParams, name: str, x):
    """BatchNormalization then the activation (the layer before it was built without one)."""
    from keras import layers

    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation(params.activation, name=f"{name}_act")(x)


def block_settings(params: ModelParams, index: int) -> dict:
    """Kernel, strides, padding, pooling and dropout of conv block `index` (counted from 0)."""
    blocks = len(params.conv_filters)
    return {name: per_block(getattr(params, name), blocks)[index] for name in BLOCK_SETTINGS}


def same_padding(size: int, window: int, stride: int) -> int:
    """Total padding of TensorFlow's "same": just enough that out = ceil(size / stride)."""
    return max((math.ceil(size / stride) - 1) * stride + window - size, 0)


def window_output(size: int, window: int, stride: int, padding: str) -> int:
    """Output side of a convolution or pooling window: (W - F + 2P) / S + 1, rounded down."""
    total_padding = same_padding(size, window, stride) if padding == "same" else 0
    return (size - window + total_padding) // stride + 1


def check_architecture(params: ModelParams, image_shape) -> None:
    """Refuse (as a params error naming the block and the sizes) conv blocks whose convolution
    or pooling window is larger than the feature map it slides over: Keras would build a layer
    with no output. Pure arithmetic, so it runs before TensorFlow starts."""
    if params.architecture != "cnn":
        return
    height, width = int(image_shape[0]), int(image_shape[1])
    blocks = len(params.conv_filters)
    for index in range(blocks):
        setting = block_settings(params, index)
        windows = [("kernel_size", setting["kernel_size"], setting["strides"], "padding")]
        if setting["pooling"] != "none":
            windows.append(("pool_size", setting["pool_size"], setting["pool_size"], "pool_padding"))
        for key, window, stride, padding_key in windows:
            padding = setting[padding_key]
            new = window_output(height, window, stride, padding), window_output(width, window, stride, padding)
            if min(new) < 1:  # only 'valid' padding shrinks a side below the window
                after = "" if not index else " after block 1" if index == 1 else f" after blocks 1-{index}"
                value = getattr(params, key)
                raise bad_value(
                    f"model.{key}", f"at most {min(height, width)} in conv block {index + 1} of {blocks} "
                    f"(its input is {height}x{width}{after} and model.{padding_key} is 'valid'), or "
                    f"model.{padding_key}=same, or fewer conv blocks",
                    list(value) if isinstance(value, tuple) else value)
            height, width = new


def conv_block(params: ModelParams, index: int, x):
    """Block `index`: Conv2D [+ BatchNormalization + Activation], or a residual block, then
    [+ pooling] [+ Dropout]."""
    from keras import layers

    setting = block_settings(params, index)
    name = f"conv{index + 1}"
    if params.residual and index > 0:
        x = residual_block(params, name, params.conv_filters[index], setting, x)
    else:
        x = convolution(params, index > 0, params.conv_filters[index], setting, name,
                        activation=None if params.batch_norm else params.activation)(x)
        if params.batch_norm:
            x = normalized_activation(params, name, x)
    if setting["pooling"] != "none":
        pool = layers.MaxPooling2D if setting["pooling"] == "max" else layers.AveragePooling2D
        x = pool(setting["pool_size"], padding=setting["pool_padding"], name=f"pool{index + 1}")(x)
    if setting["conv_dropout"]:
        x = layers.Dropout(setting["conv_dropout"], name=f"{name}_dropout")(x)
    return x


def convolution(params: ModelParams, after_stem: bool, filters: int, setting: dict, name: str,
                strides=None, activation=None):
    """Conv2D, or SeparableConv2D after the first block when `model.separable` is set."""
    from keras import layers

    options = {"strides": setting["strides"] if strides is None else strides, "padding": setting["padding"],
               "activation": activation, "name": name}
    if params.separable and after_stem:
        regularizer = weight_options(params)
        return layers.SeparableConv2D(
            filters, setting["kernel_size"], depthwise_regularizer=regularizer.get("kernel_regularizer"),
            pointwise_regularizer=regularizer.get("kernel_regularizer"),
            depthwise_constraint=regularizer.get("kernel_constraint"),
            pointwise_constraint=regularizer.get("kernel_constraint"), **options)
    return layers.Conv2D(filters, setting["kernel_size"], **options, **weight_options(params))


def residual_block(params: ModelParams, name: str, filters: int, setting: dict, x):
    """conv-BN-activation-conv-BN, added to the input (projected by a strided 1x1 convolution
    when the shape changes), then the activation. The first convolution carries the strides."""
    from keras import layers

    shortcut = x
    if setting["strides"] != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=setting["strides"], name=f"{name}_project",
                                 **weight_options(params))(x)
        shortcut = layers.BatchNormalization(name=f"{name}_project_bn")(shortcut)
    x = convolution(params, True, filters, setting, f"{name}a")(x)
    x = normalized_activation(params, f"{name}a", x)
    x = convolution(params, True, filters, {**setting, "padding": "same"}, f"{name}b", strides=1)(x)
    x = layers.BatchNormalization(name=f"{name}b_bn")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation(params.activation, name=f"{name}_act")(x)


def flatten(x, global_pooling: bool):
    """Feature maps -> a vector: Flatten, or the mean of each map (GlobalAveragePooling2D)."""
    from keras import layers

    if len(x.shape) <= 2:
        return x
    if global_pooling and len(x.shape) == 4:
        return layers.GlobalAveragePooling2D(name="global_pool")(x)
    return layers.Flatten(name="flatten")(x)


def dense_block(params: ModelParams, index: int, units: int, dropout_rate: float, x):
    from keras import layers

    name = f"dense{index + 1}"
    x = layers.Dense(units, activation=None if params.batch_norm else params.activation,
                     name=name, **weight_options(params))(x)
    if params.batch_norm:
        x = normalized_activation(params, name, x)
    if dropout_rate:
        x = layers.Dropout(dropout_rate, name=f"{name}_dropout")(x)
    return x


def classifier(params: ModelParams, num_classes: int, x):
    """Softmax over the classes; one sigmoid unit (probability of class 1) for two classes.

    float32 even under mixed precision, so that probabilities and the loss keep full precision.
    """
    from keras import layers

    binary = num_classes == 2
    return layers.Dense(1 if binary else num_classes, activation="sigmoid" if binary else "softmax",
                        dtype="float32", name="classifier", **weight_options(params))(x)


def count_params(weights) -> int:
    return int(sum(math.prod(weight.shape) for weight in weights))


def layer_table(model) -> list[dict]:
    """One row per layer (input layers left out, as in the course's summaries): name, type,
    output shape (batch dimension first, None), parameters, and whether it trains."""
    import keras

    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        rows.append({
            "name": layer.name,
            "type": type(layer).__name__,
            "output_shape": list(layer.output.shape),
            "params": int(layer.count_params()),
            "trainable": bool(layer.trainable),
        })
    return rows


def parameter_totals(model) -> dict:
    """Total, trainable and non-trainable parameter counts, as Keras's summary reports them."""
    trainable = count_params(model.trainable_weights)
    non_trainable = count_params(model.non_trainable_weights)
    return {"total_params": trainable + non_trainable, "trainable_params": trainable,
            "non_trainable_params": non_trainable}
