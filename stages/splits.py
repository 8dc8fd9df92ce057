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
    from sklearn.model_selection import train_test_split  # here: scikit-learn takes seconds to import

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
    try:
        kept, held_out = train_test_split(
            indices, test_size=size, stratify=subset_labels, random_state=seed
        )
    except ValueError as error:  # a case the checks above missed: still the user's data
        raise DataError(f"{key}={size}: cannot split {total} images stratified ({error})") from None
    return kept, held_out
