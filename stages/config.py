"""params.yaml -> typed, validated, frozen config objects.

Every key is declared once, with its default, its constraint and a help line (the
params reference in docs/params.md is written from the same declarations). Every bad value is reported with
one message template, naming the key, what is expected and what was received, before a
stage does any work.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stages.errors import ConfigError

DEFAULT_PARAMS_PATH = "params.yaml"
# In `cnnlab init` projects: pins the cnnlab version, a dependency of every stage.
PIN_FILE = "requirements.txt"


# --- constraints -------------------------------------------------------------------------
class Constraint:
    """What one params value may be. `convert` returns the value to use, or raises ValueError."""

    def describe(self) -> str:
        raise NotImplementedError

    def convert(self, value: Any) -> Any:
        raise NotImplementedError


class Interval(Constraint):
    """A number (int or float) between `low` and `high`; either end may be open or absent."""

    def __init__(self, kind: type, low=None, high=None, *, low_open=False, high_open=False):
        self.kind, self.low, self.high = kind, low, high
        self.low_open, self.high_open = low_open, high_open

    def describe(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{noun} in {left}{self.low}, {self.high}{right}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{noun} {'<' if self.high_open else '<='} {self.high}"
        return noun

    def convert(self, value: Any) -> Any:
        allowed = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise ValueError
        if self.kind is float and not math.isfinite(value):
            raise ValueError
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise ValueError
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise ValueError
        return self.kind(value)


class OneOf(Constraint):
    """One of a fixed set of names. `aliases` maps YAML spellings (e.g. `off` -> False) back."""

    def __init__(self, *options: str, aliases: Mapping[Any, str] | None = None):
        self.options = options
        self.aliases = dict(aliases or {})

    def describe(self) -> str:
        return "one of " + ", ".join(repr(option) for option in self.options)

    def convert(self, value: Any) -> Any:
        if not isinstance(value, str) and value in self.aliases:
            return self.aliases[value]
        if isinstance(value, str) and value in self.options:
            return value
        raise ValueError


class Boolean(Constraint):
    def describe(self) -> str:
        return "true or false"

    def convert(self, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError
        return value


class Text(Constraint):
    def describe(self) -> str:
        return "a non-empty string"

    def convert(self, value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise ValueError
        return value


class ListOf(Constraint):
    """A list whose items all satisfy `item`; stored as a tuple so configs stay frozen."""

    def __init__(self, item: Constraint, min_length: int = 0, max_length: int | None = None):
        self.item, self.min_length, self.max_length = item, min_length, max_length

    def describe(self) -> str:
        if self.max_length is not None and self.max_length == self.min_length:
            size = f"exactly {self.min_length} "
        else:
            size = f"at least {self.min_length} " if self.min_length else ""
            size += f"at most {self.max_length} " if self.max_length is not None else ""
        return f"a list of {size}items, each {self.item.describe()}"

    def convert(self, value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) < self.min_length:
            raise ValueError
        if self.max_length is not None and len(value) > self.max_length:
            raise ValueError
        return tuple(self.item.convert(item) for item in value)


class FractionOrCount(Constraint):
    """A share of the images (a float strictly between 0 and 1) or a number of images (an int >= 1)."""

    def describe(self) -> str:
        return "a fraction in (0, 1) such as 0.1, or a whole number of images >= 1 such as 5000"

    def convert(self, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            if value < 1:
                raise ValueError
            return value
        if isinstance(value, float) and 0 < value < 1:
            return value
        raise ValueError


class OrSpecial(Constraint):
    """One special value (`null`, 'auto') or a value that satisfies `inner`."""

    def __init__(self, special: Any, shown: str, inner: Constraint):
        self.special, self.shown, self.inner = special, shown, inner

    def describe(self) -> str:
        return f"{self.shown} or {self.inner.describe()}"

    def convert(self, value: Any) -> Any:
        return self.special if value == self.special else self.inner.convert(value)


def Nullable(inner: Constraint) -> OrSpecial:  # noqa: N802 (reads as a constraint type)
    """`null` (None) or a value that satisfies `inner`."""
    return OrSpecial(None, "null", inner)


def OrAuto(inner: Constraint) -> OrSpecial:  # noqa: N802
    """'auto' (the stage chooses from the data, and records its choice) or a value of `inner`."""
    return OrSpecial(AUTO, "'auto'", inner)


class PerBlock(Constraint):
    """One value for every block (conv block, dense layer), or a list with one value per block
    (its length is checked by the group's `check`); a list is stored as a tuple."""

    def __init__(self, item: Constraint, block: str = "conv block"):
        self.item, self.block = item, block

    def describe(self) -> str:
        return f"{self.item.describe()}, or a list of those with one per {self.block}"

    def convert(self, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError
            return tuple(self.item.convert(item) for item in value)
        return self.item.convert(value)


class BaseModel(Constraint):
    """A Keras Applications name from `APPLICATIONS`, or the path of a saved `.keras` model."""

    def describe(self) -> str:
        return f"one of {', '.join(repr(name) for name in APPLICATIONS)}, or a path ending in .keras"

    def convert(self, value: Any) -> Any:
        if isinstance(value, str) and (value in APPLICATIONS or value.endswith(".keras")):
            return value
        raise ValueError


class BaseWeights(Constraint):
    """'imagenet', 'none' (random initialization), or the path of a Keras weights file."""

    def describe(self) -> str:
        return "'imagenet', 'none', or a path ending in .h5 (a Keras weights file)"

    def convert(self, value: Any) -> Any:
        if value is None:
            return "none"
        if isinstance(value, str) and (value in ("imagenet", "none") or value.endswith(".h5")):
            return value
        raise ValueError


class ClassWeights(Constraint):
    """'none', 'balanced', or a mapping from class (name or index) to a positive weight; a
    mapping is stored with string keys (YAML's integer keys too), checked against the classes
    by `train`, which knows them."""

    def describe(self) -> str:
        return "'none', 'balanced', or a mapping {class name or index: weight > 0} such as {3: 2.0}"

    def convert(self, value: Any) -> Any:
        if value is None or value in ("none", "balanced"):
            return value or "none"
        if not isinstance(value, Mapping) or not value:
            raise ValueError
        weights = {}
        for key, weight in value.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise ValueError
            weights[str(key)] = Interval(float, 0, 1e6, low_open=True).convert(weight)
        return weights


def per_block(value: Any, blocks: int) -> tuple:
    """A PerBlock value as one entry per block."""
    return tuple(value) if isinstance(value, tuple) else (value,) * blocks


def param(default: Any, constraint: Constraint, help: str) -> Any:
    """Declare one params key: its default, what it accepts, and one line for the params reference."""
    return field(default=default, metadata={"constraint": constraint, "help": help})


def short_repr(value: Any, limit: int = 80) -> str:
    """repr() of a received value, bounded: a few items of each list and mapping, a few levels
    deep, so that a huge value (a YAML alias bomb expands to billions of items) is never built."""
    shortener = reprlib.Repr()
    shortener.maxlevel, shortener.maxlist, shortener.maxdict, shortener.maxtuple = 3, 4, 4, 4
    shortener.maxstring = shortener.maxother = limit
    text = shortener.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def bad_value(key: str, expected: str, received: Any, source: str = DEFAULT_PARAMS_PATH) -> ConfigError:
    """The one message template for every bad params value."""
    return ConfigError(
        f"{source}: '{key}' must be {expected}, got {short_repr(received)}; "
        f"fix it in {source} or pass -S {key}=<value> to dvc exp run"
    )


# --- the params groups ---------------------------------------------------------------------
AUTO = "auto"
COLOR_MODES = ("rgb", "grayscale")    # stages.images.COLOR_MODES maps them to Pillow modes
AUTO_MAX_SIDE = 256                   # prepare.image_size=auto never exceeds this per side
NORMALIZATIONS = ("unit", "standardize")
DEDUPLICATE_MODES = ("none", "exact", "near")
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "folder")
ARCHITECTURES = ("linear", "mlp", "cnn", "transfer")
ACTIVATIONS = ("relu", "elu", "selu", "leaky_relu", "gelu", "tanh", "sigmoid")
POOLINGS = ("max", "average", "none")
PADDINGS = ("valid", "same")
# Keras Applications offered as transfer bases: class name, input preprocessing, smallest input side.
APPLICATIONS = {
    "mobilenet_v2": ("MobileNetV2", "tf", 32),
    "mobilenet_v3_small": ("MobileNetV3Small", "raw", 32),
    "efficientnet_b0": ("EfficientNetB0", "raw", 32),
    "resnet50_v2": ("ResNet50V2", "tf", 32),
    "densenet121": ("DenseNet121", "torch", 32),
}
OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw", "nadam")
SCHEDULES = ("constant", "exponential", "step", "cosine", "one_cycle", "plateau")
LOSSES = ("auto", "categorical", "sparse_categorical", "binary")
MONITORS = ("val_accuracy", "val_loss", "accuracy", "loss")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


@dataclass(frozen=True)
class PrepareParams:
    dataset: str = param("digits", OneOf(*DATASETS), "dataset source to load")
    data_dir: str | None = param(
        None, Nullable(Text()),
        "where the dataset lies: the folder of class sub-folders for `folder` (required); "
        "for the standard datasets the first place searched (null = only the known places)",
    )
    test_dir: str | None = param(
        None, Nullable(Text()),
        "`folder` only: a separate folder of class sub-folders used as the test set "
        "(null = hold out test_split)",
    )
    image_size: tuple[int, ...] | str = param(
        AUTO, OrAuto(ListOf(Interval(int, 1, 4096), min_length=2, max_length=2)),
        "`folder` only: [height, width] every image is resized to; auto: the median height and "
        f"width of data_dir's images, scaled down to at most {AUTO_MAX_SIDE} per side",
    )
    color_mode: str = param(
        AUTO, OneOf(AUTO, *COLOR_MODES),
        "`folder` only: channels every image is converted to; auto: grayscale when every "
        "image in data_dir is grayscale, else rgb",
    )
    val_split: float | int = param(
        0.15, FractionOrCount(),
        "validation images held out from train (stratified): a fraction, or a count",
    )
    test_split: float | int = param(
        0.15, FractionOrCount(),
        "test images held out, for sources without their own test split (digits, "
        "folder without test_dir): a fraction, or a count",
    )
    normalization: str = param(
        "unit", OneOf(*NORMALIZATIONS),
        "unit: pixels / max value, in [0, 1]; standardize: then per-channel mean 0 and "
        "std 1, with the statistics of the train split",
    )
    limit: int | None = param(
        None, Nullable(Interval(int, 1)),
        "at most this many images per class from each source split, drawn with the seed "
        "(null = all); for quick runs",
    )
    deduplicate: str = param(
        "none", OneOf(*DEDUPLICATE_MODES),
        "none: only count duplicates (meta.json, report); exact: drop every image with an identical "
        "copy earlier in train -> val -> test (within-split copies, and val/test images leaked from an "
        "earlier split); near: also drop val/test images with a near duplicate in an earlier split",
    )
    near_distance: int | None = param(
        0, Nullable(Interval(int, 0, 4)),
        "near duplicates: perceptual hashes (imagehash pHash, 64 bits) differing in at most this many "
        "bits; 0 = identical hashes (fast); each step up finds more pairs and costs more time; "
        "null = exact duplicates only (skips the perceptual hash, the larger part of the time)",
    )
    near_difference: float = param(
        0.025, Interval(float, 0.0, 1.0),
        "near duplicates: and pixels differing by at most this much on average (fraction of the "
        "full range; a JPEG re-encode differs by about 0.015, look-alike photos by more than 0.03)",
    )

    def check(self, source: str) -> None:
        fractions = isinstance(self.val_split, float) and isinstance(self.test_split, float)
        if fractions and self.val_split + self.test_split >= 0.9:
            raise bad_value(
                "prepare.val_split", "such that val_split + test_split < 0.9",
                self.val_split, source,
            )
        if self.dataset == "folder" and self.data_dir is None:
            raise bad_value(
                "prepare.data_dir", "a folder of class sub-folders when prepare.dataset is 'folder'",
                self.data_dir, source,
            )
        if self.test_dir is not None and self.dataset != "folder":
            raise bad_value(
                "prepare.test_dir",
                "null unless prepare.dataset is 'folder' (the other sources bring their own test split)",
                self.test_dir, source,
            )


AUGMENT_MODES = ("off", "online", "offline")
FILL_MODES = ("constant", "nearest", "reflect", "wrap")


@dataclass(frozen=True)
class AugmentParams:
    # YAML 1.1 reads a bare `off` as false: accept both spellings.
    mode: str = param(
        "off", OneOf(*AUGMENT_MODES, aliases={False: "off"}),
        "off: prepared training set; online: fresh random transforms every epoch, in memory; "
        "offline: `copies` augmented copies written to data/augmented",
    )
    copies: int = param(1, Interval(int, 1, 100), "offline: augmented copies per training image")
    seed: int | None = param(
        None, Nullable(Interval(int, 0, 2**31 - 1)), "augmentation seed (null = the top-level seed)"
    )
    rotation: float = param(10.0, Interval(float, 0, 180), "random rotation in [-rotation, rotation] degrees")
    width_shift: float = param(
        0.1, Interval(float, 0, 1, high_open=True), "random horizontal shift, fraction of the width"
    )
    height_shift: float = param(
        0.1, Interval(float, 0, 1, high_open=True), "random vertical shift, fraction of the height"
    )
    zoom: float = param(
        0.1, Interval(float, 0, 1, high_open=True), "random scale in [1 - zoom, 1 + zoom] (> 1 magnifies)"
    )
    shear: float = param(
        0.0, Interval(float, 0, 90, high_open=True), "random shear angle in [-shear, shear] degrees"
    )
    horizontal_flip: bool = param(
        False, Boolean(), "mirror left-right with probability 0.5 (wrong for digits)"
    )
    vertical_flip: bool = param(False, Boolean(), "mirror top-bottom with probability 0.5")
    brightness: float = param(
        0.0, Interval(float, 0, 1), "add a random delta in [-brightness, brightness] x the value range"
    )
    contrast: float = param(
        0.0, Interval(float, 0, 1),
        "scale each image's deviation from its mean by a random factor in [1 - contrast, 1 + contrast]",
    )
    erasing: float = param(
        0.0, Interval(float, 0, 1),
        "probability of erasing a random rectangle (2-40% of the image) to the fill value (cutout)",
    )
    fill_mode: str = param(
        "constant", OneOf(*FILL_MODES),
        "how pixels moved in from outside are filled (constant = black)",
    )
    randaugment_ops: int = param(
        0, Interval(int, 0, 10),
        "RandAugment: transforms per image, each drawn from identity, rotate, shear, translate x/y, "
        "brightness, contrast, solarize, posterize, autocontrast (0 = off)",
    )
    randaugment_magnitude: int = param(
        9, Interval(int, 0, 30), "RandAugment: strength of every transform, 0 (none) to 30 (strongest)"
    )
    mixup_alpha: float = param(
        0.0, Interval(float, 0, 10),
        "online only: MixUp, blend each image and its label with another's; the own share is drawn "
        "from Beta(alpha, alpha) (0 = off; 0.2 to 0.4 usual)",
    )
    cutmix_alpha: float = param(
        0.0, Interval(float, 0, 10),
        "online only: CutMix, paste a box of another image, labels mixed by area; the own share is "
        "drawn from Beta(alpha, alpha) (0 = off; 1.0 usual)",
    )
    mix_probability: float = param(
        1.0, Interval(float, 0, 1),
        "MixUp/CutMix: share of the training images mixed (with both on, each mixed image gets one "
        "of the two with probability 0.5)",
    )

    def mixes_labels(self) -> bool:
        """MixUp or CutMix on: training labels become mixtures of two classes."""
        return bool(self.mix_probability) and bool(self.mixup_alpha or self.cutmix_alpha)

    def is_identity(self) -> bool:
        """True when no transform would change an image."""
        amounts = (self.rotation, self.width_shift, self.height_shift, self.zoom, self.shear,
                   self.brightness, self.contrast, self.erasing, self.randaugment_ops)
        return (not any(amounts) and not self.horizontal_flip and not self.vertical_flip
                and not self.mixes_labels())

    def check(self, source: str) -> None:
        if self.mode != "off" and self.is_identity():
            raise bad_value(
                "augment.mode",
                "'off' when every transform is 0 or false (set e.g. augment.rotation=10 to augment)",
                self.mode, source,
            )
        if self.mixes_labels() and self.mode != "online":
            key = "augment.mixup_alpha" if self.mixup_alpha else "augment.cutmix_alpha"
            raise bad_value(key, "0 unless augment.mode is 'online' (MixUp and CutMix mix each batch's "
                            "labels as it is drawn; stored copies keep one class per image)",
                            getattr(self, key.split(".")[1]), source)


@dataclass(frozen=True)
class ModelParams:
    architecture: str = param(
        "cnn", OneOf(*ARCHITECTURES),
        "linear: the classification layer alone; mlp: hidden dense layers; cnn: conv blocks, "
        "then dense layers; transfer: a pretrained base with a new head",
    )
    conv_filters: tuple[int, ...] = param(
        (32, 64), ListOf(Interval(int, 1, 4096), min_length=1),
        "cnn: filters of each conv block (Conv2D, then optional BatchNormalization, pooling, dropout)",
    )
    kernel_size: int | tuple[int, ...] = param(
        3, PerBlock(Interval(int, 1, 15)), "cnn: side of the square conv kernels"
    )
    strides: int | tuple[int, ...] = param(1, PerBlock(Interval(int, 1, 8)), "cnn: conv strides")
    padding: str | tuple[str, ...] = param(
        "same", PerBlock(OneOf(*PADDINGS)), "cnn: conv padding (same keeps the size at stride 1)"
    )
    pooling: str | tuple[str, ...] = param(
        "max", PerBlock(OneOf(*POOLINGS)), "cnn: pooling after each conv block"
    )
    pool_size: int | tuple[int, ...] = param(
        2, PerBlock(Interval(int, 1, 8)), "cnn: pooling window side (also its stride)"
    )
    pool_padding: str | tuple[str, ...] = param(
        "same", PerBlock(OneOf(*PADDINGS)), "cnn: pooling padding (same keeps odd-sized rows)"
    )
    global_pooling: bool = param(
        False, Boolean(),
        "cnn and transfer: GlobalAveragePooling2D instead of Flatten before the dense layers",
    )
    dense_units: tuple[int, ...] = param(
        (64,), ListOf(Interval(int, 1, 65536)),
        "mlp, cnn, transfer: units of the hidden dense layers, before the classifier",
    )
    activation: str = param("relu", OneOf(*ACTIVATIONS), "activation of the hidden layers")
    batch_norm: bool = param(
        False, Boolean(),
        "BatchNormalization between each hidden conv/dense layer and its activation",
    )
    residual: bool = param(
        False, Boolean(),
        "cnn: every conv block after the first is a residual block: two convolutions with "
        "BatchNormalization added to the block's input (needs batch_norm and same padding)",
    )
    separable: bool = param(
        False, Boolean(),
        "cnn: depthwise-separable convolutions (SeparableConv2D) in every conv block after the first",
    )
    conv_dropout: float | tuple[float, ...] = param(
        0.0, PerBlock(Interval(float, 0, 1, high_open=True)),
        "cnn: dropout rate at the end of each conv block (0 = none)",
    )
    dense_dropout: float | tuple[float, ...] = param(
        0.25, PerBlock(Interval(float, 0, 1, high_open=True), "dense layer"),
        "dropout rate after each hidden dense layer, or a list with one per layer (0 = none)",
    )
    l1: float = param(0.0, Interval(float, 0, 1), "L1 penalty on every conv/dense kernel (0 = none)")
    l2: float = param(
        0.0, Interval(float, 0, 1), "L2 penalty (Keras: l2 x sum of squared weights) on every kernel"
    )
    max_norm: float | None = param(
        None, Nullable(Interval(float, 0, 100, low_open=True)),
        "max-norm constraint on each unit's incoming weights (null = none)",
    )
    base_model: str | None = param(
        None, Nullable(BaseModel()),
        "transfer: a Keras Applications name or a saved .keras model (its last layer is dropped)",
    )
    base_weights: str = param(
        "imagenet", BaseWeights(),
        "transfer, applications only: imagenet (downloaded, or Keras's cache), a local .h5 "
        "weights file, or none",
    )
    base_image_size: int | None = param(
        None, Nullable(Interval(int, 32, 1024)),
        "transfer, applications only: side images are resized to (null = the image side, at least 32)",
    )
    base_trainable_layers: int = param(
        0, Interval(int, 0, 10000),
        "transfer: how many of the base's last layers learn (0 = the whole base frozen)",
    )

    def check(self, source: str) -> None:
        blocks = len(self.conv_filters)
        for name in ("kernel_size", "strides", "padding", "pooling", "pool_size", "pool_padding",
                     "conv_dropout"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != blocks:
                raise bad_value(
                    f"model.{name}", f"one value, or a list of {blocks} (one per entry of "
                    "model.conv_filters)", list(value), source,
                )
        dropout = self.dense_dropout
        if isinstance(dropout, tuple) and len(dropout) != len(self.dense_units):
            raise bad_value(
                "model.dense_dropout", f"one value, or a list of {len(self.dense_units)} (one per "
                "entry of model.dense_units)", list(dropout), source,
            )
        if self.residual and not self.batch_norm:
            raise bad_value("model.batch_norm", "true when model.residual is true (residual blocks "
                            "normalize each convolution)", self.batch_norm, source)
        if self.residual and "valid" in per_block(self.padding, blocks)[1:]:
            raise bad_value("model.padding", "'same' for every block after the first when model.residual "
                            "is true (the sum needs the input's size)", self.padding, source)
        if self.architecture == "transfer" and self.base_model is None:
            raise bad_value(
                "model.base_model", "a Keras Applications name or a .keras path when "
                "model.architecture is 'transfer'", None, source,
            )


@dataclass(frozen=True)
class TrainParams:
    optimizer: str = param(
        "adam", OneOf(*OPTIMIZERS),
        "sgd, momentum (SGD + momentum), nesterov, rmsprop, adam, adamw (decoupled weight decay), nadam",
    )
    learning_rate: float = param(
        0.001, Interval(float, 0, 10, low_open=True), "initial (or peak, after warm-up) learning rate"
    )
    momentum: float = param(
        0.9, Interval(float, 0, 1, high_open=True), "momentum and nesterov: the momentum coefficient"
    )
    weight_decay: float = param(
        0.004, Interval(float, 0, 1), "adamw: decoupled weight decay"
    )
    schedule: str = param(
        "constant", OneOf(*SCHEDULES),
        "learning-rate schedule: constant; exponential (x decay_rate every decay_epochs, smoothly); "
        "step (the same in steps); cosine (to min_learning_rate at the last epoch); one_cycle "
        "(from learning_rate / 25 up to learning_rate over warmup_epochs, then cosine down to "
        "min_learning_rate); plateau (x decay_rate when the monitor stalls for plateau_patience epochs)",
    )
    decay_rate: float = param(
        0.5, Interval(float, 0, 1, low_open=True, high_open=True),
        "exponential, step, plateau: factor the learning rate is multiplied by",
    )
    decay_epochs: int = param(10, Interval(int, 1, 10000), "exponential, step: epochs per decay")
    warmup_epochs: int = param(
        0, Interval(int, 0, 10000),
        "cosine: epochs of linear warm-up from 0 to learning_rate; one_cycle: from learning_rate / 25",
    )
    min_learning_rate: float = param(
        0.0, Interval(float, 0, 10), "cosine, one_cycle: final learning rate; plateau: lowest learning rate"
    )
    plateau_patience: int = param(
        2, Interval(int, 1, 10000), "plateau: epochs without improvement before decaying"
    )
    loss: str = param(
        "auto", OneOf(*LOSSES),
        "auto: categorical (one-hot labels) for 3+ classes, binary for 2; sparse_categorical: "
        "integer labels; binary: one sigmoid unit, 2 classes only",
    )
    label_smoothing: float = param(
        0.0, Interval(float, 0, 1, high_open=True), "categorical and binary: label smoothing"
    )
    clip_norm: float | None = param(
        None, Nullable(Interval(float, 0, 1e6, low_open=True)),
        "clip each gradient to this L2 norm (null = no clipping)",
    )
    clip_value: float | None = param(
        None, Nullable(Interval(float, 0, 1e6, low_open=True)),
        "clip each gradient element to [-clip_value, clip_value] (null = no clipping)",
    )
    class_weight: str | dict = param(
        "none", ClassWeights(),
        "weight of each class in the training loss: none (all 1), balanced (n_images / (n_classes x "
        "class count), scikit-learn's), or {class name or index: weight} (classes left out: 1)",
    )
    ema: float | None = param(
        None, Nullable(Interval(float, 0, 1, low_open=True, high_open=True)),
        "exponential moving average of the weights, this momentum per step (e.g. 0.99): validation "
        "and the saved model use the averaged weights (null = off)",
    )
    batch_size: int = param(32, Interval(int, 1, 65536), "images per gradient step")
    epochs: int = param(30, Interval(int, 1, 10000), "passes over the training set (at most)")
    monitor: str = param(
        "val_accuracy", OneOf(*MONITORS),
        "metric that chooses the best epoch (kept in models/model.keras) and drives early stopping",
    )
    min_delta: float = param(
        0.0, Interval(float, 0, 1e6), "smallest change of the monitor that counts as an improvement"
    )
    patience: int | None = param(
        None, Nullable(Interval(int, 1, 10000)),
        "early stopping: stop after this many epochs without improvement (null = never)",
    )
    fine_tune_epochs: int = param(
        0, Interval(int, 0, 10000),
        "transfer: after `epochs` with the base frozen, train this many more with the last "
        "model.base_trainable_layers base layers unfrozen (0 = one phase)",
    )
    fine_tune_learning_rate: float = param(
        1e-5, Interval(float, 0, 10, low_open=True), "transfer: constant learning rate of fine-tuning"
    )
    precision: str = param(
        "float32", OneOf(*PRECISIONS),
        "float32, or mixed precision (bfloat16/float16 compute, float32 weights); auto: "
        "mixed_bfloat16 where the CPU or GPU computes bfloat16 natively, else float32",
    )
    workers: int = param(
        1, Interval(int, 1, 1024),
        "processes that train one model together (MultiWorkerMirroredStrategy, batch_size the "
        "global batch), placed on a Ray cluster by Ray Train (RAY_ADDRESS or `cnnlab train --ray`); "
        "1 = this process alone (or the workers TF_CONFIG names)",
    )

    def check(self, source: str) -> None:
        if self.warmup_epochs and self.schedule not in ("cosine", "one_cycle"):
            raise bad_value("train.warmup_epochs", "0 unless train.schedule is 'cosine' or 'one_cycle'",
                            self.warmup_epochs, source)
        if self.schedule == "one_cycle" and not self.warmup_epochs:
            raise bad_value("train.warmup_epochs", "at least 1 when train.schedule is 'one_cycle' (the "
                            "rising half of the cycle)", self.warmup_epochs, source)
        if self.warmup_epochs >= self.epochs:
            raise bad_value("train.warmup_epochs", f"less than train.epochs ({self.epochs})",
                            self.warmup_epochs, source)
        if self.min_learning_rate >= self.learning_rate:
            raise bad_value("train.min_learning_rate",
                            f"less than train.learning_rate ({self.learning_rate})",
                            self.min_learning_rate, source)
        if self.clip_norm is not None and self.clip_value is not None:
            raise bad_value("train.clip_value", "null when train.clip_norm is set (clip one way)",
                            self.clip_value, source)
        if self.label_smoothing and self.loss == "sparse_categorical":
            raise bad_value("train.label_smoothing",
                            "0 with the sparse_categorical loss (use categorical to smooth)",
                            self.label_smoothing, source)

@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = param(256, Interval(int, 1, 65536), "images per prediction batch")
    top_k: int = param(
        3, Interval(int, 1, 1000),
        "k of top_k_accuracy: a test image counts as right if its class is among the k most "
        "probable (capped at the number of classes)",
    )
    misclassified_images: int = param(
        25, Interval(int, 0, 400),
        "most confident mistakes drawn in the misclassified-examples grid (0 = no grid)",
    )
    feature_map_layers: int = param(
        2, Interval(int, 0, 16),
        "first convolutional layers whose activations are drawn for one test image (0 = none)",
    )
    test_time_flip: bool = param(
        False, Boolean(),
        "test-time augmentation: average the predictions for each image and its left-right mirror "
        "(for data whose mirror images keep their class: clothes, objects; never digits)",
    )


@dataclass(frozen=True)
class ReportParams:
    title: str = param("cnnlab report", Text(), "heading of reports/report.md")
    base_rev: str | None = param(
        "main", Nullable(Text()),
        "git revision whose committed test results the report compares with (deltas, verdict); "
        "skipped when it or its results do not exist; null = no comparison",
    )
    figure_dpi: int = param(
        100, Interval(int, 50, 300), "resolution of the PNG figures (report and evaluate)"
    )
    # The fit diagnosis is made by the report stage from the training history (no model
    # needed), so its thresholds live here: changing them re-writes only the report.
    underfit_error: float = param(
        0.10, Interval(float, 0, 1, low_open=True, high_open=True),
        "training error (1 - accuracy) at the best epoch above which the model underfits",
    )
    overfit_gap: float = param(
        0.05, Interval(float, 0, 1, low_open=True, high_open=True),
        "validation error minus training error at the best epoch above which the model overfits",
    )
    imbalance_ratio: float = param(
        3.0, Interval(float, 1, 1e6),
        "the report warns when the largest training class has more than this many times the images "
        "of the smallest and train.class_weight is none",
    )


@dataclass(frozen=True)
class Params:
    seed: int = param(42, Interval(int, 0, 2**31 - 1), "drives splits, initialization, shuffling")
    prepare: PrepareParams = field(default_factory=PrepareParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    report: ReportParams = field(default_factory=ReportParams)

    def check(self, source: str) -> None:
        if self.train.fine_tune_epochs and (
            self.model.architecture != "transfer" or not self.model.base_trainable_layers
        ):
            raise bad_value(
                "train.fine_tune_epochs", "0 unless model.architecture is 'transfer' and "
                "model.base_trainable_layers > 0 (the layers to fine-tune)",
                self.train.fine_tune_epochs, source,
            )
        if self.augment.mixes_labels() and self.train.loss == "sparse_categorical":
            raise bad_value("train.loss", "'categorical' or 'auto' when augment.mixup_alpha or "
                            "augment.cutmix_alpha is on (mixed labels are class probabilities, not "
                            "integers)", self.train.loss, source)


# --- parsing -----------------------------------------------------------------------------------
def _parse(cls: type, raw: Any, prefix: str, source: str) -> Any:
    """Build the frozen dataclass `cls` from a mapping, checking every key and value."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise bad_value(prefix or "<top level>", "a mapping of keys to values", raw, source)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"did you mean '{prefix}{close[0]}'? " if close else ""
            raise ConfigError(
                f"{source}: unknown key '{prefix}{key}'; {hint}"
                f"known keys here: {', '.join(fields)}; remove or rename it"
            )
    values = {}
    for name, spec in fields.items():
        if "constraint" not in spec.metadata:  # a nested group
            values[name] = _parse(spec.default_factory, raw.get(name), f"{name}.", source)
            continue
        value = raw.get(name, spec.default)
        try:
            values[name] = spec.metadata["constraint"].convert(value)
        except (ValueError, TypeError):
            raise bad_value(prefix + name, spec.metadata["constraint"].describe(), value, source) from None
    parsed = cls(**values)
    if hasattr(parsed, "check"):
        parsed.check(source)
    return parsed


def parse_params(raw: Any, source: str = DEFAULT_PARAMS_PATH) -> Params:
    if not isinstance(raw, Mapping):
        held = "nothing (it is empty or all comments)" if raw is None else f"a {type(raw).__name__}"
        raise ConfigError(f"{source}: holds {held}, not a mapping of settings such as 'seed: 42'; "
                          f"restore it (git checkout {source})")
    return _parse(Params, raw, "", source)


# Params nest a few levels deep. Before Python's recursion limit stops it, ruamel's scanner
# spends time quadratic in the depth of [ and { brackets: 2 s on a line of 5,000 "[".
MAX_FLOW_DEPTH = 100


def flow_depth(text: str) -> int:
    """The deepest nesting of [ and { brackets in `text`, those in quotes and comments counted
    too (an upper bound)."""
    depth = deepest = 0
    for bracket in re.findall(r"[\[\]{}]", text):
        depth = depth + 1 if bracket in "[{" else max(0, depth - 1)
        deepest = max(deepest, depth)
    return deepest


def read_yaml(text: str, source: str = DEFAULT_PARAMS_PATH) -> Any:
    """Parse params YAML exactly as DVC does (ruamel.yaml's safe loader, YAML 1.2), so that
    `off`, `no` and `yes` stay strings and every `dvc exp run -S` round trip means the same
    thing to cnnlab as to DVC."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    too_deep = ConfigError(f"{source}: nested too deeply to be params; fix the brackets or the indentation")
    if flow_depth(text) > MAX_FLOW_DEPTH:
        raise too_deep
    try:
        return YAML(typ="safe", pure=True).load(text)
    except RecursionError:  # nested block collections: "- - - ..."
        raise too_deep from None
    except YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None)
        what = f" ({problem.splitlines()[0]})" if problem else ""
        raise ConfigError(f"{source}: not valid YAML{where}{what}; fix the syntax") from None


def load_params(path: str | Path = DEFAULT_PARAMS_PATH) -> Params:
    """Read and validate params.yaml; raise ConfigError with one clear line if anything is off."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: params file not found; run cnnlab from the project folder "
            "(the one with dvc.yaml) or pass --params"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a params file; pass --params with the path "
                          "of a params.yaml file") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                          f"{error.start}); save it as UTF-8") from None
    check_pinned_version(path.parent)
    raw = read_yaml(text, str(path))
    if (path.parent / "dvc.yaml").is_file():
        check_dvc_params_present(raw, read_yaml((path.parent / "dvc.yaml").read_text(encoding="utf-8"),
                                                str(path.parent / "dvc.yaml")), str(path))
    return parse_params(raw, str(path))


def check_dvc_params_present(raw: Any, pipeline: Any, source: str) -> None:
    """DVC refuses to run a stage unless every params key it lists in dvc.yaml is in params.yaml
    (cnnlab alone would take the defaults): say so before the first stage runs, not after
    training, at the stage that needs the key."""
    stages = (pipeline or {}).get("stages") or {} if isinstance(pipeline, Mapping) else {}
    for stage in stages.values():
        for key in (stage or {}).get("params") or []:
            if not isinstance(key, str):
                continue  # keys of another params file
            value = raw
            for part in key.split("."):
                if not isinstance(value, Mapping) or part not in value:
                    raise ConfigError(
                        f"{source}: '{key}' is missing, and DVC runs no stage whose params "
                        f"(listed in dvc.yaml) are not all there; add '{key}' (an empty group "
                        "takes cnnlab's defaults) or start from a complete params file such as "
                        "the shipped params.yaml"
                    )
                value = value[part]


def check_pinned_version(project_dir: Path) -> None:
    """In a project made by `cnnlab init`, requirements.txt pins the cnnlab that runs the stages
    (every stage depends on it in dvc.yaml): refuse to run another version, whose results DVC
    would record as the pinned one's."""
    import importlib.metadata
    import re

    pin_file = project_dir / PIN_FILE
    text = pin_file.read_text(encoding="utf-8", errors="replace") if pin_file.is_file() else ""
    pinned = re.search(r"^\s*cnnlab\s*==\s*([^\s#;]+)", text, re.MULTILINE)
    installed = importlib.metadata.version("cnnlab")
    if pinned and pinned.group(1) != installed:
        raise ConfigError(
            f"{pin_file}: pins cnnlab=={pinned.group(1)} but cnnlab {installed} is installed; "
            f"install the pinned one (pip install -r {pin_file}) or pin cnnlab=={installed} there "
            "to re-run the pipeline with it (dvc repro)"
        )


def yaml_value(value: Any) -> str:
    """One value as flow-style YAML that reads back as the same value (JSON would write
    1e-05, which YAML 1.1 reads as a string)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def describe_params() -> list[tuple[str, str, str, str]]:
    """(key, default, allowed, help) for every key: the params reference (docs/params.md)."""
    rows = []

    def walk(cls: type, prefix: str) -> None:
        for spec in dataclasses.fields(cls):
            if "constraint" not in spec.metadata:
                walk(spec.default_factory, f"{spec.name}.")
                continue
            default = spec.default
            shown = yaml_value(list(default) if isinstance(default, tuple) else default)
            rows.append(
                (prefix + spec.name, shown, spec.metadata["constraint"].describe(), spec.metadata["help"])
            )

    walk(Params, "")
    return rows


def params_table_markdown() -> str:
    """The params reference table (docs/params.md), generated from the declarations (`make params-table`)."""
    lines = ["| key | default | allowed | what it does |", "|---|---|---|---|"]
    lines += [f"| `{key}` | `{default}` | {allowed} | {help} |" for key, default, allowed, help in describe_params()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(params_table_markdown())
