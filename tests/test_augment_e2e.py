"""`dvc exp run` compares augmentation modes like any other params change (the real dvc binary)."""

from __future__ import annotations

import csv
import io
import json

import pytest

pytestmark = pytest.mark.e2e


def experiments(project) -> list[dict[str, str]]:
    table = project("dvc", "exp", "show", "--csv", "--all-branches").stdout
    return list(csv.DictReader(io.StringIO(table)))


def test_online_augmentation_experiment_runs_beside_the_baseline(reproduced_project):
    dvc_project = reproduced_project  # after `dvc repro`, committed as the baseline
    baseline = json.loads((dvc_project.path / "reports" / "metrics.json").read_text())

    dvc_project("dvc", "exp", "run", "-n", "rotate10", "-S", "augment.mode=online", "-S", "augment.rotation=10")
    policy = json.loads((dvc_project.path / "data" / "augmented" / "policy.json").read_text())
    assert policy["mode"] == "online" and policy["transforms"]["rotation"] == 10
    report = (dvc_project.path / "reports" / "report.md").read_text()
    assert "figures/augmentation_preview.png" in report
    assert (dvc_project.path / "reports" / "figures" / "augmentation_preview.png").is_file()

    rows = {row["Experiment"] or row["rev"]: row for row in experiments(dvc_project)}
    assert rows["rotate10"]["augment.mode"] == "online" and rows["rotate10"]["augment.rotation"] == "10"
    assert rows["main"]["augment.mode"] == "off"
    assert 0.0 < float(rows["rotate10"]["accuracy"]) <= 1.0

    # -S augment.mode=off writes a bare off (YAML false) into params.yaml: still accepted,
    # and the same params as the baseline give the baseline's metrics.
    dvc_project("dvc", "exp", "run", "-n", "back-off", "-S", "augment.mode=off")
    assert json.loads((dvc_project.path / "reports" / "metrics.json").read_text()) == baseline
