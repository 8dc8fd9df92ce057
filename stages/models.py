"""Architectures built from the `model` params (Keras functional API)."""

from __future__ import annotations

from stages.config import ModelParams


def build_model(params: ModelParams, input_shape: tuple[int, ...], num_classes: int):
    """Conv blocks (Conv2D + max pooling), then dense layers, then a softmax classifier."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for filters in params.conv_filters:
        x = layers.Conv2D(filters, params.kernel_size, padding=params.padding,
                          activation=params.activation)(x)
        # "same" pooling keeps odd-sized maps (e.g. 7x7 -> 4x4) instead of dropping a row.
        x = layers.MaxPooling2D(pool_size=2, padding="same")(x)
    x = layers.Flatten()(x)
    for units in params.dense_units:
        x = layers.Dense(units, activation=params.activation)(x)
    if params.dropout_rate > 0:
        x = layers.Dropout(params.dropout_rate)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name=params.architecture)
