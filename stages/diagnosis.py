"""Fit diagnosis: over-, under- or good fit, from training and validation error at the best epoch.

The rules are the course's (error = 1 - accuracy):
    underfitting  the training error itself is high (above `underfit_error`): the model does not
                  even fit the images it learns from (the validation error is then high too);
    overfitting   the training error is low but the validation error is much higher (the gap
                  exceeds `overfit_gap`): the model memorizes instead of generalizing;
    good fit      neither.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

UNDERFITTING, OVERFITTING, GOOD_FIT = "underfitting", "overfitting", "good fit"

ADVICE = {
    UNDERFITTING: "The model does not fit even its training images: try a larger model (more "
                  "filters or layers), more epochs, a higher learning rate or less regularization.",
    OVERFITTING: "The model fits its training images much better than unseen ones: try more "
                 "regularization (dropout, L2, batch normalization), data augmentation, more "
                 "training images, a smaller model or fewer epochs.",
    GOOD_FIT: "Training and validation errors are both low and close together.",
}


@dataclass(frozen=True)
class FitDiagnosis:
    verdict: str
    epoch: int               # 1-based epoch the errors are read at (the best epoch)
    train_error: float
    val_error: float
    underfit_error: float    # the thresholds used
    overfit_gap: float

    @property
    def gap(self) -> float:
        return self.val_error - self.train_error

    def explanation(self) -> str:
        """The verdict in plain words, with the numbers and the threshold that decided it."""
        errors = (f"at the best epoch ({self.epoch}) the training error is {self.train_error:.1%} "
                  f"and the validation error is {self.val_error:.1%}")
        if self.verdict == UNDERFITTING:
            reason = (f"the training error is above the underfitting threshold "
                      f"(underfit_error = {self.underfit_error:.1%})")
        elif self.verdict == OVERFITTING:
            reason = (f"the validation error is {self.gap * 100:.1f} points higher, more than the "
                      f"overfitting threshold (overfit_gap = {self.overfit_gap * 100:.1f} points)")
        else:
            reason = (f"the training error is below {self.underfit_error:.1%} (underfit_error) and "
                      f"the gap of {self.gap * 100:.1f} points is within "
                      f"{self.overfit_gap * 100:.1f} points (overfit_gap)")
        return f"**{self.verdict.capitalize()}**: {errors}; {reason}. {ADVICE[self.verdict]}"


def diagnose_fit(
    history: Mapping[str, Sequence[float]], best_epoch: int, underfit_error: float, overfit_gap: float
) -> FitDiagnosis | None:
    """Diagnose from per-epoch `accuracy` and `val_accuracy`; None if either is missing."""
    train, val = history.get("accuracy"), history.get("val_accuracy")
    if not train or not val:
        return None
    # The best epoch is the model kept; fall back to the last epoch both were logged for.
    epoch = best_epoch if 1 <= best_epoch <= min(len(train), len(val)) else min(len(train), len(val))
    train_error, val_error = 1.0 - float(train[epoch - 1]), 1.0 - float(val[epoch - 1])
    if train_error > underfit_error:
        verdict = UNDERFITTING
    elif val_error - train_error > overfit_gap:
        verdict = OVERFITTING
    else:
        verdict = GOOD_FIT
    return FitDiagnosis(verdict, epoch, train_error, val_error, underfit_error, overfit_gap)
