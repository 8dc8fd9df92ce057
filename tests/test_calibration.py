"""Calibration and thresholding from labels and probabilities (no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from stages.calibration import CALIBRATION_BINS, expected_calibration_error, reliability_table, threshold_table


def probabilities_with_confidence(confidence: np.ndarray, classes: int = 3) -> np.ndarray:
    """Rows whose first class has probability `confidence`, the rest shared equally."""
    rows = np.repeat(((1 - confidence) / (classes - 1))[:, np.newaxis], classes, axis=1)
    rows[:, 0] = confidence
    return rows


def test_overconfident_model_has_the_gap_as_its_calibration_error():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.91, 0.99, 200)
    labels = np.where(np.arange(200) % 2 == 0, 0, 1)  # right on half of the images
    table = reliability_table(labels, probabilities_with_confidence(confidence))
    assert table["images"].sum() == 200 and len(table) == 1  # every image in the (0.9, 1] bin
    assert expected_calibration_error(table) == pytest.approx(confidence.mean() - 0.5)


def test_calibrated_bins_give_zero_and_bins_partition_the_images():
    # In each bin, the share of right images equals the confidence (0.6 and 0.8).
    confidence = np.array([0.6] * 5 + [0.8] * 5)
    labels = np.array([0, 0, 0, 1, 1] + [0, 0, 0, 0, 1])
    table = reliability_table(labels, probabilities_with_confidence(confidence))
    assert table["bin_low"].tolist() == pytest.approx([0.5, 0.7])
    assert expected_calibration_error(table) == pytest.approx(0.0, abs=1e-12)
    assert (table["bin_high"] - table["bin_low"]).to_numpy() == pytest.approx(1 / CALIBRATION_BINS)


def test_thresholds_trade_coverage_for_accuracy():
    confidence = np.array([0.4, 0.55, 0.75, 0.95])
    labels = np.array([1, 1, 0, 0])  # the two least confident answers are wrong
    table = threshold_table(labels, probabilities_with_confidence(confidence, classes=4))
    assert table["threshold"].tolist() == [0.5, 0.7, 0.9]
    assert table["images"].tolist() == [3, 2, 1]
    assert table["coverage"].tolist() == pytest.approx([0.75, 0.5, 0.25])
    assert table["accuracy"].tolist() == pytest.approx([2 / 3, 1.0, 1.0])
    nobody = threshold_table(labels, probabilities_with_confidence(np.full(4, 0.3), classes=4))
    assert nobody["images"].tolist() == [0, 0, 0] and nobody["accuracy"].isna().all()
