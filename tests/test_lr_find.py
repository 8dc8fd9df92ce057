"""cnnlab lr-find: the range test's smoothing and suggestion, and a real run on the trained
digits project that writes a plot and a suggestion and leaves every pipeline file as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import digests, error_line, run_cnnlab
from stages.lr_find import SKIP_START, rates, smooth, suggest


def test_rates_grow_exponentially_and_smoothing_is_bias_corrected():
    tried = rates(1e-6, 1.0, 7)
    np.testing.assert_allclose(tried, [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    np.testing.assert_allclose(smooth([2.0] * 5), 2.0)  # no pull towards 0 at the start
    assert smooth([1.0, 3.0])[1] == pytest.approx((0.98 * 0.02 * 1 + 0.02 * 3) / (1 - 0.98 ** 2))


def test_the_suggestion_is_a_tenth_of_the_minimum_and_the_steepest_descent_comes_before_it():
    tried = rates(1e-5, 1.0, 60)
    log_rate = np.log10(tried)
    smoothed = 2.0 - np.tanh(log_rate + 3) + np.where(log_rate > -1, 20 * (log_rate + 1) ** 2, 0)
    found = suggest(tried, smoothed)
    lowest = tried[SKIP_START + np.argmin(smoothed[SKIP_START:])]
    assert found["suggested_learning_rate"] == pytest.approx(lowest / 10)
    assert 10 ** -3.5 < found["steepest_descent_rate"] < 10 ** -2.5  # tanh falls fastest at 1e-3


@pytest.mark.tf
def test_lr_find_writes_plot_and_suggestion_and_touches_no_pipeline_file(trained_digits, tmp_path, cnnlab_in_process):
    project = Path(shutil.copytree(trained_digits, tmp_path / "project"))
    pipeline = [project / name for name in ("data", "models", "reports", ".cnnlab") if (project / name).exists()]
    before = digests(*pipeline)
    assert any("checkpoints" in path for path in before) and any("model.keras" in path for path in before)
    result = cnnlab_in_process("lr-find", "--steps", "40", "--output", "lr", cwd=project)
    assert digests(*pipeline) == before
    record = json.loads((project / "lr" / "lr_find.json").read_text())
    assert 1e-7 <= record["suggested_learning_rate"] < record["minimum_loss_rate"] <= 10.0
    assert len(record["curve"]) == record["steps"] <= 40
    assert (project / "lr" / "lr_find.png").read_bytes().startswith(b"\x89PNG")
    assert f"{record['suggested_learning_rate']:.2g}" in result.stdout
    refused = run_cnnlab("lr-find", "--min-rate", "1", "--max-rate", "0.1", "--output", "lr2", cwd=project)
    assert "--min-rate (1) must be positive and below --max-rate (0.1)" in error_line(refused)
    assert not (project / "lr2").exists()
