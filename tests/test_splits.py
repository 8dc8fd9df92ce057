"""splits: the NumPy stratified hold-out gives scikit-learn's train_test_split indices exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.model_selection import train_test_split
from sklearn.utils.extmath import _approximate_mode

from stages.errors import DataError
from stages.splits import apportion, stratified_holdout, stratified_shuffle_split


def random_case(rng: np.random.Generator, case: int) -> tuple[np.ndarray, int]:
    """Labels of 2-7 classes (every third case: equal counts, so the remainders tie; else
    skewed counts, 2 to 60 per class), and a seed."""
    classes = int(rng.integers(2, 8))
    counts = np.full(classes, rng.integers(2, 12)) if case % 3 == 0 else rng.integers(2, 61, classes)
    labels = rng.permutation(np.repeat(np.arange(classes), counts))
    return labels, int(rng.integers(0, 2**31 - 1))


def random_size(rng: np.random.Generator, case: int, total: int, classes: int) -> float | int | None:
    """A fraction (odd cases) or a count (even cases) that leaves every class on both sides."""
    size = float(rng.uniform(0.05, 0.6)) if case % 2 else int(rng.integers(classes, total - classes + 1))
    held = math.ceil(size * total) if isinstance(size, float) else size
    return size if classes <= held <= total - classes else None


def test_holdout_matches_train_test_split_on_subsets_of_indices():
    rng = np.random.default_rng(2024)
    checked = 0
    for case in range(300):
        labels, seed = random_case(rng, case)
        classes = int(labels.max()) + 1
        # a permuted subset of the rows, as `limit` and the test hold-out leave them
        indices = rng.permutation(len(labels))[: int(len(labels) * rng.uniform(0.6, 1.0))]
        if np.bincount(labels[indices], minlength=classes).min() < 2:
            continue
        size = random_size(rng, case, len(indices), classes)
        if size is None:
            continue
        kept, held = stratified_holdout(indices, labels, size, seed, "k", [str(c) for c in range(classes)])
        expected_kept, expected_held = train_test_split(
            indices, test_size=size, stratify=labels[indices], random_state=seed)
        np.testing.assert_array_equal(kept, expected_kept)
        np.testing.assert_array_equal(held, expected_held)
        checked += 1
    assert checked >= 200


@pytest.mark.parametrize("values", [[3, 7, 42], [-5, 0, 9, 1000], [10, 11]])
def test_split_matches_on_labels_that_are_not_0_to_k(values):
    rng = np.random.default_rng(len(values))
    checked = 0
    for case in range(40):
        labels, seed = random_case(rng, case)
        labels = np.asarray(values)[labels % len(values)]
        held = len(labels) // 3
        if min(np.unique(labels, return_counts=True)[1]) < 2 or held < len(values):
            continue
        positions = np.arange(len(labels))
        expected_train, expected_test = train_test_split(
            positions, test_size=held, stratify=labels, random_state=seed)
        train, test = stratified_shuffle_split(labels, held, seed)
        np.testing.assert_array_equal(train, expected_train)
        np.testing.assert_array_equal(test, expected_test)
        checked += 1
    assert checked >= 30


@pytest.mark.parametrize("counts, draws", [
    ([2, 2, 2, 1], 2), ([4, 2], 3), ([5, 5, 5, 5, 5], 7), ([1, 1, 1, 1, 1, 1], 4), ([9, 3, 3, 3], 5),
])
def test_apportion_breaks_ties_as_scikit_learn_does(counts, draws):
    for seed in range(25):
        shares = apportion(np.array(counts), draws, np.random.RandomState(seed))
        np.testing.assert_array_equal(shares, _approximate_mode(np.array(counts), draws,
                                                                np.random.RandomState(seed)))
        assert shares.sum() == draws


def test_seeds_give_other_splits_and_every_class_both_sides():
    labels = np.repeat(np.arange(4), [30, 12, 7, 3])
    names = ["a", "b", "c", "d"]
    first = stratified_holdout(np.arange(52), labels, 0.25, 0, "k", names)
    other = stratified_holdout(np.arange(52), labels, 0.25, 1, "k", names)
    assert not np.array_equal(first[1], other[1])
    kept, held = first
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(52))
    assert len(held) == 13 and np.bincount(labels[held], minlength=4).min() >= 1
    assert np.bincount(labels[kept], minlength=4).min() >= 1


@pytest.mark.parametrize("size, message", [
    (1, "k=1: holds out 1 of 12 images, but a stratified split of 3 classes needs 3 to 9 images"),
    (0.8, "k=0.8: holds out 10 of 12 images"),
])
def test_sizes_that_cannot_be_stratified_name_the_key(size, message):
    labels = np.repeat(np.arange(3), 4)
    with pytest.raises(DataError, match=message):
        stratified_holdout(np.arange(12), labels, size, 0, "k", ["a", "b", "c"])


def test_a_class_with_one_image_is_named():
    labels = np.array([0, 0, 0, 1, 1, 1, 2])
    with pytest.raises(DataError, match="k: class 'c' has 1 image"):
        stratified_holdout(np.arange(7), labels, 3, 0, "k", ["a", "b", "c"])
