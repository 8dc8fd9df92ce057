"""End to end with the real `dvc` binary in a temporary git repository."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def test_repro_caching_report_only_change_and_experiments(reproduced_project):
    run = reproduced_project  # a first `dvc repro` ran all five stages, committed as the baseline
    assert (run.path / "reports" / "report.md").is_file()

    second = run("dvc", "repro")
    assert stages_run(second.stdout) == []

    # A report-only param re-runs only the report stage.
    params = run.path / "params.yaml"
    params.write_text(params.read_text().replace("title: cnnlab report", "title: Digits review"))
    third = run("dvc", "repro")
    assert stages_run(third.stdout) == ["report"]
    assert (run.path / "reports" / "report.md").read_text().startswith("# Digits review")
    run("git", "commit", "-qam", "retitle report")

    run("dvc", "exp", "run", "-S", "train.optimizer=rmsprop", "-n", "rmsprop")
    experiments = json.loads(run("dvc", "exp", "show", "--json").stdout)
    accuracies = {}
    for commit in experiments:
        runs = [commit] + [exp for branch in commit.get("experiments") or [] for exp in branch["revs"]]
        for entry in runs:
            data = entry["data"]
            optimizer = data["params"]["params.yaml"]["data"]["train"]["optimizer"]
            accuracies[optimizer] = data["metrics"]["reports/metrics.json"]["data"]["accuracy"]
    assert set(accuracies) == {"adam", "rmsprop"}
    assert all(0.0 <= value <= 1.0 for value in accuracies.values())

    metrics = run("dvc", "metrics", "show", "--json")
    assert "accuracy" in metrics.stdout
    plots = run("dvc", "plots", "show", "--json")
    assert "confusion.csv" in plots.stdout and "accuracy.tsv" in plots.stdout
