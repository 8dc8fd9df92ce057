"""The train stage under the real dvc: resume state in .cnnlab/ (no stage output), one `-S` per switch."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e


def test_an_experiment_switching_optimizer_schedule_and_batch_norm(experimented_project):
    """conftest's experiment: `dvc exp run -S train.optimizer=nadam -S train.schedule=cosine
    -S model.batch_norm=true ...` after `dvc repro`."""
    dvc_project = experimented_project
    project = dvc_project.path
    state = json.loads((project / ".cnnlab" / "checkpoints" / "state.json").read_text())
    assert state["epochs_done"] == 3
    assert (project / "reports" / "train" / "plots" / "metrics" / "train" / "learning_rate.tsv").is_file()

    summary = json.loads((project / "models" / "summary.json").read_text())
    assert summary["params"]["train"]["optimizer"] == "nadam"
    assert summary["params"]["train"]["schedule"] == "cosine"
    assert "conv1_bn" in [row["name"] for row in summary["layers"]]
    assert "resumed_from_epoch" not in summary and "training_seconds" not in summary  # not results
    shown = json.loads(dvc_project("dvc", "exp", "show", "--json").stdout)
    assert "nadam" in json.dumps(shown)
    status = dvc_project("dvc", "status").stdout
    assert "changed" not in status
