"""Seeded, stratified choices of images by index: per-class limits and held-out splits.

Everything here works on label arrays and returns index arrays, so no image is copied
until `prepare` writes the final arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from stages.errors import DataError


def limit_per_class(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices of at most `limit` images per class, drawn with `seed`, in their original order.

    Classes with `limit` images or fewer keep all of them, so limiting twice changes nothing.
    """
    labels = np.asarray(labels)
    if limit is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for class_id in np.unique(labels):
        members = np.flatnonzero(labels == class_id)
        if len(members) > limit:
            members = rng.choice(members, size=limit, replace=False)
        chosen.append(members)
    return np.sort(np.concatenate(chosen)) if chosen else np.arange(0)


def stratified_holdout(
    indices: np.ndarray, labels: np.ndarray, size: float | int, seed: int,
    key: str, class_names: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Split `indices` (into `labels`) into (kept, held out), the hold-out being `size`.

    `size` is a fraction or a count of images; every class keeps its share on both sides.
    A split that cannot be stratified is the user's to fix: say which key and why.
    """
    indices = np.asarray(indices)
    subset_labels = np.asarray(labels)[indices]
    counts = np.bincount(subset_labels, minlength=len(class_names))
    if counts.size and counts.min() < 2:
        scarce = class_names[int(counts.argmin())]
        raise DataError(
            f"{key}: class {scarce!r} has {counts.min()} image(s) here, too few to hold out a "
            "stratified split (each class needs at least 2); add images or raise prepare.limit"
        )
    total, classes = len(indices), len(class_names)
    held = math.ceil(size * total) if isinstance(size, float) else size
    if not classes <= held <= total - classes:
        raise DataError(
            f"{key}={size}: holds out {held} of {total} images, but a stratified split of {classes} "
            f"classes needs {classes} to {total - classes} images on that side (at least one image "
            "of each class on both sides); choose a value in that range"
        )
    kept, held_out = stratified_shuffle_split(subset_labels, held, seed)
    return indices[kept], indices[held_out]


# The two functions below reproduce scikit-learn's train_test_split(..., test_size=n_test,
# stratify=labels, random_state=seed) draw for draw (StratifiedShuffleSplit._iter_indices and
# utils.extmath._approximate_mode of scikit-learn 1.9.1, BSD-3-Clause, (c) the scikit-learn
# developers), so splits stay what they were without importing scikit-learn (over a second).
def stratified_shuffle_split(labels: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, test) in `labels`: `n_test` held out, each class in proportion, shuffled."""
    _, class_ids, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    members = np.split(np.argsort(class_ids, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    train_counts = apportion(class_counts, len(labels) - n_test, rng)
    test_counts = apportion(class_counts - train_counts, n_test, rng)
    train, test = [], []
    for class_members, n_train_i, n_test_i in zip(members, train_counts, test_counts):
        shuffled = class_members[rng.permutation(len(class_members))]
        train.append(shuffled[:n_train_i])
        test.append(shuffled[n_train_i:n_train_i + n_test_i])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def apportion(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """`draws` shared out in proportion to `counts`: each class gets its share rounded down, and
    the draws left go to the largest remainders, ties among them drawn at random."""
    exact = counts / counts.sum() * draws
    shares = np.floor(exact)
    left = int(draws - shares.sum())
    remainders = exact - shares
    for value in np.unique(remainders)[::-1]:
        if left <= 0:
            break
        tied = np.flatnonzero(remainders == value)
        chosen = rng.choice(tied, size=min(len(tied), left), replace=False)
        shares[chosen] += 1
        left -= len(chosen)
    return shares.astype(int)
