"""What `model.compile` gets from the `train` params: optimizer, learning-rate schedule, loss.

Schedules that depend only on the step count are Keras LearningRateSchedules (they live in
the optimizer and resume with its step counter); reduce-on-plateau reacts to the monitored
metric, so it is a callback (see stages.checkpoints for how its state survives a restart).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from stages.config import TrainParams, bad_value

ONE_CYCLE_DIVISOR = 25.0  # one_cycle starts at learning_rate / 25, as fast.ai's fit_one_cycle


@dataclass(frozen=True)
class LossChoice:
    """The loss, the matching accuracy metric, and how integer labels are fed to them."""

    name: str          # categorical, sparse_categorical or binary
    label_format: str  # one_hot, integer or binary (a (N, 1) float column)


def choose_loss(params: TrainParams, num_classes: int) -> LossChoice:
    """`train.loss` resolved against the class count; impossible pairs are the user's to fix."""
    name = params.loss
    if name == "auto":
        name = "binary" if num_classes == 2 else "categorical"
    if (name == "binary") != (num_classes == 2):
        expected = ("'binary' or 'auto' (two classes: one sigmoid output)" if num_classes == 2
                    else f"'categorical', 'sparse_categorical' or 'auto' ({num_classes} classes)")
        raise bad_value("train.loss", f"{expected} for this dataset", params.loss)
    label_format = {"categorical": "one_hot", "sparse_categorical": "integer", "binary": "binary"}[name]
    return LossChoice(name, label_format)


def make_loss(choice: LossChoice, params: TrainParams):
    import keras

    if choice.name == "binary":
        return keras.losses.BinaryCrossentropy(label_smoothing=params.label_smoothing)
    if choice.name == "categorical":
        return keras.losses.CategoricalCrossentropy(label_smoothing=params.label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()


def make_accuracy(choice: LossChoice):
    """Named `accuracy` whatever the label format, so logs read accuracy / val_accuracy."""
    import keras

    metric = {"one_hot": keras.metrics.CategoricalAccuracy, "integer": keras.metrics.SparseCategoricalAccuracy,
              "binary": keras.metrics.BinaryAccuracy}[choice.label_format]
    return metric(name="accuracy")


def class_weights(params: TrainParams, labels: np.ndarray, class_names: list[str]) -> np.ndarray | None:
    """One loss weight per class from `train.class_weight` (None for 'none'): 'balanced' is
    scikit-learn's n_images / (n_classes x count); a mapping names classes by name or index."""
    setting, count = params.class_weight, len(class_names)
    if setting == "none":
        return None
    if setting == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(labels)  # a class with no training image keeps weight 1
        weights = np.ones(count)
        weights[present] = compute_class_weight("balanced", classes=present, y=np.asarray(labels))
        return weights.astype(np.float32)
    weights = np.ones(count, dtype=np.float32)
    for key, weight in setting.items():
        if key in class_names:
            weights[class_names.index(key)] = weight
        elif key.isdigit() and int(key) < count:
            weights[int(key)] = weight
        else:
            raise bad_value("train.class_weight", f"keyed by class names ({', '.join(class_names[:10])}"
                            f"{', ...' if count > 10 else ''}) or indices 0-{count - 1}", {key: weight})
    return weights


def sample_weighting(weights: np.ndarray, choice: LossChoice):
    """A tf.data map (images, labels) -> (images, labels, per-image loss weight): a one-hot or
    mixed (MixUp/CutMix) label weighs its classes' weights by their shares."""
    from stages.runtime import import_tensorflow

    tf = import_tensorflow()
    table = tf.constant(weights, tf.float32)

    def weigh(images, labels):
        if choice.label_format == "integer":
            return images, labels, tf.gather(table, labels)
        if choice.label_format == "binary":
            return images, labels, labels[:, 0] * table[1] + (1.0 - labels[:, 0]) * table[0]
        return images, labels, tf.linalg.matvec(tf.cast(labels, tf.float32), table)

    return weigh


def make_schedule(params: TrainParams, steps_per_epoch: int):
    """The learning rate as a function of the step: a float, or a Keras LearningRateSchedule."""
    from keras.optimizers import schedules

    rate = params.learning_rate
    if params.schedule in ("exponential", "step"):
        return schedules.ExponentialDecay(
            rate, decay_steps=params.decay_epochs * steps_per_epoch, decay_rate=params.decay_rate,
            staircase=params.schedule == "step",
        )
    if params.schedule in ("cosine", "one_cycle"):
        # one_cycle (Smith, 2018; fast.ai): the warm-up starts at a 25th of the peak, not at 0.
        warmup_steps = params.warmup_epochs * steps_per_epoch
        start = rate / ONE_CYCLE_DIVISOR if params.schedule == "one_cycle" else 0.0
        return schedules.CosineDecay(
            start if warmup_steps else rate,
            decay_steps=(params.epochs - params.warmup_epochs) * steps_per_epoch,
            alpha=params.min_learning_rate / rate,
            warmup_target=rate if warmup_steps else None, warmup_steps=warmup_steps,
        )
    return rate  # constant, and plateau (the callback lowers it)


def make_optimizer(params: TrainParams, learning_rate):
    """`train.optimizer` at `learning_rate` (a float or a schedule), with gradient clipping."""
    import keras

    options = {"learning_rate": learning_rate}
    if params.ema is not None:  # Polyak averaging of the weights, kept by the optimizer
        options.update(use_ema=True, ema_momentum=params.ema)
    if params.clip_norm is not None:
        options["clipnorm"] = params.clip_norm
    if params.clip_value is not None:
        options["clipvalue"] = params.clip_value
    optimizers = keras.optimizers
    name = params.optimizer
    if name in ("momentum", "nesterov"):
        return optimizers.SGD(momentum=params.momentum, nesterov=name == "nesterov", **options)
    if name == "adamw":
        return optimizers.AdamW(weight_decay=params.weight_decay, **options)
    constructor = {"sgd": optimizers.SGD, "rmsprop": optimizers.RMSprop, "adam": optimizers.Adam,
                   "nadam": optimizers.Nadam}[name]
    return constructor(**options)


def ema_callbacks(params: TrainParams) -> list:
    """With `train.ema`: validation runs on the averaged weights (Keras's SwapEMAWeights swaps
    them in for each evaluation and back for training)."""
    import keras

    return [keras.callbacks.SwapEMAWeights()] if params.ema is not None else []


@contextlib.contextmanager
def averaged_weights(model, ema: bool):
    """Inside the block the model holds the optimizer's moving average of its weights (when
    `ema`), afterwards its raw weights again: for saving the model that validation measured."""
    if not ema:
        yield
        return
    import keras

    swap = keras.callbacks.SwapEMAWeights()
    swap.set_model(model)
    swap.on_test_begin()
    try:
        yield
    finally:
        swap.on_test_end()


def plateau_callback(params: TrainParams, saved: dict | None = None):
    """ReduceLROnPlateau for `schedule: plateau` (else None), continuing from `saved` counters
    when training resumes mid-phase instead of starting them afresh."""
    import keras

    if params.schedule != "plateau":
        return None

    class ResumablePlateau(keras.callbacks.ReduceLROnPlateau):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if saved is not None:
                self.wait, self.cooldown_counter, self.best = saved["wait"], saved["cooldown_counter"], saved["best"]

    return ResumablePlateau(
        monitor=params.monitor, factor=params.decay_rate, patience=params.plateau_patience,
        mode="max" if params.monitor.endswith("accuracy") else "min",
        min_lr=params.min_learning_rate, verbose=0,
    )
