"""Classification metrics from true labels and predicted probabilities, in NumPy.

Each function gives what the scikit-learn 1.9.1 function it names returns, called as
`evaluate` used to call it (tests/test_metrics.py compares them on hundreds of random cases,
ties and missing classes included), because importing `sklearn.metrics` takes about a second
of every `cnnlab evaluate`. Adapted from scikit-learn (BSD-3-Clause, (c) the scikit-learn
developers), sklearn/metrics/_classification.py and _ranking.py.

Labels and predictions are class ids 0..num_classes-1; `truth` is a boolean array
(positive or not) and `scores` the positive class's scores, for the binary curves.
"""

from __future__ import annotations

import numpy as np


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """The share of images predicted right (accuracy_score)."""
    return float(np.mean(np.asarray(labels) == np.asarray(predicted)))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The mean of -log P(true class) (log_loss with labels=range(num_classes)); probabilities are
    clipped to [eps, 1 - eps], eps of their dtype, so that a confident mistake costs a finite loss."""
    probabilities = np.asarray(probabilities)
    eps = np.finfo(probabilities.dtype).eps
    true_class = probabilities[np.arange(len(probabilities)), labels]
    return float(np.mean(-np.log(np.clip(true_class, eps, 1 - eps))))


def top_k_accuracy(labels: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """The share of images whose true class is among the k most probable (top_k_accuracy_score).

    As in scikit-learn, a tie ranks the class with the higher index first, and a two-class task
    with k = 1 predicts class 1 when its probability is above 0.5 (a tie goes to class 0)."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    num_classes = probabilities.shape[1]
    if k >= num_classes:
        return 1.0
    if num_classes == 2:
        return float(np.mean((probabilities[:, 1] > 0.5) == (labels == 1)))
    true_class = probabilities[np.arange(len(labels)), labels][:, np.newaxis]
    after_true_class = np.arange(num_classes) > labels[:, np.newaxis]
    ranked_above = (probabilities > true_class) | ((probabilities == true_class) & after_true_class)
    return float(np.mean(ranked_above.sum(axis=1) < k))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    pairs = np.asarray(labels, dtype=np.int64) * num_classes + np.asarray(predicted, dtype=np.int64)
    return np.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)


def precision_recall_f1(labels: np.ndarray, predicted: np.ndarray, num_classes: int):
    """Per class: precision, recall, F1 and support (true images), as
    precision_recall_fscore_support(labels=range(num_classes), zero_division=0) gives them:
    a score whose denominator is 0 (a class never predicted, or absent) is 0."""
    counts = confusion_matrix(labels, predicted, num_classes)
    true_positives = np.diagonal(counts)
    support, predictions = counts.sum(axis=1), counts.sum(axis=0)
    precision = divided(true_positives, predictions)
    recall = divided(true_positives, support)
    f1 = divided(2.0 * true_positives, 1.0 * support + predictions)  # 2 TP / (2 TP + FN + FP)
    return precision, recall, f1, support


def divided(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator as floats, 0 where the denominator is 0."""
    undefined = denominator == 0
    return np.where(undefined, 0.0, np.asarray(numerator, dtype=np.float64) / np.where(undefined, 1, denominator))


def averaged(scores: np.ndarray, support: np.ndarray, average: str) -> float:
    """The "macro" (plain mean over classes) or "weighted" (by support) average of per-class scores."""
    if average == "weighted" and support.sum() > 0:
        return float(np.average(scores, weights=support))
    return float(np.mean(scores))


def counts_at_thresholds(truth: np.ndarray, scores: np.ndarray):
    """False and true positives when every distinct score in turn, highest first, is the
    threshold (an image is called positive when its score is at least the threshold), and
    those thresholds (confusion_matrix_at_thresholds). Tied scores move together."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    scores, truth = np.asarray(scores)[order], np.asarray(truth, dtype=bool)[order]
    last_of_each_score = np.append(np.flatnonzero(np.diff(scores)), len(scores) - 1)
    true_positives = np.cumsum(truth, dtype=np.float64)[last_of_each_score]
    false_positives = 1 + last_of_each_score - true_positives
    return false_positives, true_positives, scores[last_of_each_score]


def roc_curve(truth: np.ndarray, scores: np.ndarray):
    """False and true positive rates and their thresholds, from (0, 0) at threshold infinity
    (roc_curve, drop_intermediate=True: points on a straight segment are dropped). A rate
    without the images to divide by (no negatives, or no positives) is NaN."""
    false_positives, true_positives, thresholds = counts_at_thresholds(truth, scores)
    if len(false_positives) > 2:
        corner = np.diff(false_positives, 2).astype(bool) | np.diff(true_positives, 2).astype(bool)
        keep = np.concatenate([[True], corner, [True]])
        false_positives, true_positives, thresholds = (
            false_positives[keep], true_positives[keep], thresholds[keep])
    false_positives, true_positives = np.append(0.0, false_positives), np.append(0.0, true_positives)
    thresholds = np.append(np.inf, thresholds.astype(np.float64))
    return rates(false_positives), rates(true_positives), thresholds


def rates(counts: np.ndarray) -> np.ndarray:
    """Cumulative counts divided by their total: NaN everywhere when the total is 0."""
    return counts / counts[-1] if counts[-1] > 0 else np.full(counts.shape, np.nan)


def precision_recall_curve(truth: np.ndarray, scores: np.ndarray, drop_intermediate: bool = False):
    """Precision and recall, recall decreasing, ending at (recall 0, precision 1), and the
    thresholds (precision_recall_curve). With `drop_intermediate`, of the points that share a
    recall only the first and last stay. Without positives, recall is 1 at every threshold."""
    false_positives, true_positives, thresholds = counts_at_thresholds(truth, scores)
    if drop_intermediate and len(false_positives) > 2:
        steps = np.diff(true_positives[:-1]).astype(bool) | np.diff(true_positives[1:]).astype(bool)
        keep = np.concatenate([[True], steps, [True]])
        false_positives, true_positives, thresholds = (
            false_positives[keep], true_positives[keep], thresholds[keep])
    precision = true_positives / (true_positives + false_positives)  # never 0 / 0: each point has an image
    recall = true_positives / true_positives[-1] if true_positives[-1] else np.ones_like(true_positives)
    return np.append(precision[::-1], 1.0), np.append(recall[::-1], 0.0), thresholds[::-1]


def roc_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the trapezoidal rule (roc_auc_score of a binary task); NaN
    when the test set has one class only."""
    fpr, tpr, _ = roc_curve(truth, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """Precision averaged over the recall steps of the full precision-recall curve
    (average_precision_score of a binary task)."""
    precision, recall, _ = precision_recall_curve(truth, scores)
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))
