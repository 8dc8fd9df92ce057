"""Matplotlib figures, written as deterministic PNGs (no timestamps or version stamps)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no screen on servers or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from stages.io import atomic_path  # noqa: E402


def save_figure(figure, path: str | os.PathLike, dpi: int = 100) -> None:
    # Dropping the "Software" stamp keeps the bytes identical across runs and versions.
    with atomic_path(path) as temp:
        figure.savefig(temp, dpi=dpi, format="png", metadata={"Software": None}, bbox_inches="tight")
    plt.close(figure)


def _show_image(axis, image: np.ndarray) -> None:
    if image.shape[-1] == 1:
        axis.imshow(image[..., 0], cmap="gray_r" if image.mean() < 0.5 else "gray")
    else:
        axis.imshow(np.clip(image, 0, 1))
    axis.set_xticks([])
    axis.set_yticks([])


def sample_grid(
    images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
    path: str | os.PathLike, per_class: int = 5, dpi: int = 100,
) -> None:
    """The first `per_class` images of each class, one row per class, labelled by name."""
    rows = len(class_names)
    figure, axes = plt.subplots(rows, per_class, figsize=(per_class * 1.1, rows * 1.1), squeeze=False)
    for class_id, name in enumerate(class_names):
        indices = np.flatnonzero(np.asarray(labels) == class_id)[:per_class]
        for column in range(per_class):
            axis = axes[class_id, column]
            axis.axis("off")
            if column < len(indices):
                _show_image(axis, np.asarray(images[indices[column]], dtype=np.float32))
                axis.axis("on")
        axes[class_id, 0].set_ylabel(name, rotation=0, ha="right", va="center")
    figure.suptitle("Sample training images by class")
    save_figure(figure, path, dpi)


def training_curves(history: dict[str, Sequence[float]], path: str | os.PathLike, dpi: int = 100) -> None:
    """Accuracy and loss per epoch, training beside validation (the course's two plots)."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("accuracy", "loss")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = history.get(prefix + metric)
            if values:
                axis.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
        axis.set_title(metric.capitalize())
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend()
    save_figure(figure, path, dpi)


def confusion_matrix_figure(
    matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, dpi: int = 100
) -> None:
    """Counts (left) and row-normalized recall per true class (right), numbers in the cells."""
    matrix = np.asarray(matrix)
    totals = matrix.sum(axis=1, keepdims=True)
    normalized = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    size = max(4.0, 0.55 * len(class_names) + 2)
    figure, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for axis, values, title, fmt in (
        (axes[0], matrix, "Counts", "d"),
        (axes[1], normalized, "Row-normalized (recall)", ".2f"),
    ):
        axis.imshow(values, cmap="Blues")
        ticks = range(len(class_names))
        axis.set_xticks(ticks, class_names, rotation=45, ha="right")
        axis.set_yticks(ticks, class_names)
        axis.set_xlabel("predicted")
        axis.set_ylabel("actual")
        axis.set_title(title)
        threshold = values.max() / 2 if values.size else 0
        if len(class_names) <= 20:
            for (row, column), value in np.ndenumerate(values):
                axis.text(column, row, format(value, fmt), ha="center", va="center", fontsize=7,
                          color="white" if value > threshold else "black")
    save_figure(figure, path, dpi)



def misclassified_grid(
    images: np.ndarray, actual: Sequence[str], predicted: Sequence[str], confidences: Sequence[float],
    path: str | os.PathLike, dpi: int = 100, columns: int = 5,
) -> None:
    """Test images the model got wrong, in the given order, each titled true / predicted (confidence)."""
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.9, rows * 2.1), squeeze=False,
                                layout="constrained")
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(images):
            _show_image(axis, np.asarray(images[index], dtype=np.float32))
            axis.set_title(f"true: {actual[index]}\npredicted: {predicted[index]}\n"
                           f"({confidences[index]:.0%})", fontsize=8)
    figure.suptitle("Misclassified test images, most confident mistakes first")
    save_figure(figure, path, dpi)


def feature_maps_figure(
    image: np.ndarray, class_name: str, layer_maps: Sequence[tuple[str, np.ndarray]],
    path: str | os.PathLike, max_channels: int = 16, dpi: int = 100, columns: int = 8,
) -> None:
    """One test image and, below it, the activation map of each channel of each layer."""
    blocks = [-(-min(maps.shape[-1], max_channels) // columns) for _, maps in layer_maps]
    figure, axes = plt.subplots(1 + sum(blocks), columns, figsize=(columns * 1.2, (1 + sum(blocks)) * 1.3),
                                squeeze=False, layout="constrained")
    for axis in axes.flat:
        axis.axis("off")
    _show_image(axes[0, 0], np.asarray(image, dtype=np.float32))
    axes[0, 0].axis("on")
    axes[0, 0].set_title(f"input ({class_name})", fontsize=8)
    row = 1
    for (name, maps), block in zip(layer_maps, blocks):
        for channel in range(min(maps.shape[-1], max_channels)):
            axis = axes[row + channel // columns, channel % columns]
            axis.imshow(maps[..., channel], cmap="viridis")
            axis.set_title(f"channel {channel}", fontsize=6)
        axes[row, 0].text(-0.1, 0.5, f"{name}\n{maps.shape[0]}x{maps.shape[1]}x{maps.shape[2]}",
                          transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=8)
        row += block
    figure.suptitle("Feature maps: activations of the first convolutional layers")
    save_figure(figure, path, dpi)


def binary_curves_figure(roc, precision_recall, metrics: dict, positive_class: str,
                         path: str | os.PathLike, dpi: int = 100) -> None:
    """ROC curve (left) and precision-recall curve (right) for the positive class."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.5), layout="constrained")
    axes[0].plot(roc["fpr"], roc["tpr"], label=f"AUC {metrics['roc_auc']:.4f}")
    axes[0].plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes[0].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
    axes[1].step(precision_recall["recall"], precision_recall["precision"], where="post",
                 label=f"average precision {metrics['average_precision']:.4f}")
    axes[1].set(xlabel="recall", ylabel="precision", title="Precision-recall curve")
    for axis in axes:
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right")
    figure.suptitle(f"Positive class: {positive_class}")
    save_figure(figure, path, dpi)


def experiments_overlay(
    histories: dict[str, dict[str, Sequence[float]]], path: str | os.PathLike, dpi: int = 100
) -> None:
    """Validation accuracy and loss per epoch, one curve per experiment."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for axis, metric in zip(axes, ("val_accuracy", "val_loss")):
        for name, history in histories.items():
            values = history.get(metric)
            if values:
                axis.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
        axis.set_title(metric.replace("val_", "validation ").capitalize() + " per epoch")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    save_figure(figure, path, dpi)


def augmentation_preview(
    originals: np.ndarray, variants: np.ndarray, row_labels: Sequence[str],
    value_range: dict[str, Sequence[float]], path: str | os.PathLike, dpi: int = 100,
) -> None:
    """Each original (first column) beside its augmented variants, one row per image.

    All panels share one intensity scale (the data's value range), so brightness and
    contrast changes stay visible instead of being stretched away per image.
    """
    low = np.asarray(value_range["low"], dtype=np.float32)
    high = np.asarray(value_range["high"], dtype=np.float32)
    originals, variants = np.asarray(originals), np.asarray(variants)
    rows, columns = len(originals), 1 + variants.shape[1]
    # The same colour map for a whole figure, chosen like sample_grid's (dark background -> ink on paper).
    unit_originals = (originals - low) / (high - low)
    cmap = "gray_r" if unit_originals.mean() < 0.5 else "gray"
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.1 + 0.4), squeeze=False)
    for row in range(rows):
        for column, image in enumerate([originals[row], *variants[row]]):
            axis = axes[row, column]
            unit = np.clip((image - low) / (high - low), 0.0, 1.0)
            if unit.shape[-1] == 1:
                axis.imshow(unit[..., 0], cmap=cmap, vmin=0.0, vmax=1.0)
            else:
                axis.imshow(unit)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row, 0].set_ylabel(row_labels[row], rotation=0, ha="right", va="center")
    axes[0, 0].set_title("original", fontsize=8)
    for column in range(1, columns):
        axes[0, column].set_title(f"augmented {column}", fontsize=8)
    figure.suptitle("Augmentation preview")
    save_figure(figure, path, dpi)
