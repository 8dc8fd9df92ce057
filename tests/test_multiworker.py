"""`cnnlab train` under TF_CONFIG: two worker processes on this machine (two localhost ports,
CPU) train one model with MultiWorkerMirroredStrategy, `train.batch_size` being the global
batch, and reach the metrics one worker reaches; only the chief writes the results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import error_line, prepared_folder
from test_sweep_e2e import free_port

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


def train_command(folder: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stages", "train"], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen) -> str:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    return stdout


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepared_folder(tmp_path_factory.mktemp("multiworker"), PARAMS)


def copy_of(prepared: Path, name: str) -> Path:
    folder = prepared.parent / name
    shutil.copytree(prepared, folder)
    return folder


def final_metrics(folder: Path) -> dict:
    return json.loads((folder / "reports/train/metrics.json").read_text())


@pytest.mark.tf
@pytest.mark.e2e
def test_two_workers_match_one_worker_and_only_the_chief_writes(prepared):
    single = copy_of(prepared, "one-worker")
    finished(train_command(single, {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}))

    double = copy_of(prepared, "two-workers")
    workers = [f"localhost:{free_port()}", f"localhost:{free_port()}"]
    processes = [train_command(double, {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": json.dumps(
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}) for index in range(2)]
    for process in processes:
        finished(process)

    one, two = final_metrics(single), final_metrics(double)
    for split in ("train", "eval"):
        assert two[split]["loss"] == pytest.approx(one[split]["loss"], rel=LOSS_TOLERANCE), (one, two)
        assert two[split]["accuracy"] == pytest.approx(one[split]["accuracy"], abs=ACCURACY_TOLERANCE), (one, two)
    summary = json.loads((double / "models/summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["params"]["train"]["batch_size"] == 64

    def new_files(folder: Path, scratch: bool) -> set[Path]:
        return {path.relative_to(folder) for path in folder.rglob("*") if path.is_file()
                and not (prepared / path.relative_to(folder)).exists()
                and (path.relative_to(folder).parts[0] == ".cnnlab") == scratch}

    assert new_files(double, scratch=False) == new_files(single, scratch=False)  # the chief's, once
    assert {path.parts[1] for path in new_files(double, scratch=True)} == {"checkpoints", "checkpoints-worker-1"}


def test_a_malformed_tf_config_is_one_line(prepared):
    result = subprocess.run([sys.executable, "-m", "stages", "train"], cwd=prepared, capture_output=True,
                            text=True, env={**os.environ, "TF_CONFIG": '{"cluster": {"worker": ["a:1"]}}'})
    line = error_line(result)
    assert line.startswith("TF_CONFIG is not a multi-worker configuration") and "received" in line
