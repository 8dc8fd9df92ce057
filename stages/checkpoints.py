"""Resumable training: after every epoch, everything needed to continue exactly as if
training had never stopped, committed by one atomic write of state.json.

The checkpoint folder (.cnnlab/checkpoints by default: git- and DVC-ignored scratch space,
never a stage output) holds:
    state.json              epochs done, per-epoch history, best epoch, early-stopping and
                            reduce-on-plateau counters, file names below, and the fingerprint
                            of the params and data it belongs to
    epoch-NNNN.npz          the model's variables (weights and random-seed states) and the
                            optimizer's after the last completed epoch
                            (kept, too, for the best epoch so far by the monitored metric:
                            the final model)
    live/                   DVCLive's logs so far (rebuilt from the history on resume)

The variables are plain NumPy arrays in the model's and optimizer's own order (the same
params build the same model, which the fingerprint guarantees): writing them takes
milliseconds, where a Keras weights file or archive takes a tenth of a second per epoch.
The published model.keras is saved once, at the end, from the best epoch's variables.

Every file is written atomically and flushed to the disk before state.json names it. A crash
between writing a file and state.json leaves state.json naming the previous, complete files;
a re-run with other params or data (another fingerprint) starts over, and so does a re-run
whose state files are damaged (empty, truncated), with a warning: a damaged state is never
resumed from, and never published as the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from stages.artifacts import checkpoint_file_problem
from stages.errors import DataError
from stages.io import atomic_path, read_json, write_json

STATE_FILE = "state.json"
logger = logging.getLogger(__name__)


@dataclass
class TrainingState:
    fingerprint: str
    epochs_done: int = 0
    phase: int = 0                   # 0: training; 1: fine-tuning (transfer)
    phase_start: int = 0             # epochs done when the phase began
    phase_finished: bool = False     # the phase ran all its epochs or stopped early
    best_epoch: int = 0
    best_value: float | None = None
    wait: int = 0                    # epochs since the last improvement (early stopping)
    plateau: dict | None = None      # ReduceLROnPlateau's counters
    history: dict = field(default_factory=dict)
    seconds: float = 0.0             # training time over all runs
    checkpoint: str | None = None
    best_model: str | None = None


def fingerprint(settings: dict, arrays: list[np.ndarray]) -> str:
    """Hash of the settings that shape training and of the data (read chunk by chunk, so
    memory-mapped arrays are never loaded whole)."""
    digest = hashlib.blake2b(json.dumps(settings, sort_keys=True, default=list).encode(), digest_size=16)
    for array in arrays:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        flat = array.reshape(len(array), -1) if array.ndim else array.reshape(1)
        for start in range(0, len(flat), 4096):
            digest.update(np.ascontiguousarray(flat[start:start + 4096]).data)
    return digest.hexdigest()


def state_file_problem(folder: Path, name) -> str | None:
    """Why the file `name` that state.json names cannot be resumed from, or None."""
    if not isinstance(name, str) or Path(name).name != name:
        return f"names no file in {folder} ({name!r})"
    problem = checkpoint_file_problem(folder / name)
    return f"{name} {problem}" if problem else None


def load_state(folder: Path, expected_fingerprint: str) -> TrainingState | None:
    """The saved state if it belongs to this run's params and data and its files are intact;
    None to start over (with a warning when it is damaged)."""
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = TrainingState(**read_json(path, "training checkpoint"))
    except (TypeError, ValueError, DataError):
        logger.warning("%s is damaged or from an older cnnlab; training starts over from epoch 1", path)
        return None
    if state.fingerprint != expected_fingerprint:
        return None  # other params or data: a new run
    problems = [problem for name in dict.fromkeys((state.checkpoint, state.best_model))
                if (problem := state_file_problem(folder, name))]
    if problems:
        logger.warning("the resume state in %s is damaged (%s); training starts over from epoch 1",
                       folder, "; ".join(problems))
        return None
    return state


def save_variables(model, path: Path, phase: int, ema: bool = False) -> None:
    """The model's variables (weights and seed states) and its optimizer's, as NumPy arrays;
    with `ema`, the model's variables as validation measured them too (the optimizer's moving
    average of the weights in place of the raw ones)."""
    from stages.optimization import averaged_weights

    arrays = {f"model_{index}": variable.numpy() for index, variable in enumerate(model.variables)}
    arrays.update({f"optimizer_{index}": variable.numpy()
                   for index, variable in enumerate(model.optimizer.variables)})
    if ema:
        with averaged_weights(model, True):
            arrays.update({f"averaged_{index}": variable.numpy() for index, variable in enumerate(model.variables)})
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:
            np.savez(handle, phase=np.int64(phase), **arrays)


def restore_variables(model, path: Path, phase: int | None = None, validated: bool = False) -> None:
    """Assign the variables `save_variables` wrote to `path`: the model's (as validation
    measured them when `validated`, i.e. averaged under EMA), and the optimizer's too when
    they were saved in `phase` (the same optimizer)."""
    with np.load(path) as saved:
        source = "averaged" if validated and "averaged_0" in saved.files else "model"
        for index, variable in enumerate(model.variables):
            variable.assign(saved[f"{source}_{index}"])
        if phase is not None and int(saved["phase"]) == phase:
            for index, variable in enumerate(model.optimizer.variables):
                variable.assign(saved[f"optimizer_{index}"])


def restore(model, folder: Path, state: TrainingState) -> None:
    """Weights, seed states and optimizer state of the last completed epoch."""
    restore_variables(model, folder / state.checkpoint, state.phase)


def make_checkpointer(folder: Path, state: TrainingState, monitor: str, min_delta: float,
                      patience: int | None, last_epoch: int, plateau=None, ema: bool = False):
    """A Keras callback that records each epoch, tracks the best one (saving it whole), stops
    early after `patience` epochs without an improvement larger than `min_delta`, and commits
    the state. `last_epoch` ends the current phase; `plateau` is the ReduceLROnPlateau
    callback whose counters are saved with the state. With `ema` each epoch's file also holds
    the averaged weights (those validation measured, published for the best epoch)."""
    import keras

    maximize = monitor.endswith("accuracy")

    class EpochCheckpointer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.started = time.perf_counter()
            self.seconds_before = state.seconds

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            for key, value in logs.items():
                state.history.setdefault(key, []).append(float(value))
            state.epochs_done = epoch + 1
            value = float(logs[monitor])
            improved = state.best_value is None or (
                value - min_delta > state.best_value if maximize else value + min_delta < state.best_value)
            state.checkpoint = f"epoch-{epoch + 1:04d}.npz"
            save_variables(self.model, folder / state.checkpoint, state.phase, ema)
            if improved:
                state.best_epoch, state.best_value, state.wait = epoch + 1, value, 0
                state.best_model = state.checkpoint
            else:
                state.wait += 1
            if plateau is not None:
                state.plateau = {"wait": plateau.wait, "cooldown_counter": plateau.cooldown_counter,
                                 "best": None if plateau.best is None else float(plateau.best)}
            if patience is not None and state.wait >= patience:
                self.model.stop_training = True
            state.phase_finished = bool(self.model.stop_training) or epoch + 1 >= last_epoch
            state.seconds = self.seconds_before + time.perf_counter() - self.started
            save_state(folder, state)

    return EpochCheckpointer()


def save_state(folder: Path, state: TrainingState) -> None:
    """Commit the state, then delete checkpoint files it no longer names."""
    write_json(folder / STATE_FILE, asdict(state))
    keep = {STATE_FILE, state.checkpoint, state.best_model}
    for path in folder.iterdir():
        if path.name not in keep and path.is_file():
            path.unlink()
