"""Dataset sources: each returns the raw images and labels of one dataset.

A source returns images as uint8-like arrays in NHWC layout together with the value that
means "full intensity" (`max_value`), so `prepare` can scale every source the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.errors import ConfigError


@dataclass(frozen=True)
class RawDataset:
    train_images: np.ndarray          # (N, H, W, C), integer or float pixel values
    train_labels: np.ndarray          # (N,), int class ids
    test_images: np.ndarray | None    # the source's own test split, if it has one
    test_labels: np.ndarray | None
    class_names: tuple[str, ...]
    max_value: float                  # pixel value of full intensity (16 for digits, 255 for 8-bit)
    description: str


def load_digits() -> RawDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 17 grey levels)."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = bunch.images.astype(np.uint8)[..., np.newaxis]
    return RawDataset(
        train_images=images,
        train_labels=bunch.target.astype(np.int64),
        test_images=None,
        test_labels=None,
        class_names=tuple(str(name) for name in bunch.target_names),
        max_value=16.0,
        description="scikit-learn digits (8x8 grayscale, bundled)",
    )


SOURCES = {"digits": load_digits}


def load_dataset(name: str) -> RawDataset:
    try:
        loader = SOURCES[name]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r}; expected one of {', '.join(SOURCES)}"
        ) from None
    return loader()
