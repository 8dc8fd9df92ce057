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


def training_curves(history: dict[str, Sequence[float]], path: str | os.PathLike, dpi: int = 100,
                    best_epoch: int | None = None) -> None:
    """Accuracy and loss per epoch, training beside validation (the course's two plots), with
    the best epoch (the one saved as the model) marked."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for axis, metric in zip(axes, ("accuracy", "loss")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = history.get(prefix + metric)
            if values:
                axis.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
        if best_epoch:
            axis.axvline(best_epoch, color="grey", linestyle="--", linewidth=1,
                         label=f"best epoch ({best_epoch}): the saved model")
        axis.set_title(metric.capitalize())
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=9)
    save_figure(figure, path, dpi)


# Confusion matrix geometry: cells from 1.5 in (up to 5 classes) down to 0.12 in (from 67 classes),
# so the matrix stays within 8 to 12 in (GitHub scales wider images down to its page width).
CELL_LIMITS, MATRIX_INCHES = (0.12, 1.5), 8.0
# Counts are written in the cells only down to this font size (points).
MIN_CELL_FONT = 5.0


def cell_font_size(cell_inches: float, largest: int) -> float:
    """The largest font (points) whose `largest` count fits a cell: digits are about 0.6 em wide."""
    cell_points = cell_inches * 72
    return min(12.0, 0.55 * cell_points, 0.8 * cell_points / (0.6 * len(str(largest))))


def draw_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str]):
    """One matrix: counts in the cells (zeros blank), colour = share of the actual class (the
    row-normalized recall), so that rare and frequent classes read on one scale. Fonts follow
    the cell size; counts are left out when they would be too small to read; x labels turn
    vertical when horizontal ones would overlap. Returns the figure."""
    matrix = np.asarray(matrix)
    classes = len(class_names)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    cell = float(np.clip(MATRIX_INCHES / max(classes, 1), *CELL_LIMITS))
    label_font = min(10.0, 0.75 * cell * 72)
    longest = max(len(name) for name in class_names)
    margin = min(3.5, 0.6 + longest * label_font / 72 * 0.6)  # room for the labels, in inches
    side = cell * classes
    figure = plt.figure(figsize=(side + margin + 1.6, side + margin + 0.8))
    axis = figure.add_axes((margin / (side + margin + 1.6), margin / (side + margin + 0.8),
                            side / (side + margin + 1.6), side / (side + margin + 0.8)))
    image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ticks = range(classes)
    axis.set_xticks(ticks, class_names, fontsize=label_font)
    axis.set_yticks(ticks, class_names, fontsize=label_font)
    axis.set_xlabel("predicted", fontsize=max(label_font, 9))
    axis.set_ylabel("actual", fontsize=max(label_font, 9))
    font = cell_font_size(cell, int(matrix.max()) if matrix.size else 0)
    if font >= MIN_CELL_FONT:
        for (row, column), count in np.ndenumerate(matrix):
            if count:
                axis.text(column, row, str(count), ha="center", va="center", fontsize=font,
                          color="white" if shares[row, column] > 0.5 else "black")
    colour_bar = figure.colorbar(image, ax=axis, fraction=0.04, pad=0.02)
    colour_bar.set_label("share of the actual class", fontsize=9)
    title = "Confusion matrix (test set): counts" if font >= MIN_CELL_FONT else \
        f"Confusion matrix (test set, {classes} classes: counts left out)"
    axis.set_title(title, fontsize=11)
    if _labels_overlap(figure, axis.get_xticklabels()):
        axis.set_xticks(ticks, class_names, fontsize=label_font, rotation=90)
    return figure


def _labels_overlap(figure, labels) -> bool:
    renderer = figure.canvas.get_renderer()
    boxes = sorted((label.get_window_extent(renderer) for label in labels if label.get_text()),
                   key=lambda box: box.x0)
    return any(left.x1 > right.x0 for left, right in zip(boxes, boxes[1:]))


def confusion_matrix_figure(
    matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, dpi: int = 100
) -> None:
    save_figure(draw_confusion_matrix(matrix, class_names), path, dpi)


def _frame(axis, colour: str = "black") -> None:
    """Ticks off, a thin frame on: images on a white page stay apart."""
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_visible(True)
        spine.set_color(colour)
        spine.set_linewidth(1.5)


def misclassified_grid(
    images: np.ndarray, actual: Sequence[str], predicted: Sequence[str], confidences: Sequence[float],
    path: str | os.PathLike, dpi: int = 100, columns: int = 5,
) -> None:
    """Test images the model got wrong, in the given order, each titled true / predicted (confidence)."""
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 2.0, rows * 2.4), squeeze=False,
                                layout="constrained")
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(images):
            axis.axis("on")
            _show_image(axis, np.asarray(images[index], dtype=np.float32))
            _frame(axis, "tab:red")
            axis.set_title(f"true: {actual[index]}\npredicted: {predicted[index]}\n"
                           f"({confidences[index]:.0%})", fontsize=10)
    figure.suptitle("Misclassified test images, most confident mistakes first", fontsize=13)
    save_figure(figure, path, dpi)


def feature_maps_figure(
    image: np.ndarray, class_name: str, layer_maps: Sequence[tuple[str, np.ndarray]],
    path: str | os.PathLike, max_channels: int = 16, dpi: int = 100, columns: int = 8,
) -> None:
    save_figure(draw_feature_maps(image, class_name, layer_maps, max_channels, columns), path, dpi)


def draw_feature_maps(image: np.ndarray, class_name: str, layer_maps: Sequence[tuple[str, np.ndarray]],
                      max_channels: int = 16, columns: int = 8):
    """One test image and, below it, the first `max_channels` activation maps of each layer, on
    one colour scale per layer (its colour bar at the row's end), labelled with the channels
    shown out of the layer's total."""
    blocks = [-(-min(maps.shape[-1], max_channels) // columns) for _, maps in layer_maps]
    figure, axes = plt.subplots(1 + sum(blocks), columns, figsize=(columns * 1.3, (1 + sum(blocks)) * 1.4),
                                squeeze=False, layout="constrained")
    for axis in axes.flat:
        axis.axis("off")
    _show_image(axes[0, 0], np.asarray(image, dtype=np.float32))
    axes[0, 0].axis("on")
    axes[0, 0].set_title(f"input ({class_name})", fontsize=9)
    row = 1
    for (name, maps), block in zip(layer_maps, blocks):
        shown = min(maps.shape[-1], max_channels)
        low, high = float(maps[..., :shown].min()), float(maps[..., :shown].max())
        for channel in range(shown):
            axis = axes[row + channel // columns, channel % columns]
            axis.axis("on")
            drawn = axis.imshow(maps[..., channel], cmap="viridis", vmin=low, vmax=high)
            _frame(axis, "grey")
            axis.set_title(f"channel {channel + 1}", fontsize=8)
        figure.colorbar(drawn, ax=axes[row:row + block, :], fraction=0.02, pad=0.01, label="activation")
        axes[row, 0].set_ylabel(f"{name}\n{maps.shape[0]}x{maps.shape[1]}\nchannels 1-{shown}\nof {maps.shape[-1]}",
                                rotation=0, ha="right", va="center", fontsize=9)
        row += block
    figure.suptitle("Feature maps: activations of the first convolutional layers, one colour scale per layer",
                    fontsize=12)
    return figure


def reliability_diagram(table, ece: float, binning: str, path: str | os.PathLike, dpi: int = 100) -> None:
    """Accuracy against mean confidence per confidence bin (left; the diagonal is perfect
    calibration) and the test images per bin (right)."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    width = (table["bin_high"] - table["bin_low"]).to_numpy()
    centres = ((table["bin_low"] + table["bin_high"]) / 2).to_numpy()
    axes[0].bar(centres, table["accuracy"], width=width, edgecolor="black", color="tab:blue", label="accuracy")
    gap = (table["confidence"] - table["accuracy"]).to_numpy()
    axes[0].bar(centres, np.abs(gap), bottom=np.minimum(table["confidence"], table["accuracy"]), width=width,
                fill=False, hatch="//", edgecolor="tab:red", label="gap to the mean confidence")
    axes[0].plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    axes[0].set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (probability of the predicted class)",
                ylabel="accuracy", title=f"Reliability diagram: ECE {ece:.4f}")
    axes[0].legend(loc="upper left", fontsize=9)
    axes[1].bar(centres, table["images"], width=width, edgecolor="black", color="tab:grey")
    axes[1].set(xlim=(0, 1), xlabel="confidence", ylabel="test images", title="Test images per bin")
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.suptitle(f"Calibration ({binning})", fontsize=11)
    save_figure(figure, path, dpi)


def gradcam_grid(images: np.ndarray, heat_maps: np.ndarray, titles: Sequence[str], title: str,
                 path: str | os.PathLike, dpi: int = 100, columns: int = 5, frame: str = "black") -> None:
    """Each image in grey with its Grad-CAM heat map over it (one 0-1 scale, colour bar at the side)."""
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 2.0, rows * 2.3 + 0.4), squeeze=False,
                                layout="constrained")
    colours = matplotlib.colormaps["jet"]
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, heat, caption in zip(axes.flat, images, heat_maps, titles):
        axis.axis("on")
        grey = np.asarray(image, dtype=np.float32).mean(axis=-1)
        span = float(grey.max() - grey.min()) or 1.0
        unit = (grey - grey.min()) / span
        axis.imshow(unit, cmap="gray_r" if unit.mean() < 0.5 else "gray", vmin=0.0, vmax=1.0)
        # Opacity follows the heat: the image stays visible where the model did not look.
        overlay = colours(np.clip(heat, 0.0, 1.0))
        overlay[..., 3] = 0.15 + 0.6 * np.clip(heat, 0.0, 1.0)
        axis.imshow(overlay)
        _frame(axis, frame)
        axis.set_title(caption, fontsize=10)
    scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0.0, 1.0), colours)
    figure.colorbar(scale, ax=axes, fraction=0.02, pad=0.01, label="Grad-CAM (1 = strongest)")
    figure.suptitle(title, fontsize=13)
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
    mixed: dict | None = None,
) -> None:
    """Each original (first column) beside its augmented variants, one row per image; with
    `mixed` (MixUp / CutMix: `images` and their label `captions`), a last row of mixed images.

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
    mixed_rows = 1 if mixed else 0
    figure, axes = plt.subplots(rows + mixed_rows, columns,
                                figsize=(columns * 1.1, (rows + mixed_rows) * 1.1 + 0.4 + 0.3 * mixed_rows),
                                squeeze=False)

    def draw(axis, image):
        unit = np.clip((image - low) / (high - low), 0.0, 1.0)
        if unit.shape[-1] == 1:
            axis.imshow(unit[..., 0], cmap=cmap, vmin=0.0, vmax=1.0)
        else:
            axis.imshow(unit)
        axis.set_xticks([])
        axis.set_yticks([])

    for row in range(rows):
        for column, image in enumerate([originals[row], *variants[row]]):
            draw(axes[row, column], image)
        axes[row, 0].set_ylabel(row_labels[row], rotation=0, ha="right", va="center")
    if mixed:
        for column, axis in enumerate(axes[rows]):
            if column < len(mixed["images"]):
                draw(axis, mixed["images"][column])
                axis.set_xlabel(mixed["captions"][column].replace(" + ", "\n+ "), fontsize=6)
            else:
                axis.axis("off")
        axes[rows, 0].set_ylabel("mixed", rotation=0, ha="right", va="center")
    axes[0, 0].set_title("original", fontsize=8)
    for column in range(1, columns):
        axes[0, column].set_title(f"augmented {column}", fontsize=8)
    figure.suptitle("Augmentation preview")
    save_figure(figure, path, dpi)


def lr_find_curve(rates: np.ndarray, losses: np.ndarray, smoothed: np.ndarray, record: dict,
                  path: str | os.PathLike, dpi: int = 100) -> None:
    """The range test: loss against learning rate (log scale), the suggested rate marked."""
    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    axis.plot(rates, losses, color="0.75", linewidth=0.8, label="loss of each step")
    axis.plot(rates, smoothed, color="C0", linewidth=1.8, label="smoothed loss")
    suggested = record["suggested_learning_rate"]
    axis.axvline(suggested, color="C3", linestyle="--", label=f"suggested {suggested:.2g} ({record['rule']})")
    axis.axvline(record["steepest_descent_rate"], color="C2", linestyle=":",
                 label=f"steepest descent {record['steepest_descent_rate']:.2g}")
    axis.set_xscale("log")
    top = np.nanmax(smoothed[np.isfinite(smoothed)]) if np.isfinite(smoothed).any() else 1.0
    axis.set_ylim(max(0.0, np.nanmin(smoothed) * 0.9), min(top, 4 * np.nanmin(smoothed)) * 1.05)
    axis.set_xlabel("learning rate")
    axis.set_ylabel("training loss")
    axis.set_title("Learning-rate range test")
    axis.legend(fontsize=8)
    save_figure(figure, path, dpi)


def duplicate_pairs(first: np.ndarray, second: np.ndarray, titles: Sequence[tuple[str, str]], caption: Sequence[str],
                    path: str | os.PathLike, dpi: int = 100, columns: int = 4) -> None:
    """Duplicate pairs side by side (images scaled to [0, 1]), each image titled with its split
    and label, each pair captioned with its kind (exact, or near and the hash distance)."""
    rows = -(-len(first) // columns)
    figure, axes = plt.subplots(rows, 2 * columns, figsize=(columns * 2.6, rows * 1.9), squeeze=False,
                                layout="constrained")
    for axis in axes.flat:
        axis.axis("off")
    for index in range(len(first)):
        row, column = divmod(index, columns)
        for side, images in enumerate((first, second)):
            axis = axes[row, 2 * column + side]
            axis.axis("on")
            _show_image(axis, np.asarray(images[index], dtype=np.float32))
            _frame(axis, "tab:red" if caption[index].startswith("exact") else "tab:orange")
            axis.set_title(titles[index][side], fontsize=8)
        axes[row, 2 * column].set_xlabel(caption[index], fontsize=8, loc="left")
    figure.suptitle("Duplicate pairs (leakage across splits first)", fontsize=11)
    save_figure(figure, path, dpi)
