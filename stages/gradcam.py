"""Grad-CAM (Selvaraju et al., 2017): which regions of an image drove the model's score for a class.

The gradient of the class's score (its logit: the classifier layer before softmax or sigmoid,
whose gradient does not vanish on confident predictions) with respect to a convolutional feature
map, averaged over the map's positions, weighs each channel; the positive part of the weighted
sum of channels, upsampled to the image, is the heat map. The feature map is the last
convolutional layer's output (cnn) or the pretrained base's output (transfer); an mlp has none.
"""

from __future__ import annotations

import numpy as np

from stages.runtime import import_tensorflow

# Images per figure: the most confident mistakes, and one correct image for each of the first classes.
MISTAKES = 8
CLASSES = 10


def feature_map_layer(model):
    """The last top-level layer that outputs a convolutional feature map, or None."""
    import keras

    conv_types = (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D)
    for layer in reversed(model.layers):
        if isinstance(layer, conv_types) or (isinstance(layer, keras.Model) and len(layer.output.shape) == 4):
            return layer
    return None


def class_scores(model, features):
    """Logits of every class from the classifier layer's input (a binary model's single sigmoid
    unit gives class 1 the log-odds z and class 0 -z)."""
    import keras
    import tensorflow as tf

    head = model.layers[-1]
    if not isinstance(head, keras.layers.Dense):  # build_model always ends with one
        raise TypeError(f"Grad-CAM needs a Dense classifier layer, not {type(head).__name__}")
    logits = tf.matmul(features, tf.cast(head.kernel, tf.float32))
    if head.use_bias:
        logits += tf.cast(head.bias, tf.float32)
    return tf.concat([-logits, logits], axis=1) if logits.shape[-1] == 1 else logits


def heat_maps(model, images: np.ndarray, class_ids: np.ndarray) -> np.ndarray | None:
    """Grad-CAM of `class_ids[i]` on `images[i]`: (N, H, W) in [0, 1] at the images' size,
    or None when the model has no convolutional feature map."""
    import_tensorflow()
    import keras
    import tensorflow as tf

    layer = feature_map_layer(model)
    if layer is None:
        return None
    viewer = keras.Model(model.inputs, [layer.output, model.layers[-1].input])
    with tf.GradientTape() as tape:
        maps, features = viewer(tf.convert_to_tensor(np.asarray(images, dtype=np.float32)), training=False)
        scores = tf.gather(class_scores(model, tf.cast(features, tf.float32)),
                           np.asarray(class_ids)[:, np.newaxis], batch_dims=1)
    # The gradient with respect to the maps the scores were computed from; mixed-precision
    # models compute them in bfloat16/float16, so both are cast to float32 afterwards.
    gradients = tf.cast(tape.gradient(scores, maps), tf.float32)
    maps = tf.cast(maps, tf.float32)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cams = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1, keepdims=True))
    cams = tf.image.resize(cams, images.shape[1:3], method="bilinear")[..., 0].numpy()
    peaks = cams.reshape(len(cams), -1).max(axis=1)[:, np.newaxis, np.newaxis]
    return np.divide(cams, peaks, out=np.zeros_like(cams), where=peaks > 0)


def correct_examples(labels: np.ndarray, probabilities: np.ndarray, classes: int = CLASSES) -> np.ndarray:
    """For each of the first `classes` classes, its most confidently right test image (if any)."""
    predicted = probabilities.argmax(axis=1)
    chosen = []
    for class_id in range(min(classes, probabilities.shape[1])):
        right = np.flatnonzero((labels == class_id) & (predicted == class_id))
        if len(right):
            chosen.append(right[np.argsort(-probabilities[right, class_id], kind="stable")][0])
    return np.asarray(chosen, dtype=int)
