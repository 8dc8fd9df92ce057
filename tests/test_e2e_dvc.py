"""End to end with the real `dvc` binary in a temporary git repository."""

from __future__ import annotations

import pytest

from conftest import stages_run

pytestmark = pytest.mark.e2e


def test_repro_caching_report_only_change_metrics_and_plots(reproduced_project):
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

    # (Experiments and `dvc exp show`: tests/test_compare.py, on conftest's experiment beside this baseline.)
    metrics = run("dvc", "metrics", "show", "--json")
    assert "accuracy" in metrics.stdout
    plots = run("dvc", "plots", "show", "--json")
    assert "confusion.csv" in plots.stdout and "accuracy.tsv" in plots.stdout
