"""Calibration and confidence thresholding: can the model's confidence be trusted?

A model is calibrated when, among the images it classifies with confidence p (the probability
of its predicted class), a share p is right. The reliability table bins the test images by
that confidence; the expected calibration error (ECE) is the test-image-weighted mean gap
between each bin's accuracy and its mean confidence (Guo et al., 2017), with CALIBRATION_BINS
equal-width bins over [0, 1].

The threshold table answers "what if the model abstained when unsure?": for each threshold p,
the share of test images it still classifies (confidence >= p, the coverage) and its accuracy
on those.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CALIBRATION_BINS = 10
BINNING = f"{CALIBRATION_BINS} equal-width bins of the predicted class's probability over [0, 1]"
THRESHOLDS = (0.5, 0.7, 0.9)


def _confidence_and_correct(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predicted = probabilities.argmax(axis=1)
    return probabilities.max(axis=1), predicted == np.asarray(labels)


def reliability_table(labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """One row per non-empty confidence bin: its bounds, images, mean confidence and accuracy."""
    confidence, correct = _confidence_and_correct(labels, probabilities)
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 goes to bin 0.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    rows = []
    for bin_id in np.unique(index):
        members = index == bin_id
        rows.append((bin_id / bins, (bin_id + 1) / bins, int(members.sum()),
                     float(confidence[members].mean()), float(correct[members].mean())))
    return pd.DataFrame(rows, columns=["bin_low", "bin_high", "images", "confidence", "accuracy"])


def expected_calibration_error(table: pd.DataFrame) -> float:
    """ECE from a reliability table: sum over bins of (images / total) * |accuracy - confidence|."""
    total = table["images"].sum()
    if not total:
        return 0.0
    return float((table["images"] / total * (table["accuracy"] - table["confidence"]).abs()).sum())


def threshold_table(labels: np.ndarray, probabilities: np.ndarray,
                    thresholds: tuple[float, ...] = THRESHOLDS) -> pd.DataFrame:
    """Per threshold: images kept (confidence >= threshold), coverage, and accuracy on them
    (empty when no image is confident enough)."""
    confidence, correct = _confidence_and_correct(labels, probabilities)
    rows = []
    for threshold in thresholds:
        kept = confidence >= threshold
        accuracy = float(correct[kept].mean()) if kept.any() else None
        rows.append((threshold, int(kept.sum()), float(kept.mean()) if len(kept) else 0.0, accuracy))
    return pd.DataFrame(rows, columns=["threshold", "images", "coverage", "accuracy"])
