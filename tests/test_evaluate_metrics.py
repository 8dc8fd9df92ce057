"""Evaluation metrics on tiny hand-made predictions, checked against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stages.evaluate import (
    classification_metrics,
    confusion_tables,
    curves,
    most_confident_mistakes,
    per_class_table,
    thinned,
)

CLASS_NAMES = ["cat", "dog", "bird"]
# Seven test images; class "bird" (2) is never predicted.
LABELS = np.array([0, 0, 0, 1, 1, 2, 2])
PROBABILITIES = np.array([
    [0.70, 0.20, 0.10],   # cat  -> cat
    [0.60, 0.30, 0.10],   # cat  -> cat
    [0.80, 0.10, 0.10],   # cat  -> cat
    [0.20, 0.70, 0.10],   # dog  -> dog
    [0.50, 0.40, 0.10],   # dog  -> cat   (wrong, confidence 0.5)
    [0.10, 0.60, 0.30],   # bird -> dog   (wrong, confidence 0.6)
    [0.35, 0.40, 0.25],   # bird -> dog   (wrong, confidence 0.4; bird not even in the top 2)
])
PREDICTED = PROBABILITIES.argmax(axis=1)

# By hand: cat TP 3 FP 1 FN 0; dog TP 1 FP 2 FN 1; bird TP 0 FP 0 FN 2.
PRECISION = [3 / 4, 1 / 3, 0.0]
RECALL = [1.0, 1 / 2, 0.0]
F1 = [6 / 7, 0.4, 0.0]
SUPPORT = [3, 2, 2]


def test_headline_metrics_match_hand_computed_values():
    metrics = classification_metrics(LABELS, PROBABILITIES, CLASS_NAMES, top_k=2)

    true_class_probabilities = [0.7, 0.6, 0.8, 0.7, 0.4, 0.3, 0.25]
    assert metrics["accuracy"] == pytest.approx(4 / 7)
    assert metrics["loss"] == pytest.approx(-sum(math.log(p) for p in true_class_probabilities) / 7)
    assert metrics["top_k_accuracy"] == pytest.approx(6 / 7)  # only the last bird misses the top 2
    assert metrics["top_k"] == 2
    assert metrics["precision_macro"] == pytest.approx(sum(PRECISION) / 3)
    assert metrics["recall_macro"] == pytest.approx(sum(RECALL) / 3)
    assert metrics["f1_macro"] == pytest.approx(sum(F1) / 3)
    assert metrics["precision_weighted"] == pytest.approx(np.dot(PRECISION, SUPPORT) / 7)
    assert metrics["recall_weighted"] == pytest.approx(np.dot(RECALL, SUPPORT) / 7)
    assert metrics["f1_weighted"] == pytest.approx(np.dot(F1, SUPPORT) / 7)
    assert metrics["test_images"] == 7
    assert "roc_auc" not in metrics and "average_precision" not in metrics  # multi-class


def test_top_k_is_capped_at_the_number_of_classes():
    metrics = classification_metrics(LABELS, PROBABILITIES, CLASS_NAMES, top_k=5)
    assert metrics["top_k"] == 3
    assert metrics["top_k_accuracy"] == 1.0


def test_per_class_table_including_a_class_never_predicted():
    table = per_class_table(LABELS, PREDICTED, CLASS_NAMES)

    assert table["class"].tolist() == CLASS_NAMES
    assert table["precision"].tolist() == pytest.approx(PRECISION)
    assert table["recall"].tolist() == pytest.approx(RECALL)
    assert table["f1"].tolist() == pytest.approx(F1)
    assert table["support"].tolist() == SUPPORT


def test_confusion_matrix_counts_and_per_sample_rows():
    matrix, rows = confusion_tables(LABELS, PREDICTED, CLASS_NAMES)

    assert matrix.index.tolist() == CLASS_NAMES and matrix.columns.tolist() == CLASS_NAMES
    assert matrix.to_numpy().tolist() == [[3, 0, 0], [1, 1, 0], [0, 2, 0]]
    assert list(rows.columns) == ["actual", "predicted"]
    assert rows.values.tolist() == [["cat", "cat"], ["cat", "cat"], ["cat", "cat"], ["dog", "dog"],
                                    ["dog", "cat"], ["bird", "dog"], ["bird", "dog"]]


def test_most_confident_mistakes_come_first():
    assert most_confident_mistakes(LABELS, PROBABILITIES, count=10).tolist() == [5, 4, 6]
    assert most_confident_mistakes(LABELS, PROBABILITIES, count=2).tolist() == [5, 4]
    assert most_confident_mistakes(LABELS, PROBABILITIES, count=0).tolist() == []


def test_binary_task_adds_roc_auc_and_average_precision():
    # scikit-learn's documented example: ROC AUC 0.75, average precision 0.8333.
    labels = np.array([0, 0, 1, 1])
    positive = np.array([0.1, 0.4, 0.35, 0.8])
    probabilities = np.stack([1 - positive, positive], axis=1)

    metrics = classification_metrics(labels, probabilities, ["no", "yes"], top_k=3)
    assert metrics["roc_auc"] == pytest.approx(0.75)
    assert metrics["average_precision"] == pytest.approx(0.8333, abs=1e-4)
    assert metrics["accuracy"] == pytest.approx(3 / 4)  # 0.35 is called "no"
    assert metrics["top_k"] == 2 and metrics["top_k_accuracy"] == 1.0

    roc, precision_recall = curves(labels, probabilities)
    assert list(roc.columns) == ["fpr", "tpr"] and list(precision_recall.columns) == ["recall", "precision"]
    assert (roc["fpr"].iloc[0], roc["tpr"].iloc[0]) == (0.0, 0.0)
    assert (roc["fpr"].iloc[-1], roc["tpr"].iloc[-1]) == (1.0, 1.0)
    # The area under the written ROC points is the reported AUC.
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(0.75)


def test_binary_test_set_with_one_class_has_no_auc():
    probabilities = np.array([[0.8, 0.2], [0.3, 0.7]])
    metrics = classification_metrics(np.array([0, 0]), probabilities, ["no", "yes"])
    assert metrics["accuracy"] == 0.5
    assert "roc_auc" not in metrics


def test_multiclass_curves_are_micro_averaged_and_thinned_to_a_committable_size():
    roc, precision_recall = curves(LABELS, PROBABILITIES)
    # Micro-averaging: every (image, class) pair is one yes/no decision, 7 x 3 = 21 of them.
    from sklearn.metrics import roc_auc_score
    truth = (LABELS[:, None] == np.arange(3)).ravel()
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(roc_auc_score(truth, PROBABILITIES.ravel()))
    assert precision_recall["recall"].iloc[0] == 1.0 and precision_recall["recall"].iloc[-1] == 0.0

    import pandas as pd
    points = pd.DataFrame({"x": np.arange(5000), "y": np.arange(5000)})
    kept = thinned(points, at_most=100)
    assert len(kept) == 100 and kept["x"].iloc[0] == 0 and kept["x"].iloc[-1] == 4999
    assert thinned(points.iloc[:50], at_most=100).equals(points.iloc[:50])
