"""metrics: the NumPy classification metrics equal scikit-learn's, called as evaluate called them.

Every comparison is exact (the same floating-point operations in the same order), NaN equal
to NaN, on 200 random test sets: two-class and multi-class, probabilities 0 and 1,
tied scores, classes missing from the labels or the predictions, a single class.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as sk
from sklearn.exceptions import UndefinedMetricWarning

from stages import metrics
from stages.evaluate import classification_metrics, curves

CASES = 200
# evaluate's own functions, checked on the first cases (their parts are checked on all).
EVALUATE_CASES = 60


def random_case(rng: np.random.Generator, case: int):
    """Labels, probabilities (N, classes) and predictions of 1-40 images. Every third case has
    two classes; labels come from a random subset of the classes (often one). Probabilities are
    small integer weights normalized (ties, zeros and ones), every fourth case a Dirichlet draw
    (no ties); every other case predicts at random instead of the most probable class."""
    classes = 2 if case % 3 == 0 else int(rng.integers(3, 7))
    images = int(rng.integers(1, 41))
    present = rng.choice(classes, size=int(rng.integers(1, classes + 1)), replace=False)
    labels = rng.choice(present, size=images)
    if case % 4 == 0:
        probabilities = rng.dirichlet(np.ones(classes), size=images)
    else:
        weights = rng.integers(0, 4, size=(images, classes)).astype(np.float64)
        weights[weights.sum(axis=1) == 0] = 1.0
        probabilities = weights / weights.sum(axis=1, keepdims=True)
    predicted = rng.integers(0, classes, images) if case % 2 else probabilities.argmax(axis=1)
    return labels, probabilities, predicted


def random_cases():
    rng = np.random.default_rng(15)
    return [random_case(rng, case) for case in range(CASES)]


def same(ours, theirs) -> None:
    """Equal value for value and of the same shape (NaN equals NaN)."""
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs), strict=False)
    assert np.shape(ours) == np.shape(theirs)


@pytest.fixture(autouse=True)
def quiet():
    """scikit-learn warns about undefined metrics (one-class test sets); the values are compared."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def test_the_random_cases_cover_ties_missing_classes_and_certain_probabilities():
    cases = random_cases()
    assert sum(len(np.unique(labels)) == 1 for labels, _, _ in cases) > 20
    assert sum(len(np.unique(predicted)) < p.shape[1] for _, p, predicted in cases) > 30
    assert sum(((p == 0) | (p == 1)).any() for _, p, _ in cases) > 80
    assert sum(len(np.unique(p)) < p.size for _, p, _ in cases) > 100


def test_accuracy_log_loss_and_confusion_matrix():
    for labels, probabilities, predicted in random_cases():
        class_ids = list(range(probabilities.shape[1]))
        assert metrics.accuracy(labels, predicted) == sk.accuracy_score(labels, predicted)
        assert metrics.log_loss(labels, probabilities) == sk.log_loss(labels, probabilities, labels=class_ids)
        same(metrics.confusion_matrix(labels, predicted, len(class_ids)),
             sk.confusion_matrix(labels, predicted, labels=class_ids))


def test_log_loss_clips_certain_mistakes_at_the_dtypes_epsilon():
    for dtype in (np.float64, np.float32):
        probabilities = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=dtype)
        labels = np.array([1, 1, 0])
        loss = metrics.log_loss(labels, probabilities)
        assert loss == sk.log_loss(labels, probabilities, labels=[0, 1])
        assert loss == pytest.approx((-np.log(np.finfo(dtype).eps) + np.log(2)) / 3, rel=1e-6)


def test_top_k_accuracy_ranks_ties_as_scikit_learn_does():
    for labels, probabilities, _ in random_cases():
        classes = probabilities.shape[1]
        scores = probabilities[:, 1] if classes == 2 else probabilities  # as evaluate passed them
        for k in range(1, classes):
            expected = sk.top_k_accuracy_score(labels, scores, k=k, labels=list(range(classes)))
            assert metrics.top_k_accuracy(labels, probabilities, k) == expected, (labels, probabilities, k)
        assert metrics.top_k_accuracy(labels, probabilities, classes) == 1.0


def test_top_k_accuracy_on_exact_ties():
    probabilities = np.array([[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    assert metrics.top_k_accuracy(np.array([3, 0]), probabilities, 1) == 0.5  # the higher index wins a tie
    # two classes: class 1 when P(1) > 0.5, so the tie goes to class 0 (the first image is right)
    assert metrics.top_k_accuracy(np.array([0, 0]), np.array([[0.5, 0.5], [0.4, 0.6]]), 1) == 0.5


def test_precision_recall_f1_support_per_class_and_averaged():
    for labels, probabilities, predicted in random_cases():
        class_ids = list(range(probabilities.shape[1]))
        precision, recall, f1, support = metrics.precision_recall_f1(labels, predicted, len(class_ids))
        expected = sk.precision_recall_fscore_support(labels, predicted, labels=class_ids, zero_division=0)
        for ours, theirs in zip((precision, recall, f1, support), expected):
            same(ours, theirs)
        for average in ("macro", "weighted"):
            expected = sk.precision_recall_fscore_support(labels, predicted, labels=class_ids, average=average,
                                                          zero_division=0)
            assert [metrics.averaged(scores, support, average) for scores in (precision, recall, f1)] == list(
                expected[:3])


def binary_problems():
    """(truth, scores) as evaluate scores its curves: the positive class's probability in a
    two-class case, every image and class as one yes/no decision otherwise."""
    for labels, probabilities, _ in random_cases():
        if probabilities.shape[1] == 2:
            yield labels == 1, probabilities[:, 1]
        else:
            yield (labels[:, np.newaxis] == np.arange(probabilities.shape[1])).ravel(), probabilities.ravel()


def test_roc_and_precision_recall_curves_with_their_thresholds():
    for truth, scores in binary_problems():
        for ours, theirs in zip(metrics.roc_curve(truth, scores), sk.roc_curve(truth, scores)):
            same(ours, theirs)
        for drop in (False, True):
            for ours, theirs in zip(metrics.precision_recall_curve(truth, scores, drop_intermediate=drop),
                                    sk.precision_recall_curve(truth, scores, drop_intermediate=drop)):
                same(ours, theirs)


def test_roc_auc_and_average_precision_including_one_class_test_sets():
    for truth, scores in binary_problems():
        labels = truth.astype(int)  # evaluate passed class ids
        same(metrics.roc_auc(truth, scores),
             sk.roc_auc_score(labels, scores) if len(np.unique(labels)) == 2 else np.nan)
        same(metrics.average_precision(truth, scores), sk.average_precision_score(labels, scores))


def test_evaluate_gives_the_metrics_and_curves_it_gave_with_scikit_learn():
    """classification_metrics and curves as evaluate computed them with scikit-learn (two-class
    cases included: ROC AUC and average precision)."""
    for case, (labels, probabilities, _) in enumerate(random_cases()[:EVALUATE_CASES]):
        classes, top_k = probabilities.shape[1], 1 + case % 2
        class_names, class_ids = [f"c{i}" for i in range(classes)], list(range(classes))
        ours = classification_metrics(labels, probabilities, class_names, top_k=top_k)
        predicted, scores = probabilities.argmax(axis=1), probabilities[:, 1] if classes == 2 else probabilities
        expected = {
            "accuracy": sk.accuracy_score(labels, predicted),
            "loss": sk.log_loss(labels, probabilities, labels=class_ids),
            "top_k_accuracy": (sk.top_k_accuracy_score(labels, scores, k=top_k, labels=class_ids)
                               if top_k < classes else 1.0),
        }
        for average in ("macro", "weighted"):
            scores_averaged = sk.precision_recall_fscore_support(labels, predicted, labels=class_ids,
                                                                 average=average, zero_division=0)
            expected.update(zip((f"precision_{average}", f"recall_{average}", f"f1_{average}"), scores_averaged))
        if classes == 2 and len(np.unique(labels)) == 2:
            expected.update(roc_auc=sk.roc_auc_score(labels, scores),
                            average_precision=sk.average_precision_score(labels, scores))
        assert ours == {**expected, "top_k": min(top_k, classes), "test_images": len(labels)}

        roc, precision_recall = curves(labels, probabilities)
        truth, flat = (labels == 1, scores) if classes == 2 else (
            (labels[:, np.newaxis] == np.arange(classes)).ravel(), probabilities.ravel())
        fpr, tpr, _ = sk.roc_curve(truth, flat)
        precision, recall, _ = sk.precision_recall_curve(truth, flat, drop_intermediate=True)
        same(roc.to_numpy(), np.column_stack([fpr, tpr]))
        same(precision_recall.to_numpy(), np.column_stack([recall, precision]))
