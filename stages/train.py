"""train: fit the model, keep the best epoch, log every epoch with DVCLive, resume after a stop.

Writes:
    models/model.keras      the best epoch by `train.monitor` (replaced atomically at the end)
    models/summary.json     layer table, parameter counts, epochs run, best epoch, time, params
    reports/train/          DVCLive's per-epoch metrics (loss, accuracy, learning rate)
    .cnnlab/checkpoints/    the state a re-run resumes from (see stages/checkpoints.py), and
                            live/, the DVCLive logs of the epochs so far; git and DVC never
                            look there (it is not a result, and not a stage output)

Transfer models with `train.fine_tune_epochs` train in two phases: the head with the base
frozen, then (from the best head) the last `model.base_trainable_layers` base layers too,
at `train.fine_tune_learning_rate`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np

from stages.artifacts import META_FILE, read_meta, read_policy, read_split, read_training_set
from stages.checkpoints import (
    TrainingState, fingerprint, load_state, make_checkpointer, restore, restore_variables,
)
from stages.config import Params, bad_value
from stages.errors import CnnlabError
from stages.io import atomic_dir, rounded, save_keras_model, write_json
from stages.models import build_model, check_architecture, layer_table, parameter_totals
from stages.optimization import (
    LossChoice, choose_loss, class_weights, ema_callbacks, make_accuracy, make_loss, make_optimizer,
    make_schedule, plateau_callback, sample_weighting,
)
from stages.runtime import (
    distribution_strategy, import_tensorflow, keras_verbosity, optional_modules_hidden, resolve_precision,
    seed_everything, tf_config, worker_count, worker_outputs, workers_agree,
)

logger = logging.getLogger(__name__)

TRAINING, FINE_TUNING = 0, 1
# DVCLive logs here while training (watch it live); the stage copies it to reports/train at the end.
LIVE_SCRATCH = "live"


# --- input pipeline ---------------------------------------------------------------------------
# Arrays that take at most this share of the available memory are read into memory once and
# batches gathered in the graph; larger ones are streamed from the memory map, batch by batch.
IN_MEMORY_SHARE = 0.25
# Batches read ahead while the model trains on the current one.
PREFETCH_BATCHES = 2


def available_memory() -> int:
    """Bytes of memory available to new allocations (Linux's MemAvailable; else free pages)."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def fits_in_memory(*arrays: np.ndarray) -> bool:
    return sum(array.nbytes for array in arrays) <= IN_MEMORY_SHARE * available_memory()


def label_encoding(labels: np.ndarray, loss: LossChoice, num_classes: int) -> np.ndarray:
    """Integer class ids as the loss wants them: one-hot rows, ids, or a (N, 1) float column."""
    if loss.label_format == "one_hot":
        return np.eye(num_classes, dtype=np.float32)[labels]
    if loss.label_format == "binary":
        return labels.astype(np.float32)[:, np.newaxis]
    return labels.astype(np.int64)


def batch_reader(images: np.ndarray, labels: np.ndarray, loss: LossChoice, num_classes: int,
                 in_memory: bool | None = None):
    """A tf.data map from a batch of row indices to (images, labels), rows in ascending order.

    In memory (`in_memory`, by default when the arrays fit): the arrays become tensors once and
    each batch is a gather in the graph. Streamed: each batch is read from the memory-mapped
    arrays by NumPy (sequential reads), so data larger than memory trains too. Both give the
    same batches."""
    tf = import_tensorflow()
    if in_memory is None:
        in_memory = fits_in_memory(images, labels)
    if in_memory:
        image_tensor = tf.constant(np.asarray(images, dtype=np.float32))
        label_tensor = tf.constant(label_encoding(np.asarray(labels), loss, num_classes))

        def gather_batch(indices):
            rows = tf.sort(indices)
            return tf.gather(image_tensor, rows), tf.gather(label_tensor, rows)

        return gather_batch

    def read(indices: np.ndarray):
        rows = np.sort(indices)  # ascending rows: sequential reads from the memory map
        return (np.asarray(images[rows], dtype=np.float32),
                label_encoding(np.asarray(labels[rows]), loss, num_classes))

    label_type = tf.int64 if loss.label_format == "integer" else tf.float32
    label_shape = {"one_hot": [None, num_classes], "integer": [None], "binary": [None, 1]}[loss.label_format]

    def read_batch(indices):
        batch_images, batch_labels = tf.numpy_function(read, [indices], (tf.float32, label_type), stateful=False)
        batch_images.set_shape([None, *images.shape[1:]])
        batch_labels.set_shape(label_shape)
        return batch_images, batch_labels

    return read_batch


def training_dataset(images, labels, batch_size: int, seed: int, epochs: range, read_batch,
                     augmentation=None, weighting=None):
    """The training pipeline, the one place it is built: for each epoch in `epochs`, a shuffle
    drawn from (seed, epoch) alone, so that a resumed run sees exactly the batches an
    uninterrupted run would, then batches read from the arrays and prefetched. `weighting`
    (optimization.sample_weighting) adds each image's class weight."""
    tf = import_tensorflow()
    count = len(labels)

    def epoch_batches(epoch):
        keys = tf.random.stateless_uniform([count], seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(tf.argsort(keys)).batch(batch_size)

    indices = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(epoch_batches)
    dataset = indices.map(read_batch, num_parallel_calls=tf.data.AUTOTUNE)
    if augmentation is not None:  # online augmentation, seeded by the run's global batch number
        dataset = augmentation(dataset, first_step=epochs.start * math.ceil(count / batch_size))
    if weighting is not None:
        dataset = dataset.map(weighting, num_parallel_calls=tf.data.AUTOTUNE)
    return without_autotuner(dataset.prefetch(PREFETCH_BATCHES))


def evaluation_dataset(labels, batch_size: int, read_batch):
    """Consecutive batches of a held-out set, in order."""
    tf = import_tensorflow()
    count = len(labels)
    starts = tf.data.Dataset.range(0, count, batch_size)
    indices = starts.map(lambda start: tf.range(start, tf.minimum(start + batch_size, count)))
    return without_autotuner(indices.map(read_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(PREFETCH_BATCHES))


def without_autotuner(dataset):
    """The pipeline without tf.data's autotuner. Its thread re-plans the pipeline on a timer that
    grows to a minute, and deleting the iterator at the end of `fit` waited for it: up to 60 s
    after the last epoch (docs/performance.md). Parallel maps then run one call per core."""
    tf = import_tensorflow()
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


# --- model, phases, callbacks -------------------------------------------------------------------
# Keras runs up to this many training steps per call from Python: fewer round trips between
# Python and the graph, the same arithmetic. On small models the round trip is most of a step:
# the default digits project (41 steps an epoch, a prime) trained its 30 epochs in 5.0-6.0 s with
# 41 steps per call against 7.0-8.4 s with one (docs/performance.md). A call of 64 steps on
# Fashion-MNIST takes about 2 s on 2 cores, so that a terminal's progress bar still moves.
MAX_STEPS_PER_EXECUTION = 64


def steps_per_execution(steps_per_epoch: int) -> int:
    """The largest count up to MAX_STEPS_PER_EXECUTION that divides an epoch's steps. Keras
    counts an epoch in whole executions, and the training set streams every epoch's batches in
    one dataset: an execution that ran past the epoch's end would train on the next epoch's
    batches (and break resume, which restarts at an epoch's first batch). Several workers run
    one step per call: Keras's multi-step loop fails under MultiWorkerMirroredStrategy."""
    if worker_count() > 1:
        return 1
    return max(count for count in range(1, MAX_STEPS_PER_EXECUTION + 1) if steps_per_epoch % count == 0)


def compile_for_phase(model, params: Params, phase: int, steps_per_epoch: int, loss: LossChoice,
                      rate: float | None = None) -> None:
    """Which layers learn and at what rate: the whole model with the schedule, except that a
    transfer base is frozen while its head trains first, then fine-tuned at a constant rate.
    `rate` replaces the schedule by a constant (a variable the caller may set: lr-find)."""
    train = params.train
    if params.model.architecture == "transfer":
        from stages.transfer import find_base, set_base_trainable_layers

        frozen_first = phase == TRAINING and train.fine_tune_epochs > 0
        set_base_trainable_layers(find_base(model), 0 if frozen_first else params.model.base_trainable_layers)
    if rate is None:
        rate = make_schedule(train, steps_per_epoch) if phase == TRAINING else train.fine_tune_learning_rate
    model.compile(optimizer=make_optimizer(train, rate), loss=make_loss(loss, train),
                  metrics=[make_accuracy(loss)], steps_per_execution=steps_per_execution(steps_per_epoch))
    model.optimizer.build(model.trainable_variables)  # so that a checkpoint can restore its state


def learning_rate_logger():
    """Adds the learning rate used during each epoch to the epoch's logs (and so to DVCLive)."""
    import keras

    class LearningRateLogger(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

        def on_epoch_end(self, epoch, logs=None):
            logs["learning_rate"] = self.rate

    return LearningRateLogger()


def start_live(folder: Path, history: dict):
    """DVCLive writing to `folder` (emptied first), replaying the epochs a resumed run already
    did, and its Keras callback (which must not end the run between the two phases)."""
    with optional_modules_hidden(("pandas",)):  # DVCLive's DataFrame plots, unused: 0.35 s
        from dvclive import Live
        from dvclive.keras import DVCLiveCallback
        from dvclive.utils import standardize_metric_name

    from scmrepo.exceptions import SCMError

    shutil.rmtree(folder, ignore_errors=True)
    try:
        live = Live(dir=str(folder), dvcyaml=False, save_dvc_exp=False)  # dvc.yaml declares the plots
    except SCMError as error:  # DVCLive reads the current commit of the git repository
        raise CnnlabError(f"DVCLive cannot start in this git repository ({error}); "
                          "make a first commit (git add -A && git commit) and run again") from None
    for epoch in range(len(history.get("loss", []))):
        for name, values in history.items():
            live.log_metric(standardize_metric_name(name, "dvclive.keras"), rounded(values[epoch]))
        live.next_step()

    class EpochLogger(DVCLiveCallback):
        def on_epoch_end(self, epoch: int, logs=None):
            # Committed curves keep 4 significant digits: float noise is not a change.
            super().on_epoch_end(epoch, {name: rounded(value) for name, value in (logs or {}).items()})

        def on_train_end(self, logs=None):
            pass  # live.end() once, after the last phase

    return live, EpochLogger(live=live)


@contextlib.contextmanager
def dtype_policy(precision: str):
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# --- the stage ------------------------------------------------------------------------------------
def train(
    params: Params, prepared_dir: str | Path, augmented_dir: str | Path, model_path: str | Path,
    summary_path: str | Path, live_dir: str | Path, checkpoint_dir: str | Path, strategy=None,
    callbacks: tuple = (), ray_address: str | None = None,
) -> dict:
    """Run the stage (resuming from `checkpoint_dir` when it holds this run's state); return
    the summary written to summary.json. `strategy` defaults to `distribution_strategy()`
    (several workers under TF_CONFIG: only the chief writes these paths, see `worker_outputs`);
    `callbacks` are more Keras callbacks, called after the stage's own (benchmarks use them).
    With `train.workers` > 1 and no TF_CONFIG, Ray Train runs this function in that many workers
    on the Ray cluster at `ray_address` (default: RAY_ADDRESS), setting TF_CONFIG in each."""
    if params.train.workers > 1 and not tf_config():
        from stages.multiworker import train_on_ray

        paths = [prepared_dir, augmented_dir, model_path, summary_path, live_dir, checkpoint_dir]
        return train_on_ray(train, params, paths, ray_address)
    with worker_outputs([model_path, summary_path, live_dir], Path(checkpoint_dir)) as paths:
        return train_with(params, prepared_dir, augmented_dir, *paths, strategy, callbacks)


def train_with(params: Params, prepared_dir: str | Path, augmented_dir: str | Path, model_path: str | Path,
               summary_path: str | Path, live_dir: str | Path, checkpoint_dir: str | Path, strategy=None,
               callbacks: tuple = ()) -> dict:
    prepared_dir, folder = Path(prepared_dir), Path(checkpoint_dir)
    meta = read_meta(prepared_dir / META_FILE)
    check_architecture(params.model, meta["image_shape"])  # before TensorFlow starts
    policy = read_policy(augmented_dir)
    train_x, train_y = read_training_set(prepared_dir, augmented_dir, meta, policy)
    val_x, val_y = read_split(prepared_dir, "val", meta)
    num_classes, batch_size = meta["num_classes"], params.train.batch_size
    loss = choose_loss(params.train, num_classes)
    if policy.get("mixes_labels") and loss.label_format == "binary":
        key = "mixup_alpha" if params.augment.mixup_alpha else "cutmix_alpha"
        raise bad_value(f"augment.{key}", "0 for a two-class dataset (the accuracy of its one sigmoid "
                        "output needs 0/1 labels, not MixUp/CutMix's mixed ones)", getattr(params.augment, key))
    weights = class_weights(params.train, train_y, meta["class_names"])
    precision = resolve_precision(params.train.precision)
    strategy = strategy or distribution_strategy()
    settings = {"seed": params.seed, "model": dataclasses.asdict(params.model), "meta": meta,
                "train": dataclasses.asdict(params.train), "precision": precision,
                "replicas": strategy.num_replicas_in_sync,
                "policy": policy}
    key = fingerprint(settings, [train_x, train_y, val_x, val_y])
    folder.mkdir(parents=True, exist_ok=True)
    state = load_state(folder, key)
    if not workers_agree(strategy, state.epochs_done if state else 0):
        logger.warning("the workers' resume states are from different epochs (a worker stopped before "
                       "saving its last one): training starts over")
        state = None
    resumed_from = state.epochs_done if state else 0
    state = state or TrainingState(key)

    seed_everything(params.seed)
    steps_per_epoch = math.ceil(len(train_y) / batch_size)
    with dtype_policy(precision), strategy.scope():
        model = build_model(params.model, tuple(meta["image_shape"]), num_classes, meta.get("normalization"))
        compile_for_phase(model, params, state.phase, steps_per_epoch, loss)
        if state.checkpoint:
            restore(model, folder, state)
        read_train = batch_reader(train_x, train_y, loss, num_classes)
        validation = evaluation_dataset(val_y, batch_size, batch_reader(val_x, val_y, loss, num_classes))
        live, live_callback = start_live(folder / LIVE_SCRATCH, state.history)
        from stages.transforms import online_augmentation  # TensorFlow: imported when it runs

        augmentation = online_augmentation(policy)
        weighting = None if weights is None else sample_weighting(weights, loss)
        run_phases(model, params, state, folder, steps_per_epoch, loss, [live_callback, *callbacks],
                   lambda epochs: training_dataset(train_x, train_y, batch_size, params.seed, epochs,
                                                   read_train, augmentation, weighting),
                   validation)
        live.end()

        # The best epoch as validation measured it (EMA: the averaged weights) is the model.
        restore_variables(model, folder / state.best_model, state.phase, validated=True)
        save_keras_model(model, model_path)
    with atomic_dir(live_dir) as temp_live:
        shutil.copytree(folder / LIVE_SCRATCH, temp_live, dirs_exist_ok=True)
    summary = training_summary(params, model, state, train_y, meta["class_names"], weights, precision)
    write_json(summary_path, summary)
    # How this run went (not results, so not in summary.json): for the command's own output.
    return {**summary, "training_seconds": state.seconds, "resumed_from_epoch": resumed_from}


def training_summary(params: Params, model, state: TrainingState, train_y: np.ndarray, class_names: list[str],
                     weights: np.ndarray | None, precision: str) -> dict:
    """What models/summary.json records (the report reads it, `layers` included). Nothing that
    depends on the machine or the clock: identical runs give identical files (and dvc.lock)."""
    counts = np.bincount(np.asarray(train_y), minlength=len(class_names))
    return {
        "architecture": params.model.architecture,
        **parameter_totals(model),
        "epochs_run": state.epochs_done,
        "best_epoch": state.best_epoch,
        "monitor": params.train.monitor,
        "best_value": state.best_value,
        "train_images": int(len(train_y)),
        "class_counts": dict(zip(class_names, counts.tolist(), strict=True)),
        "class_weights": (None if weights is None
                          else dict(zip(class_names, map(rounded, weights.tolist()), strict=True))),
        "precision": precision,
        "layers": layer_table(model),
        "params": {
            "seed": params.seed,
            "augment": dataclasses.asdict(params.augment),
            "model": dataclasses.asdict(params.model),
            "train": dataclasses.asdict(params.train),
        },
    }


def run_phases(model, params: Params, state: TrainingState, folder: Path, steps_per_epoch: int,
               loss: LossChoice, last_callbacks: list, make_training_set, validation) -> None:
    """Fit the remaining epochs of the current phase, then of fine-tuning if there is one;
    `last_callbacks` (DVCLive's, ...) run after the checkpointer."""
    train = params.train
    last_phase = FINE_TUNING if train.fine_tune_epochs else TRAINING
    while True:
        if not state.phase_finished:
            last_epoch = train.epochs if state.phase == TRAINING else state.phase_start + train.fine_tune_epochs
            plateau = plateau_callback(train, state.plateau) if state.phase == TRAINING else None
            checkpointer = make_checkpointer(folder, state, train.monitor, train.min_delta, train.patience,
                                             last_epoch, plateau, ema=train.ema is not None)
            callbacks = [learning_rate_logger(), *([plateau] if plateau else []), *ema_callbacks(train),
                         checkpointer, *last_callbacks]
            model.fit(
                make_training_set(range(state.epochs_done, last_epoch)), validation_data=validation,
                initial_epoch=state.epochs_done, epochs=last_epoch, steps_per_epoch=steps_per_epoch,
                callbacks=callbacks, verbose=keras_verbosity(),
                shuffle=False,  # the pipeline shuffles, per epoch, from the seed
            )
        if state.phase == last_phase:
            return
        # Fine-tune from the best head, with fresh counters (committed with its first epoch).
        restore_variables(model, folder / state.best_model, validated=True)
        state.phase, state.phase_start, state.phase_finished = FINE_TUNING, state.epochs_done, False
        state.wait, state.plateau = 0, None
        compile_for_phase(model, params, FINE_TUNING, steps_per_epoch, loss)
