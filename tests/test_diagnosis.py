"""The fit-diagnosis rules on synthetic training histories."""

from __future__ import annotations

import pytest

from stages.diagnosis import GOOD_FIT, OVERFITTING, UNDERFITTING, diagnose_fit

THRESHOLDS = {"underfit_error": 0.10, "overfit_gap": 0.05}


def history(train: list[float], val: list[float]) -> dict[str, list[float]]:
    return {"accuracy": train, "val_accuracy": val, "loss": [1.0] * len(train), "val_loss": [1.0] * len(val)}


def test_low_training_error_and_much_higher_validation_error_is_overfitting():
    # The course's example: training error 1%, validation error 10%.
    diagnosis = diagnose_fit(history([0.80, 0.95, 0.99], [0.78, 0.88, 0.90]), 3, **THRESHOLDS)
    assert diagnosis.verdict == OVERFITTING
    assert diagnosis.train_error == pytest.approx(0.01)
    assert diagnosis.val_error == pytest.approx(0.10)
    assert diagnosis.gap == pytest.approx(0.09)
    text = diagnosis.explanation()
    assert "Overfitting" in text and "1.0%" in text and "10.0%" in text
    assert "9.0 points" in text and "overfit_gap = 5.0 points" in text


def test_high_training_and_validation_error_is_underfitting():
    # The course's example: training error 14%, validation error 15%.
    diagnosis = diagnose_fit(history([0.70, 0.86], [0.69, 0.85]), 2, **THRESHOLDS)
    assert diagnosis.verdict == UNDERFITTING
    assert diagnosis.train_error == pytest.approx(0.14)
    assert diagnosis.val_error == pytest.approx(0.15)
    text = diagnosis.explanation()
    assert "Underfitting" in text and "14.0%" in text and "underfit_error = 10.0%" in text


def test_low_close_errors_are_a_good_fit():
    diagnosis = diagnose_fit(history([0.97, 0.99], [0.96, 0.98]), 2, **THRESHOLDS)
    assert diagnosis.verdict == GOOD_FIT
    assert diagnosis.gap == pytest.approx(0.01)
    assert "Good fit" in diagnosis.explanation()


def test_errors_are_read_at_the_best_epoch_not_the_last():
    # Best epoch 2 is a good fit; by the last epoch the model has overfitted.
    overfits_later = history([0.90, 0.97, 0.995, 0.999], [0.90, 0.96, 0.92, 0.90])
    assert diagnose_fit(overfits_later, 2, **THRESHOLDS).verdict == GOOD_FIT
    assert diagnose_fit(overfits_later, 4, **THRESHOLDS).verdict == OVERFITTING
    assert diagnose_fit(overfits_later, 2, **THRESHOLDS).epoch == 2


def test_thresholds_come_from_the_caller():
    mild_gap = history([0.99], [0.96])  # gap 3 points
    assert diagnose_fit(mild_gap, 1, underfit_error=0.10, overfit_gap=0.05).verdict == GOOD_FIT
    assert diagnose_fit(mild_gap, 1, underfit_error=0.10, overfit_gap=0.02).verdict == OVERFITTING
    assert diagnose_fit(mild_gap, 1, underfit_error=0.005, overfit_gap=0.05).verdict == UNDERFITTING


def test_missing_accuracy_gives_no_diagnosis_and_a_bad_best_epoch_falls_back_to_the_last():
    assert diagnose_fit({"loss": [1.0], "val_loss": [1.0]}, 1, **THRESHOLDS) is None
    assert diagnose_fit({}, 1, **THRESHOLDS) is None
    diagnosis = diagnose_fit(history([0.5, 0.99], [0.5, 0.98]), 0, **THRESHOLDS)
    assert diagnosis.epoch == 2 and diagnosis.verdict == GOOD_FIT
