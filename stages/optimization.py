"""What `model.compile` gets from the `train` params: optimizer, learning-rate schedule, loss.

Schedules that depend only on the step count are Keras LearningRateSchedules (they live in
the optimizer and resume with its step counter); reduce-on-plateau reacts to the monitored
metric, so it is a callback (see stages.checkpoints for how its state survives a restart).
"""

from __future__ import annotations

from dataclasses import dataclass

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
