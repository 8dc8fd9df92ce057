"""The five stages in order on real digits, with real (tiny) TensorFlow training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import FAST_PARAMS, run_cnnlab

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def pipeline_dir(trained_digits, tmp_path_factory):
    """The five stages' outputs on digits with FAST_PARAMS (conftest's reproduced project), copied."""
    return Path(shutil.copytree(trained_digits, tmp_path_factory.mktemp("pipeline") / "project"))


def test_train_keeps_the_best_epoch_and_logs_every_epoch(pipeline_dir):
    summary = json.loads((pipeline_dir / "models" / "summary.json").read_text())
    assert summary["epochs_run"] == FAST_PARAMS["train"]["epochs"]
    val_accuracy = pd.read_csv(pipeline_dir / "reports/train/plots/metrics/eval/accuracy.tsv", sep="\t")
    assert len(val_accuracy) == summary["epochs_run"]
    assert summary["best_value"] == pytest.approx(val_accuracy["accuracy"].max(), abs=5e-5)  # logged to 4 digits
    assert summary["best_epoch"] == int(val_accuracy["accuracy"].idxmax()) + 1
    assert (pipeline_dir / "models" / "model.keras").stat().st_size > 10_000
    assert summary["params"]["train"]["optimizer"] == "adam"


def test_evaluate_metrics_agree_with_the_tables(pipeline_dir):
    metrics = json.loads((pipeline_dir / "reports" / "metrics.json").read_text())
    assert set(metrics) >= {"accuracy", "loss", "precision_macro", "recall_macro", "f1_macro"}
    assert metrics["accuracy"] > 0.5  # three tiny epochs already learn digits far above chance (0.1)
    rows = pd.read_csv(pipeline_dir / "reports/evaluation/confusion.csv")
    assert len(rows) == metrics["test_images"] == 270
    assert (rows["actual"] == rows["predicted"]).mean() == pytest.approx(metrics["accuracy"], abs=1e-4)
    per_class = pd.read_csv(pipeline_dir / "reports/evaluation/per_class.csv")
    assert per_class["f1"].mean() == pytest.approx(metrics["f1_macro"], abs=1e-4)


def test_report_links_only_existing_figures_and_is_deterministic(pipeline_dir):
    report = pipeline_dir / "reports" / "report.md"
    first = report.read_bytes()
    text = first.decode()
    for heading in ("## Test results", "## Fit diagnosis", "## Where the model errs", "## What was trained"):
        assert heading in text
    links = [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert {"figures/training_curves.png", "evaluation/figures/confusion_matrix.png", "figures/samples.png"} <= set(links)
    for link in links:
        assert (report.parent / link).is_file()
    figures = {p.name: p.read_bytes() for p in (report.parent / "figures").iterdir()}
    run_cnnlab("report", cwd=pipeline_dir, check=True)
    assert report.read_bytes() == first
    assert {p.name: p.read_bytes() for p in (report.parent / "figures").iterdir()} == figures
