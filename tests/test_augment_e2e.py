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


def test_online_augmentation_experiment_runs_beside_the_baseline(experimented_project):
    """conftest's experiment (`-S augment.mode=online -S augment.rotation=15` among its
    switches) beside the committed baseline."""
    dvc_project = experimented_project
    policy = json.loads((dvc_project.path / "data" / "augmented" / "policy.json").read_text())
    assert policy["mode"] == "online" and policy["transforms"]["rotation"] == 15
    report = (dvc_project.path / "reports" / "report.md").read_text()
    assert "figures/augmentation_preview.png" in report
    assert (dvc_project.path / "reports" / "figures" / "augmentation_preview.png").is_file()

    rows = {row["Experiment"] or row["rev"]: row for row in experiments(dvc_project)}
    assert rows["tuned"]["augment.mode"] == "online" and rows["tuned"]["augment.rotation"] == "15"
    assert rows["main"]["augment.mode"] == "off"
    assert 0.0 < float(rows["tuned"]["accuracy"]) <= 1.0

    # Back to the baseline's params, then -S augment.mode=off, which writes a bare off (YAML
    # false) into params.yaml: still accepted, and the baseline's params give its metrics.
    baseline = json.loads(dvc_project("git", "show", "HEAD:reports/metrics.json").stdout)
    dvc_project("git", "checkout", "--", "params.yaml")
    dvc_project("dvc", "exp", "run", "-n", "back-off", "-S", "augment.mode=off")
    assert "mode: off\n" in (dvc_project.path / "params.yaml").read_text()
    assert json.loads((dvc_project.path / "reports" / "metrics.json").read_text()) == baseline
