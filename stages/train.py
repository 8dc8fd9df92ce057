"""train: fit the model on the training set, keep the best epoch, log every epoch with DVCLive.

Writes:
    models/model.keras    the best epoch by `train.monitor` (replaced atomically at the end)
    models/summary.json   parameter counts, epochs run, best epoch, time, the params used
    reports/train/        DVCLive's per-epoch metrics (metrics.json, plots/metrics/*.tsv)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from stages.augment import load_training_set, online_augmentation
from stages.config import Params, TrainParams
from stages.io import atomic_dir, atomic_path, load_array, read_json, write_json
from stages.models import build_model
from stages.runtime import import_tensorflow, keras_verbosity, seed_everything


def make_optimizer(params: TrainParams):
    import keras

    optimizers = {
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.Adam,
    }
    return optimizers[params.optimizer](learning_rate=params.learning_rate)


def make_dataset(images, labels, batch_size: int, shuffle_seed: int | None = None, augmentation=None):
    """A tf.data pipeline over the (memory-mapped) arrays, shuffled each epoch when training.

    `augmentation` (online mode, training set only) maps the batches to freshly augmented ones.
    """
    tf = import_tensorflow()
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(labels), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if augmentation is not None:
        dataset = augmentation(dataset)
    return dataset.prefetch(tf.data.AUTOTUNE)


def best_epoch(history: dict[str, list[float]], monitor: str) -> int:
    """1-based epoch with the best monitored value (first one on ties, as ModelCheckpoint keeps)."""
    values = history[monitor]
    best = max(values) if monitor.endswith("accuracy") else min(values)
    return values.index(best) + 1


def train(
    params: Params, prepared_dir: str | Path, augmented_dir: str | Path,
    model_path: str | Path, summary_path: str | Path, live_dir: str | Path,
) -> dict:
    """Run the stage; return the summary written to summary.json."""
    import keras
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    meta = read_json(Path(prepared_dir) / "meta.json", "prepared metadata")
    train_x, train_y = load_training_set(prepared_dir, augmented_dir)
    val_x, val_y = load_array(Path(prepared_dir) / "val_x.npy"), load_array(Path(prepared_dir) / "val_y.npy")

    seed_everything(params.seed)
    model = build_model(params.model, tuple(meta["image_shape"]), meta["num_classes"])
    model.compile(optimizer=make_optimizer(params.train), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    monitor = params.train.monitor
    mode = "max" if monitor.endswith("accuracy") else "min"

    started = time.perf_counter()
    with atomic_path(model_path) as temp_model, atomic_dir(live_dir) as temp_live:
        # DVCLive must not edit dvc.yaml (it declares the metrics and plots itself).
        live = Live(dir=str(temp_live), dvcyaml=False, save_dvc_exp=False)
        callbacks = [
            keras.callbacks.ModelCheckpoint(temp_model, monitor=monitor, mode=mode, save_best_only=True),
            DVCLiveCallback(live=live),
        ]
        history = model.fit(
            make_dataset(train_x, train_y, params.train.batch_size, shuffle_seed=params.seed,
                         augmentation=online_augmentation(augmented_dir)),
            validation_data=make_dataset(val_x, val_y, params.train.batch_size),
            epochs=params.train.epochs, callbacks=callbacks, verbose=keras_verbosity(),
            shuffle=False,  # the tf.data pipeline already reshuffles every epoch
        ).history
    seconds = time.perf_counter() - started

    epoch = best_epoch(history, monitor)
    summary = {
        "architecture": params.model.architecture,
        "total_params": int(model.count_params()),
        "trainable_params": int(sum(keras.ops.size(w) for w in model.trainable_weights)),
        "epochs_run": len(history["loss"]),
        "best_epoch": epoch,
        "monitor": monitor,
        "best_value": float(history[monitor][epoch - 1]),
        "training_seconds": round(seconds, 1),
        "train_images": int(len(train_y)),
        "params": {
            "seed": params.seed,
            "augment": dataclasses.asdict(params.augment),
            "model": dataclasses.asdict(params.model),
            "train": dataclasses.asdict(params.train),
        },
    }
    write_json(summary_path, summary)
    return summary
