"""Random image transforms for augmentation, as stateless TensorFlow ops on batches.

One piece of code serves both augmentation modes: `online` maps it over the training
batches inside tf.data, `offline` runs it over the training set once and saves the
copies. Every random draw is a *stateless* op keyed by an explicit seed, because `train`
enables TensorFlow's op determinism, under which a tf.data map holding stateful random
ops (Keras preprocessing layers draw from a stateful SeedGenerator) runs serially and
without prefetching. Stateless ops keep the map parallel and the results repeatable.

Each transform is split like Keras 3's preprocessing layers: `sample_*` draws the
per-image parameters from the seed, `apply_*` applies given parameters, so tests can
check each transform on exact values. The geometric transforms (rotation, shear, zoom,
shift) are composed into one affine matrix per image and interpolated once, through
`keras.ops.image.affine_transform` (the op the Keras layers use).

Images are float32 NHWC; `low` and `high` are the per-channel values of a black and a
full-intensity pixel after normalization (meta.json), so every transform keeps the
images inside the value range of the prepared data.

This module imports TensorFlow when it is imported: import it only inside functions of
the stages that train or augment (stages/augment.py does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from stages.runtime import import_tensorflow

tf = import_tensorflow()
import keras  # noqa: E402  (after TensorFlow, which import_tensorflow sets up quietly)

# Random erasing (Zhong et al., 2017): the erased area is 2-40% of the image, with an
# aspect ratio between 0.3 and 1/0.3.
ERASING_AREA = (0.02, 0.4)
ERASING_ASPECT = 0.3
NUM_SEEDS = 5  # one independent stream per transform family
# RandAugment (Cubuk et al., 2020): each image gets `randaugment_ops` transforms drawn from
# RANDAUGMENT_OPS, all at one strength, magnitude / RANDAUGMENT_MAX_MAGNITUDE. The strongest
# setting of each (magnitude 30), close to timm's and torchvision's ranges:
RANDAUGMENT_OPS = ("identity", "rotate", "shear", "translate_x", "translate_y", "brightness",
                   "contrast", "solarize", "posterize", "autocontrast")
RANDAUGMENT_MAX_MAGNITUDE = 30
RANDAUGMENT_STRONGEST = {"rotate": 30.0, "shear": 30.0, "translate": 0.45, "brightness": 0.9,
                         "contrast": 0.9, "posterize_bits": 4}
MIX_STREAM = 7  # folded into the batch seed for MixUp / CutMix, a stream apart from the above


def _uniform(shape, seed, low, high):
    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high, dtype=tf.float32)


# --- geometric: rotation, shear, zoom, shift -----------------------------------------------------
def sample_geometry(transforms: Mapping[str, Any], batch_size, height: int, width: int, seed) -> dict:
    """Per-image rotation and shear (radians), scale, and shifts (pixels)."""
    seeds = tf.random.split(seed, 5)
    rotation, shear = math.radians(transforms["rotation"]), math.radians(transforms["shear"])
    zoom, shape = transforms["zoom"], (batch_size,)
    return {
        "angle": _uniform(shape, seeds[0], -rotation, rotation),
        "shear": _uniform(shape, seeds[1], -shear, shear),
        "scale": _uniform(shape, seeds[2], 1.0 - zoom, 1.0 + zoom),
        "shift_x": _uniform(shape, seeds[3], -1.0, 1.0) * (transforms["width_shift"] * width),
        "shift_y": _uniform(shape, seeds[4], -1.0, 1.0) * (transforms["height_shift"] * height),
    }


def affine_matrices(geometry: Mapping[str, Any], height: int, width: int):
    """(batch, 8) output-to-input maps of x' = c + R(angle) Shear(shear) scale (x - c) + shift.

    The forward map is inverted in closed form (its determinant is scale**2) because
    the image op asks, for every output pixel, where to read in the input. In image
    coordinates (y down) a positive angle turns the picture clockwise, a positive shift
    moves it right / down, and scale > 1 magnifies it.
    """
    cos, sin = tf.cos(geometry["angle"]), tf.sin(geometry["angle"])
    tan, scale = tf.tan(geometry["shear"]), geometry["scale"]
    m00, m01 = (sin * tan + cos) / scale, (sin - cos * tan) / scale
    m10, m11 = -sin / scale, cos / scale
    center_x, center_y = (width - 1) / 2.0, (height - 1) / 2.0
    moved_x, moved_y = center_x + geometry["shift_x"], center_y + geometry["shift_y"]
    offset_x = center_x - m00 * moved_x - m01 * moved_y
    offset_y = center_y - m10 * moved_x - m11 * moved_y
    zeros = tf.zeros_like(cos)
    return tf.stack([m00, m01, offset_x, m10, m11, offset_y, zeros, zeros], axis=1)


def apply_geometry(images, geometry: Mapping[str, Any], fill_mode: str, low):
    """Warp each image by its affine matrix, bilinear, pixels from outside filled per `fill_mode`."""
    height, width = images.shape[1], images.shape[2]
    # The op fills with one scalar; shifting to `low` = 0 makes "constant" mean black in every channel.
    warped = keras.ops.image.affine_transform(
        images - low, affine_matrices(geometry, height, width),
        interpolation="bilinear", fill_mode=fill_mode, fill_value=0.0,
    )
    return tf.cast(warped, images.dtype) + low


# --- flips -------------------------------------------------------------------------------------------
def sample_flips(transforms: Mapping[str, Any], batch_size, seed) -> dict:
    """Which images to mirror: each enabled flip with probability 0.5, independently."""
    seeds = tf.random.split(seed, 2)
    chosen = {}
    for index, name in enumerate(("horizontal_flip", "vertical_flip")):
        draw = _uniform((batch_size,), seeds[index], 0.0, 1.0) < 0.5
        chosen[name] = tf.logical_and(draw, bool(transforms[name]))
    return chosen


def apply_flips(images, flips: Mapping[str, Any]):
    for name, axis in (("horizontal_flip", 2), ("vertical_flip", 1)):
        images = tf.where(flips[name][:, None, None, None], tf.reverse(images, axis=[axis]), images)
    return images


# --- brightness and contrast -------------------------------------------------------------------------
def sample_intensity(transforms: Mapping[str, Any], batch_size, seed) -> dict:
    """Per-image brightness delta (a fraction of the value range) and contrast factor."""
    seeds = tf.random.split(seed, 2)
    brightness, contrast, shape = transforms["brightness"], transforms["contrast"], (batch_size,)
    return {
        "brightness": _uniform(shape, seeds[0], -brightness, brightness),
        "contrast": _uniform(shape, seeds[1], 1.0 - contrast, 1.0 + contrast),
    }


def apply_intensity(images, intensity: Mapping[str, Any], low, high):
    """Add the brightness delta, then scale the deviation from each image's channel means."""
    images = images + intensity["brightness"][:, None, None, None] * (high - low)
    means = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    images = (images - means) * intensity["contrast"][:, None, None, None] + means
    return tf.clip_by_value(images, low, high)


# --- random erasing (cutout) ------------------------------------------------------------------------
def sample_erasing(probability: float, batch_size, height: int, width: int, seed) -> dict:
    """Which images lose a rectangle, and its rows [top, bottom) and columns [left, right)."""
    seeds = tf.random.split(seed, 5)
    shape = (batch_size,)
    area = _uniform(shape, seeds[0], *ERASING_AREA)
    aspect = tf.exp(_uniform(shape, seeds[1], math.log(ERASING_ASPECT), -math.log(ERASING_ASPECT)))
    rows = tf.clip_by_value(tf.round(tf.sqrt(area * aspect) * height), 1.0, float(height))
    columns = tf.clip_by_value(tf.round(tf.sqrt(area / aspect) * width), 1.0, float(width))
    top = tf.floor(_uniform(shape, seeds[2], 0.0, 1.0) * (height - rows + 1))
    left = tf.floor(_uniform(shape, seeds[3], 0.0, 1.0) * (width - columns + 1))
    return {
        "erase": _uniform(shape, seeds[4], 0.0, 1.0) < probability,
        "top": top, "bottom": top + rows, "left": left, "right": left + columns,
    }


def apply_erasing(images, erasing: Mapping[str, Any], low):
    """Set each chosen image's rectangle to `low` (black)."""
    height, width = images.shape[1], images.shape[2]
    row = tf.range(height, dtype=tf.float32)[None, :, None, None]
    column = tf.range(width, dtype=tf.float32)[None, None, :, None]

    def expand(name):
        return erasing[name][:, None, None, None]

    inside = ((row >= expand("top")) & (row < expand("bottom"))
              & (column >= expand("left")) & (column < expand("right")) & expand("erase"))
    return tf.where(inside, tf.broadcast_to(low, tf.shape(images)), images)


# --- RandAugment -------------------------------------------------------------------------------------
def sample_randaugment(transforms: Mapping[str, Any], batch_size, seed) -> list[dict]:
    """For each of the `randaugment_ops` rounds: which op each image gets, and its sign."""
    rounds = []
    for round_seed in tf.unstack(tf.random.split(seed, transforms["randaugment_ops"])):
        seeds = tf.random.split(round_seed, 2)
        op = tf.random.stateless_uniform((batch_size,), seeds[0], minval=0, maxval=len(RANDAUGMENT_OPS),
                                         dtype=tf.int32)
        sign = tf.where(_uniform((batch_size,), seeds[1], 0.0, 1.0) < 0.5, -1.0, 1.0)
        rounds.append({"op": op, "sign": sign})
    return rounds


def apply_randaugment_round(images, chosen: Mapping[str, Any], strength: float, fill_mode: str, low, high):
    """One round: every image through its own op (geometric ops as one warp, the rest selected)."""
    height, width = images.shape[1], images.shape[2]
    op, sign = chosen["op"], chosen["sign"]

    def signed(name, amount):
        return tf.where(op == RANDAUGMENT_OPS.index(name), sign * amount, 0.0)

    geometry = {
        "angle": signed("rotate", math.radians(RANDAUGMENT_STRONGEST["rotate"] * strength)),
        "shear": signed("shear", math.radians(RANDAUGMENT_STRONGEST["shear"] * strength)),
        "scale": tf.ones_like(sign),
        "shift_x": signed("translate_x", RANDAUGMENT_STRONGEST["translate"] * strength * width),
        "shift_y": signed("translate_y", RANDAUGMENT_STRONGEST["translate"] * strength * height),
    }
    images = apply_geometry(images, geometry, fill_mode, low)
    unit = (images - low) / (high - low)  # [0, 1] per channel: the ops below are defined there
    factor = 1.0 + sign[:, None, None, None] * RANDAUGMENT_STRONGEST["brightness"] * strength
    means = tf.reduce_mean(unit, axis=[1, 2, 3], keepdims=True)
    contrast = 1.0 + sign[:, None, None, None] * RANDAUGMENT_STRONGEST["contrast"] * strength
    levels = 2.0 ** (8 - round(RANDAUGMENT_STRONGEST["posterize_bits"] * strength))
    smallest = tf.reduce_min(unit, axis=[1, 2], keepdims=True)
    spread = tf.reduce_max(unit, axis=[1, 2], keepdims=True) - smallest
    candidates = {
        "brightness": unit * factor,
        "contrast": (unit - means) * contrast + means,
        "solarize": tf.where(unit > 1.0 - strength, 1.0 - unit, unit),
        "posterize": tf.floor(unit * (levels - 1) + 0.5) / (levels - 1),
        "autocontrast": tf.where(spread > 0, (unit - smallest) / tf.maximum(spread, 1e-12), unit),
    }
    for name, changed in candidates.items():
        unit = tf.where((op == RANDAUGMENT_OPS.index(name))[:, None, None, None], changed, unit)
    return tf.clip_by_value(unit, 0.0, 1.0) * (high - low) + low


def apply_randaugment(images, rounds: list[dict], transforms: Mapping[str, Any], low, high):
    strength = transforms["randaugment_magnitude"] / RANDAUGMENT_MAX_MAGNITUDE
    for chosen in rounds:
        images = apply_randaugment_round(images, chosen, strength, transforms["fill_mode"], low, high)
    return images


# --- MixUp and CutMix (they mix the labels too) ----------------------------------------------------
def _beta(shape, seed, alpha: float):
    """Beta(alpha, alpha) as X / (X + Y) of two stateless gamma draws."""
    seeds = tf.random.split(seed, 2)
    first = tf.random.stateless_gamma(shape, seeds[0], alpha=max(alpha, 1e-3))
    second = tf.random.stateless_gamma(shape, seeds[1], alpha=max(alpha, 1e-3))
    return first / tf.maximum(first + second, 1e-12)


def partners(batch_size, seed):
    """Each image's partner: the next one in a random order of the batch (never itself when
    the batch has two images or more)."""
    order = tf.argsort(_uniform((batch_size,), seed, 0.0, 1.0))
    return tf.gather(tf.roll(order, shift=-1, axis=0), tf.argsort(order))


def sample_mixing(transforms: Mapping[str, Any], batch_size, height: int, width: int, seed) -> dict:
    """Per image: its partner in the batch (a random permutation), whether it is mixed and
    how (CutMix or MixUp, each with probability 0.5 when both are on), the MixUp weight, and
    the CutMix box (rows [top, bottom), columns [left, right)) of area about 1 - lambda."""
    seeds = tf.random.split(seed, 7)
    shape = (batch_size,)
    mixup, cutmix = transforms["mixup_alpha"], transforms["cutmix_alpha"]
    cut_share = 0.5 if mixup and cutmix else (1.0 if cutmix else 0.0)
    cut_lambda = _beta(shape, seeds[3], cutmix)
    rows = tf.round(height * tf.sqrt(1.0 - cut_lambda))
    columns = tf.round(width * tf.sqrt(1.0 - cut_lambda))
    center_y = tf.floor(_uniform(shape, seeds[4], 0.0, 1.0) * height)
    center_x = tf.floor(_uniform(shape, seeds[5], 0.0, 1.0) * width)
    top = tf.clip_by_value(center_y - tf.floor(rows / 2), 0.0, float(height))
    left = tf.clip_by_value(center_x - tf.floor(columns / 2), 0.0, float(width))
    return {
        "partner": partners(batch_size, seeds[0]),
        "mixed": _uniform(shape, seeds[1], 0.0, 1.0) < transforms["mix_probability"],
        "cutmix": _uniform(shape, seeds[2], 0.0, 1.0) < cut_share,
        "mixup_lambda": _beta(shape, seeds[6], mixup),
        "top": top, "bottom": tf.clip_by_value(top + rows, 0.0, float(height)),
        "left": left, "right": tf.clip_by_value(left + columns, 0.0, float(width)),
    }


def apply_mixing(images, labels, mixing: Mapping[str, Any]):
    """(images, labels) mixed with their partners; each label is lambda x own + (1 - lambda) x
    partner's, lambda being the share of the image that is its own (CutMix: outside the box)."""
    height, width = images.shape[1], images.shape[2]
    partner_images = tf.gather(images, mixing["partner"])
    partner_labels = tf.gather(labels, mixing["partner"])
    row = tf.range(height, dtype=tf.float32)[None, :, None]
    column = tf.range(width, dtype=tf.float32)[None, None, :]

    def expand(name):
        return mixing[name][:, None, None]

    in_box = ((row >= expand("top")) & (row < expand("bottom"))
              & (column >= expand("left")) & (column < expand("right")))
    box_lambda = 1.0 - tf.reduce_mean(tf.cast(in_box, tf.float32), axis=[1, 2])
    mixed, cutmix = mixing["mixed"], mixing["cutmix"]
    weight = tf.where(mixed, tf.where(cutmix, box_lambda, mixing["mixup_lambda"]), 1.0)
    blended = weight[:, None, None, None] * images + (1.0 - weight[:, None, None, None]) * partner_images
    pasted = tf.where(in_box[..., None], partner_images, images)
    images = tf.where((mixed & cutmix)[:, None, None, None], pasted, blended)
    labels = tf.cast(labels, tf.float32)
    label_weight = tf.reshape(weight, [-1] + [1] * (len(labels.shape) - 1))
    return images, label_weight * labels + (1.0 - label_weight) * tf.cast(partner_labels, tf.float32)


def build_mixer(transforms: Mapping[str, Any]) -> Callable:
    """`mix(images, labels, seed) -> (images, labels)` for one batch (labels one-hot or a
    binary column, as floats): MixUp and CutMix. Same seed, same mix."""

    def mix(images, labels, seed):
        images = tf.convert_to_tensor(images, tf.float32)
        mix_seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), MIX_STREAM)
        mixing = sample_mixing(transforms, tf.shape(images)[0], images.shape[1], images.shape[2], mix_seed)
        return apply_mixing(images, labels, mixing)

    return mix


# --- the whole policy --------------------------------------------------------------------------------
def build_augmenter(transforms: Mapping[str, Any], low, high) -> Callable:
    """`augment(images, seed) -> images` for one batch: the same seed gives the same output.
    Per-image transforms only; MixUp and CutMix, which mix labels too, are `build_mixer`'s.

    `seed` is a shape-(2,) integer tensor. Transforms set to 0/false are left out of the
    graph, so a policy of rotation only costs one warp.
    """
    low = tf.constant(low, tf.float32)
    high = tf.constant(high, tf.float32)
    geometric = any(transforms[name] for name in ("rotation", "shear", "zoom", "width_shift", "height_shift"))
    flips = transforms["horizontal_flip"] or transforms["vertical_flip"]
    intensity = transforms["brightness"] or transforms["contrast"]

    def augment(images, seed):
        images = tf.convert_to_tensor(images, tf.float32)
        seeds = tf.random.split(tf.cast(seed, tf.int64), NUM_SEEDS)
        batch_size, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
        if geometric:
            geometry = sample_geometry(transforms, batch_size, height, width, seeds[0])
            images = apply_geometry(images, geometry, transforms["fill_mode"], low)
        if flips:
            images = apply_flips(images, sample_flips(transforms, batch_size, seeds[1]))
        if intensity:
            images = apply_intensity(images, sample_intensity(transforms, batch_size, seeds[2]), low, high)
        if transforms["randaugment_ops"]:
            rounds = sample_randaugment(transforms, batch_size, seeds[4])
            images = apply_randaugment(images, rounds, transforms, low, high)
        if transforms["erasing"]:
            erasing = sample_erasing(transforms["erasing"], batch_size, height, width, seeds[3])
            images = apply_erasing(images, erasing, low)
        # Interpolation rounding may step a hair outside the range; the model never sees that.
        return tf.clip_by_value(images, low, high)

    return augment


# --- a resolved policy (the augment stage's policy.json) -----------------------------------------
def policy_augmenter(policy: Mapping[str, Any]) -> Callable:
    """`build_augmenter` of a resolved policy: its transforms within its value range."""
    return build_augmenter(policy["transforms"], policy["value_range"]["low"], policy["value_range"]["high"])


def policy_mixer(policy: Mapping[str, Any]) -> Callable | None:
    """`build_mixer` of a resolved policy, or None when the policy mixes no labels."""
    return build_mixer(policy["transforms"]) if policy.get("mixes_labels") else None


def build_online_augmenter(policy: Mapping[str, Any]) -> Callable:
    """A function mapping a batched (images, labels) tf.data pipeline to its augmented twin.

    Batch number `step` of the whole run (counted across epochs from `first_step`) is
    transformed with the seed pair (policy seed, step): a fresh transform of every image in
    every epoch, repeatable from the seed, and the same after a resumed run starts again at
    a later step. MixUp / CutMix then mix the batch's images and (one-hot) labels, from the
    same seed pair. Stateless, so the map runs in parallel with training.
    """
    augment_batch, mix = policy_augmenter(policy), policy_mixer(policy)
    seed = tf.constant(policy["seed"], dtype=tf.int64)

    def augment_pair(step, batch):
        batch_seed = tf.stack([seed, step])
        images = augment_batch(batch[0], batch_seed)
        return mix(images, batch[1], batch_seed) if mix else (images, batch[1])

    def augment_dataset(dataset, first_step: int = 0):
        return dataset.enumerate(start=first_step).map(augment_pair, num_parallel_calls=tf.data.AUTOTUNE)

    return augment_dataset


def online_augmentation(policy: Mapping[str, Any]) -> Callable | None:
    """`build_online_augmenter` of the augment stage's policy (read_policy) in `online` mode, else None."""
    return build_online_augmenter(policy) if policy["mode"] == "online" else None
