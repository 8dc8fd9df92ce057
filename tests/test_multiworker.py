"""`cnnlab train` with several workers: two processes on this machine (two localhost ports, CPU)
train one model with MultiWorkerMirroredStrategy, `train.batch_size` being the global batch,
and reach the metrics one worker reaches; only the chief writes the results. Started by hand
with TF_CONFIG (killed together after an epoch, then relaunched: they resume together), or by
Ray Train's TensorflowTrainer (`train.workers: 2`), which sets TF_CONFIG itself."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import error_line, prepared_folder, write_params
from test_sweep_e2e import cluster, free_port  # noqa: F401 (a fixture)

# No dropout: each replica draws its own masks, which a single worker would draw differently.
PARAMS = {"train": {"epochs": 2, "batch_size": 64, "learning_rate": 0.005},
          "model": {"conv_filters": [8], "dense_units": [16], "dense_dropout": 0.0}}
# Two workers average the two half-batches' gradients where one worker averages the whole
# batch's: the same arithmetic in another order, so float rounding differs and, amplified over
# 2 epochs, the final metrics differ by about 0.1% of the loss and one validation image (0.004
# accuracy; measured on digits: loss 1.287 vs 1.285, val accuracy 0.6652 vs 0.6609). A batch
# mistake (each worker taking the whole batch: half the steps) moves the loss by 10% or more.
LOSS_TOLERANCE = 0.01   # relative
ACCURACY_TOLERANCE = 0.012  # absolute: 3 of the 270 validation images
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3"}


def train_command(folder: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stages", "train"], cwd=folder, env={**os.environ, **QUIET, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen) -> str:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return stdout


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepared_folder(tmp_path_factory.mktemp("multiworker"), PARAMS)


def copy_of(prepared: Path, name: str) -> Path:
    folder = prepared.parent / name
    shutil.copytree(prepared, folder)
    return folder


@pytest.fixture(scope="module")
def one_worker(prepared) -> Path:
    """The same params trained by one process: the reference the multi-worker runs must reach."""
    single = copy_of(prepared, "one-worker")
    finished(train_command(single, {}))
    return single


def final_metrics(folder: Path) -> dict:
    return json.loads((folder / "reports/train/metrics.json").read_text())


def assert_same_training(one: Path, two: Path) -> None:
    """Final metrics within the tolerance, the same epochs and global batch, the same result files."""
    first, second = final_metrics(one), final_metrics(two)
    for split in ("train", "eval"):
        assert second[split]["loss"] == pytest.approx(first[split]["loss"], rel=LOSS_TOLERANCE), (first, second)
        assert second[split]["accuracy"] == pytest.approx(first[split]["accuracy"], abs=ACCURACY_TOLERANCE)
    summary = json.loads((two / "models/summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["params"]["train"]["batch_size"] == 64
    assert results(two) == results(one)  # the chief's, once


def new_files(folder: Path) -> set[Path]:
    """Files that training added to its copy of the prepared folder (relative paths)."""
    prepared = next(path for path in folder.parent.iterdir() if path.name.startswith("multiworker"))
    return {path.relative_to(folder) for path in folder.rglob("*") if path.is_file()
            and not (prepared / path.relative_to(folder)).exists()}


def results(folder: Path) -> set[Path]:
    return {path for path in new_files(folder) if path.parts[0] != ".cnnlab"}


def resume_states(folder: Path) -> set[str]:
    """The folders under .cnnlab that hold a resume state: one per worker."""
    return {path.parts[1] for path in new_files(folder) if path.parts[0] == ".cnnlab" and path.name == "state.json"}


def launch_two_workers(folder: Path) -> list[subprocess.Popen]:
    workers = [f"localhost:{free_port()}", f"localhost:{free_port()}"]
    return [train_command(folder, {"TF_CONFIG": json.dumps(
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}) for index in range(2)]


def kill_after_first_epoch(folder: Path, processes: list[subprocess.Popen], seconds: float = 300) -> None:
    """SIGKILL both workers as soon as both have saved epoch 1 (epoch 2 takes about a second)."""
    states = [folder / ".cnnlab/checkpoints/state.json", folder / ".cnnlab/checkpoints-worker-1/state.json"]
    deadline = time.monotonic() + seconds
    while not all(state.exists() for state in states):
        assert time.monotonic() < deadline and all(process.poll() is None for process in processes), \
            [process.communicate()[1][-2000:] for process in processes if process.poll() is not None]
        time.sleep(0.02)
    for process in processes:
        process.kill()
    for process in processes:
        process.wait()
    assert all(json.loads(state.read_text())["epochs_done"] == 1 for state in states), "killed too late"


@pytest.mark.tf
@pytest.mark.e2e
def test_two_workers_resume_together_match_one_worker_and_only_the_chief_writes(prepared, one_worker):
    double = copy_of(prepared, "two-workers")
    kill_after_first_epoch(double, launch_two_workers(double))
    chief, other = (finished(process) for process in launch_two_workers(double))
    assert "(resumed after epoch 1)" in chief and "(resumed after epoch 1)" in other

    assert_same_training(one_worker, double)
    assert resume_states(double) == {"checkpoints", "checkpoints-worker-1"}
    # The workers' states agree: the same epochs, and the same variables (mirrored every step).
    states = [json.loads((double / ".cnnlab" / name / "state.json").read_text())
              for name in ("checkpoints", "checkpoints-worker-1")]
    assert states[0]["epochs_done"] == states[1]["epochs_done"] == 2
    assert states[0]["history"] == states[1]["history"]
    with np.load(double / ".cnnlab/checkpoints" / states[0]["checkpoint"]) as mine, \
            np.load(double / ".cnnlab/checkpoints-worker-1" / states[1]["checkpoint"]) as theirs:
        assert sorted(mine.files) == sorted(theirs.files) and mine.files
        assert all(np.array_equal(mine[name], theirs[name]) for name in mine.files)

    # Worker 1 lost its state (killed before it saved): the workers disagree, and start over together.
    shutil.rmtree(double / ".cnnlab/checkpoints-worker-1")
    processes = launch_two_workers(double)
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [stderr[-2000:] for _, stderr in outputs]
    assert all("resumed" not in stdout and "training starts over" in stderr for stdout, stderr in outputs)
    assert_same_training(one_worker, double)


@pytest.mark.slow
@pytest.mark.tf
@pytest.mark.e2e
def test_ray_train_launches_the_workers_and_matches_one_worker(prepared, one_worker, cluster):
    """`train.workers: 2` with RAY_ADDRESS naming a two-node cluster (1 CPU each): Ray Train
    places a worker on each node and sets TF_CONFIG in both; each runs the train stage."""
    address, env, _ = cluster
    folder = copy_of(prepared, "ray-train")
    write_params(folder, {**PARAMS, "train": {**PARAMS["train"], "workers": 2}})
    stdout = finished(train_command(folder, {**env, "RAY_ADDRESS": address}))
    assert stdout.strip().splitlines()[-1].startswith("best epoch 2/2: val_accuracy")
    assert_same_training(one_worker, folder)
    assert resume_states(folder) == {"checkpoints", "checkpoints-worker-1"}


def test_several_workers_without_a_ray_cluster_is_one_line(prepared):
    folder = copy_of(prepared, "no-cluster")
    write_params(folder, {**PARAMS, "train": {**PARAMS["train"], "workers": 2}})
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-m", "stages", "train"], cwd=folder, capture_output=True,
                            text=True, env=env)
    line = error_line(result)
    assert line.startswith("train.workers is 2, which needs a Ray cluster") and "RAY_ADDRESS" in line
    assert not (folder / "models").exists()


def test_a_malformed_tf_config_is_one_line(prepared):
    result = subprocess.run([sys.executable, "-m", "stages", "train"], cwd=prepared, capture_output=True,
                            text=True, env={**os.environ, "TF_CONFIG": '{"cluster": {"worker": ["a:1"]}}'})
    line = error_line(result)
    assert line.startswith("TF_CONFIG is not a multi-worker configuration") and "received" in line
