"""Training on tiny data: every optimizer, schedule, loss and switch; early stopping and the
best epoch; DVCLive logs; determinism; resuming after the process is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.config import OPTIMIZERS, ConfigError, parse_params
from tests.training_data import train_on_tiny_data, write_prepared

pytestmark = pytest.mark.tf

SMALL_MODEL = {"conv_filters": [4], "dense_units": [8], "dense_dropout": 0.1}


def run_training(folder: Path, model=None, train=None, seed=1, num_classes=3, shape=(8, 8, 1), strategy=None):
    """The train stage on a fresh tiny dataset in `folder`; returns (summary, state)."""
    params = {"seed": seed, "model": {**SMALL_MODEL, **(model or {})},
              "train": {"epochs": 2, "batch_size": 16, **(train or {})}}
    return train_on_tiny_data(folder, params, num_classes=num_classes, shape=shape, strategy=strategy)


def load(path: Path):
    import keras

    return keras.saving.load_model(path, safe_mode=True)


OPTIMIZER_CLASSES = {"sgd": "SGD", "momentum": "SGD", "nesterov": "SGD", "rmsprop": "RMSprop", "adam": "Adam",
                     "adamw": "AdamW", "nadam": "Nadam"}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_name_makes_its_keras_optimizer(optimizer):
    from stages.optimization import make_optimizer

    train = parse_params({"train": {"optimizer": optimizer, "clip_norm": 0.5}}).train
    built = make_optimizer(train, 0.02)
    config = built.get_config()
    assert type(built).__name__ == OPTIMIZER_CLASSES[optimizer]
    assert config["learning_rate"] == pytest.approx(0.02) and config["clipnorm"] == 0.5
    if optimizer in ("momentum", "nesterov", "sgd"):
        assert config["momentum"] == pytest.approx(0.0 if optimizer == "sgd" else 0.9)
        assert config["nesterov"] == (optimizer == "nesterov")
    if optimizer == "adamw":
        assert config["weight_decay"] == pytest.approx(0.004)


def test_an_optimizer_trains_and_is_saved_with_the_model(tmp_path):
    _, state = run_training(tmp_path, train={"optimizer": "nesterov", "learning_rate": 0.02, "epochs": 3})
    losses = state["history"]["loss"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    config = load(tmp_path / "model.keras").optimizer.get_config()
    assert type(load(tmp_path / "model.keras").optimizer).__name__ == "SGD" and config["nesterov"] is True


def logged_rates(state) -> list[float]:
    return state["history"]["learning_rate"]


SCHEDULES = [
    ({"schedule": "constant"}, [0.01, 0.01, 0.01, 0.01]),
    ({"schedule": "exponential", "decay_rate": 0.5, "decay_epochs": 1}, [0.01, 0.005, 0.0025, 0.00125]),
    ({"schedule": "step", "decay_rate": 0.5, "decay_epochs": 2}, [0.01, 0.01, 0.005, 0.005]),
    ({"schedule": "cosine", "warmup_epochs": 1}, [0.0, 0.01, 0.0075, 0.0025]),
    ({"schedule": "cosine", "min_learning_rate": 0.002}, [0.01, 0.0088284, 0.006, 0.0031716]),
    ({"schedule": "one_cycle", "warmup_epochs": 2}, [0.0004, 0.0052, 0.01, 0.005]),
]
SCHEDULE_IDS = ["constant", "exponential", "step", "cosine-warmup", "cosine-floor", "one-cycle"]


@pytest.mark.parametrize(("train", "expected"), SCHEDULES, ids=SCHEDULE_IDS)
def test_learning_rate_schedules_at_the_start_of_each_epoch(train, expected):
    from stages.optimization import make_schedule

    params = parse_params({"train": {"learning_rate": 0.01, "epochs": 4, **train}}).train
    schedule, steps_per_epoch = make_schedule(params, 5), 5
    rates = [float(schedule(epoch * steps_per_epoch)) if callable(schedule) else schedule for epoch in range(4)]
    assert rates == pytest.approx(expected, rel=1e-4, abs=1e-9)


def test_the_learning_rate_of_each_epoch_is_logged(tmp_path):
    train, expected = SCHEDULES[-1]
    _, state = run_training(tmp_path, train={"learning_rate": 0.01, "epochs": 4, **train})
    assert logged_rates(state) == pytest.approx(expected, rel=1e-4, abs=1e-9)


def test_reduce_on_plateau_lowers_the_rate_when_the_monitor_stalls(tmp_path):
    # At this rate validation accuracy cannot move: every epoch after the first is a stall.
    _, state = run_training(tmp_path, train={"schedule": "plateau", "learning_rate": 1e-7, "epochs": 4,
                                             "plateau_patience": 1, "decay_rate": 0.5})
    assert logged_rates(state) == pytest.approx([1e-7, 1e-7, 5e-8, 2.5e-8], rel=1e-5)


def test_categorical_loss_feeds_one_hot_labels_with_label_smoothing(tmp_path):
    summary, _ = run_training(tmp_path, train={"loss": "categorical", "label_smoothing": 0.1})
    loss = load(tmp_path / "model.keras").loss
    assert type(loss).__name__ == "CategoricalCrossentropy" and loss.get_config()["label_smoothing"] == 0.1
    assert summary["best_value"] > 0


def test_sparse_loss_feeds_integer_labels(tmp_path):
    _, state = run_training(tmp_path, train={"loss": "sparse_categorical", "epochs": 3, "learning_rate": 0.02})
    assert type(load(tmp_path / "model.keras").loss).__name__ == "SparseCategoricalCrossentropy"
    assert state["history"]["loss"][-1] < state["history"]["loss"][0]


def test_binary_task_trains_one_sigmoid_unit_and_evaluates_as_two_columns(tmp_path):
    from stages.config import EvaluateParams
    from stages.artifacts import read_model
    from stages.evaluate import evaluate, predict_probabilities

    _, state = run_training(tmp_path, num_classes=2, train={"label_smoothing": 0.05, "epochs": 3,
                                                            "learning_rate": 0.02})
    model = load(tmp_path / "model.keras")
    assert type(model.loss).__name__ == "BinaryCrossentropy" and model.output.shape == (None, 1)
    assert state["history"]["loss"][-1] < state["history"]["loss"][0]
    test_x = np.load(tmp_path / "prepared" / "test_x.npy")
    probabilities = predict_probabilities(read_model(tmp_path / "model.keras"), test_x, 64)
    assert probabilities.shape == (len(test_x), 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    metrics = evaluate(EvaluateParams(), tmp_path / "model.keras", tmp_path / "prepared",
                       tmp_path / "metrics.json", tmp_path / "evaluation")
    assert metrics["accuracy"] > 0.5


def test_a_loss_that_does_not_fit_the_class_count_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="'train.loss' must be 'binary' or 'auto'") as error:
        run_training(tmp_path, num_classes=2, train={"loss": "categorical"})
    assert "\n" not in str(error.value)


def test_gradient_clipping_reaches_the_optimizer(tmp_path):
    run_training(tmp_path / "norm", train={"clip_norm": 0.5, "epochs": 1})
    run_training(tmp_path / "value", train={"clip_value": 0.1, "epochs": 1})
    assert load(tmp_path / "norm" / "model.keras").optimizer.get_config()["clipnorm"] == 0.5
    assert load(tmp_path / "value" / "model.keras").optimizer.get_config()["clipvalue"] == 0.1


def test_regularizers_train(tmp_path):
    model = {"batch_norm": True, "conv_dropout": 0.2, "l1": 1e-4, "l2": 1e-3, "max_norm": 2.0}
    summary, state = run_training(tmp_path, model=model, train={"epochs": 3, "learning_rate": 0.02})
    assert state["history"]["loss"][-1] < state["history"]["loss"][0]
    kernel = load(tmp_path / "model.keras").get_layer("dense1").kernel.numpy()
    assert np.linalg.norm(kernel, axis=0).max() <= 2.0 + 1e-5  # max-norm holds after training
    assert "conv1_bn" in [row["name"] for row in summary["layers"]]


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    # min_delta so large that no later epoch counts as better: stop after `patience` epochs.
    summary, state = run_training(tmp_path, train={"epochs": 10, "patience": 2, "min_delta": 1.0})
    assert summary["epochs_run"] == 3 and summary["best_epoch"] == 1
    best = state["history"]["val_accuracy"][0]
    assert summary["best_value"] == best
    val_x = np.load(tmp_path / "prepared" / "val_x.npy")
    val_y = np.load(tmp_path / "prepared" / "val_y.npy")
    predicted = load(tmp_path / "model.keras").predict(val_x, verbose=0).argmax(axis=1)
    assert np.mean(predicted == val_y) == pytest.approx(best, abs=1e-6)  # the best epoch's weights


def test_monitor_val_loss_picks_the_lowest_loss_epoch(tmp_path):
    summary, state = run_training(tmp_path, train={"epochs": 4, "monitor": "val_loss", "learning_rate": 0.05})
    losses = state["history"]["val_loss"]
    assert summary["best_epoch"] == losses.index(min(losses)) + 1 and summary["best_value"] == min(losses)


def test_summary_dvclive_logs_and_checkpoint_folder(tmp_path):
    summary, _ = run_training(tmp_path, train={"epochs": 3})
    for key in ("architecture", "total_params", "trainable_params", "epochs_run", "best_epoch", "monitor",
                "best_value", "train_images", "params", "layers", "precision"):
        assert key in summary
    # The file records results only; how the run went (time, resumed) is the command's output.
    written = json.loads((tmp_path / "summary.json").read_text())
    run_only = {"training_seconds", "resumed_from_epoch"}
    assert written == json.loads(json.dumps({key: value for key, value in summary.items() if key not in run_only}))
    assert summary["training_seconds"] > 0 and summary["resumed_from_epoch"] == 0
    assert [row["name"] for row in summary["layers"]] == ["conv1", "pool1", "flatten", "dense1",
                                                          "dense1_dropout", "classifier"]
    plots = tmp_path / "live" / "plots" / "metrics"
    for name in ("train/loss", "train/accuracy", "train/learning_rate", "eval/loss", "eval/accuracy"):
        rows = (plots / f"{name}.tsv").read_text().strip().splitlines()
        assert len(rows) == 1 + 3, name
    names = {path.name for path in (tmp_path / "checkpoints").iterdir() if path.is_file()}
    # the last epoch's variables and the best epoch's (the same file when it is the last)
    assert names == {"state.json", "epoch-0003.npz", f"epoch-{summary['best_epoch']:04d}.npz"}
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary files left beside the outputs


@pytest.mark.parametrize("label_format", ["one_hot", "integer", "binary"])
def test_in_memory_and_streamed_pipelines_give_the_same_batches(tmp_path, label_format):
    from stages.optimization import LossChoice
    from stages.train import batch_reader, evaluation_dataset, training_dataset

    num_classes = 2 if label_format == "binary" else 3
    prepared = write_prepared(tmp_path, num_classes=num_classes)
    images = np.load(prepared / "train_x.npy", mmap_mode="r")
    labels = np.load(prepared / "train_y.npy", mmap_mode="r")
    loss = LossChoice({"one_hot": "categorical", "integer": "sparse_categorical", "binary": "binary"}[label_format],
                      label_format)
    pipelines = {}
    for in_memory in (True, False):
        read = batch_reader(images, labels, loss, num_classes, in_memory=in_memory)
        batches = [*training_dataset(images, labels, 10, 7, range(1, 3), read), *evaluation_dataset(labels, 10, read)]
        pipelines[in_memory] = [(x.numpy(), y.numpy()) for x, y in batches]
    steps = -(-len(labels) // 10)
    assert len(pipelines[True]) == 3 * steps  # two shuffled epochs, then the set in order
    for (memory_x, memory_y), (stream_x, stream_y) in zip(pipelines[True], pipelines[False], strict=True):
        np.testing.assert_array_equal(memory_x, stream_x)
        np.testing.assert_array_equal(memory_y, stream_y)
        assert memory_y.dtype == stream_y.dtype
    shuffled, in_order = (np.concatenate([x for x, _ in pipelines[True][start:start + steps]])
                          for start in (0, 2 * steps))
    assert not np.array_equal(shuffled, in_order) and np.array_equal(in_order, images)


def test_the_pipelines_run_without_the_autotuner(tmp_path):
    """tf.data's autotuner made the end of `fit` wait for its thread, up to a minute."""
    from stages.optimization import LossChoice
    from stages.train import batch_reader, evaluation_dataset, training_dataset

    prepared = write_prepared(tmp_path)
    images, labels = np.load(prepared / "train_x.npy"), np.load(prepared / "train_y.npy")
    read = batch_reader(images, labels, LossChoice("sparse_categorical", "integer"), 3)
    for dataset in (training_dataset(images, labels, 10, 7, range(2), read), evaluation_dataset(labels, 10, read)):
        assert dataset.options().autotune.enabled is False


@pytest.mark.parametrize("precision", ["float32", "auto"])
def test_same_seed_and_params_give_identical_metrics(tmp_path, precision):
    model = {"dense_dropout": 0.3, "batch_norm": True}
    train = {"epochs": 3, "precision": precision}
    _, first = run_training(tmp_path / "a", model=model, train=train)
    _, second = run_training(tmp_path / "b", model=model, train=train)
    _, other_seed = run_training(tmp_path / "c", model=model, train=train, seed=2)
    assert first["history"] == second["history"]
    assert first["history"] != other_seed["history"]


@pytest.mark.parametrize(("steps_per_epoch", "expected"), [(6, 6), (41, 41), (64, 64), (128, 64), (399, 57), (469, 7), (401, 1)])
def test_steps_per_execution_divides_the_epoch(steps_per_epoch, expected):
    from stages.train import steps_per_execution

    assert steps_per_execution(steps_per_epoch) == expected


def test_several_steps_per_execution_train_exactly_as_one_step_per_call(tmp_path, monkeypatch):
    import stages.train

    train = {"epochs": 3, "schedule": "cosine", "precision": "float32"}
    model = {"dense_dropout": 0.3, "batch_norm": True}
    _, several = run_training(tmp_path / "several", model=model, train=train)  # 6 steps per epoch: 6 per call
    monkeypatch.setattr(stages.train, "MAX_STEPS_PER_EXECUTION", 1)
    _, one = run_training(tmp_path / "one", model=model, train=train)
    assert several["history"] == one["history"]
    for left, right in zip(load(tmp_path / "several" / "model.keras").get_weights(),
                           load(tmp_path / "one" / "model.keras").get_weights(), strict=True):
        np.testing.assert_array_equal(left, right)


def test_one_device_mirrored_strategy_runs_the_same_code_path(tmp_path):
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    summary, state = run_training(tmp_path, train={"epochs": 2, "precision": "float32"}, strategy=strategy)
    assert summary["epochs_run"] == 2 and len(state["history"]["val_accuracy"]) == 2
    assert load(tmp_path / "model.keras").count_params() == summary["total_params"]


def test_a_finished_run_is_not_trained_again(tmp_path):
    first, _ = run_training(tmp_path, train={"epochs": 2})
    again, _ = run_training(tmp_path, train={"epochs": 2})
    assert again["resumed_from_epoch"] == 2 and again["best_value"] == first["best_value"]
    other, _ = run_training(tmp_path, train={"epochs": 2, "learning_rate": 0.002})
    assert other["resumed_from_epoch"] == 0  # other params: the old state is not used


def cnnlab_train(folder: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stages", "train", "--prepared", "prepared", "--augmented", "augmented",
         "--model", "model.keras", "--summary", "summary.json", "--live-dir", "live",
         "--checkpoints", "checkpoints"],
        cwd=folder, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_training_killed_mid_way_resumes_to_the_uninterrupted_result(tmp_path):
    epochs = 12
    params = {"seed": 3, "model": {"conv_filters": [16, 32], "dense_units": [32], "dense_dropout": 0.3,
                                   "batch_norm": True},
              "train": {"epochs": epochs, "batch_size": 16, "schedule": "cosine", "warmup_epochs": 2}}
    folders = {}
    for name in ("uninterrupted", "killed"):
        folder = folders[name] = tmp_path / name
        write_prepared(folder, shape=(28, 28, 1), scale=16)
        (folder / "params.yaml").write_text(yaml.safe_dump(params))
    assert cnnlab_train(folders["uninterrupted"]).wait() == 0

    process = cnnlab_train(folders["killed"])
    state_path = folders["killed"] / "checkpoints" / "state.json"
    while not (state_path.is_file() and json.loads(state_path.read_text())["epochs_done"] >= 3):
        assert process.poll() is None, "training ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = json.loads(state_path.read_text())["epochs_done"]
    assert 3 <= done < epochs and not (folders["killed"] / "summary.json").exists()
    assert not list(folders["killed"].glob(".*.tmp*"))  # a kill leaves no half-written output

    resumed = cnnlab_train(folders["killed"])
    output, _ = resumed.communicate()
    assert resumed.returncode == 0 and f"resumed after epoch {done}" in output

    summaries = {name: json.loads((folder / "summary.json").read_text()) for name, folder in folders.items()}
    for key in ("epochs_run", "best_epoch", "best_value"):
        assert summaries["killed"][key] == summaries["uninterrupted"][key]
    histories = [json.loads((folder / "checkpoints" / "state.json").read_text())["history"]
                 for folder in folders.values()]
    assert histories[0] == histories[1]
    for split in ("train", "eval"):
        for tsv in sorted((folders["uninterrupted"] / "live" / "plots" / "metrics" / split).glob("*.tsv")):
            assert (folders["killed"] / "live" / "plots" / "metrics" / split / tsv.name).read_text() == tsv.read_text()
    weights = [load(folder / "model.keras").get_weights() for folder in folders.values()]
    for left, right in zip(*weights, strict=True):
        np.testing.assert_array_equal(left, right)
