"""Matplotlib figures, written as deterministic PNGs (no timestamps or version stamps)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from stages.io import atomic_path


def new_figure(**options) -> Figure:
    """A figure drawn by Agg, matplotlib's PNG renderer (which also measures texts), made
    without pyplot: no GUI backend to choose, no global list of open figures to close, and
    0.1 s less to import."""
    figure = Figure(**options)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path: str | os.PathLike, dpi: int = 100) -> None:
    # Dropping the "Software" stamp keeps the bytes identical across runs and versions.
    with atomic_path(path) as temp:
        figure.savefig(temp, dpi=dpi, format="png", metadata={"Software": None}, bbox_inches="tight")


def image_style(image: np.ndarray) -> tuple[np.ndarray, dict]:
    """An image as it is drawn, and imshow's style for it: one channel in grey (dark ink on a
    light page whichever way the data is stored), colour clipped to [0, 1]."""
    image = np.asarray(image, dtype=np.float32)
    if image.shape[-1] == 1:
        return image[..., 0], {"cmap": "gray_r" if image.mean() < 0.5 else "gray"}
    return np.clip(image, 0, 1), {}


# --- image grids --------------------------------------------------------------------------------
# The grids of images (samples, mistakes, Grad-CAM, feature maps, augmentations, duplicates) are
# laid out by hand on one Axes whose units are inches from the page's top left. An Axes per image
# costs matplotlib about 13 ms to create and its constrained layout more to place: the evaluate
# stage's grids took 3 to 4 s of its 10, prepare's sample grid 1.4 s of its 2.3
# (docs/performance.md).
TEXT_LINE = 1.3 / 72  # the height of a line of text, in inches per point of font size
GRID_MARGIN = 0.1  # inches


def label_width(labels: Sequence[str], fontsize: float = 10) -> float:
    """Inches of room for the longest label (characters about 0.6 em wide), at most 3."""
    return min(3.0, 0.15 + max((len(label) for label in labels), default=1) * fontsize * 0.6 / 72)


class ImageGrid:
    """A figure of rows x columns equal cells: each an image box `cell` inches wide and high,
    with `above` lines of `font`-point text over it (titles) and `below` lines under it
    (captions); row labels to the left within `label_width` inches; `right` inches at the
    right for colour bars; the figure's title on top."""

    def __init__(self, rows: int, columns: int, cell: float, title: str, title_size: float = 12,
                 font: float = 10, above: int = 0, below: int = 0, label_width: float = 0.0,
                 right: float = 0.0, gap: float = 0.15):
        self.columns, self.cell, self.font = columns, cell, font
        self.column_width = cell + gap
        self.above, self.below = above * font * TEXT_LINE, below * font * TEXT_LINE
        self.row_height = self.above + cell + self.below + gap
        self.left = GRID_MARGIN + label_width
        self.top = GRID_MARGIN + (title_size * TEXT_LINE + 0.1 if title else 0.0)
        self.width = self.left + columns * self.column_width - gap + right + GRID_MARGIN
        self.height = self.top + rows * self.row_height - gap + GRID_MARGIN
        self.figure = new_figure(figsize=(self.width, self.height))
        self.board = self.figure.add_axes((0, 0, 1, 1))
        self.board.set_xlim(0, self.width)
        self.board.set_ylim(self.height, 0)  # y grows downwards, like the rows
        self.board.set_autoscale_on(False)
        self.board.axis("off")
        if title:
            self.board.text(self.width / 2, GRID_MARGIN, title, fontsize=title_size, ha="center", va="top")

    def box(self, row: int, column: int) -> tuple[float, float]:
        """The top-left corner of a cell's image box, in inches."""
        return self.left + column * self.column_width, self.top + row * self.row_height + self.above

    def show(self, row: int, column: int, image: np.ndarray, frame: str | None = None, **style):
        """Draw `image` (H x W, or H x W x channels) in a cell, scaled to fit its box without
        distortion and centred; `style` goes to imshow (cmap, vmin, vmax). Returns the image."""
        x, y = self.box(row, column)
        height, width = image.shape[:2]
        scale = self.cell / max(height, width)
        x, y = x + (self.cell - width * scale) / 2, y + (self.cell - height * scale) / 2
        drawn = self.board.imshow(image, extent=(x, x + width * scale, y + height * scale, y),
                                  aspect="auto", **style)
        if frame:  # black only keeps images apart (thin); a colour says something (a mistake, a duplicate)
            self.board.add_patch(Rectangle((x, y), width * scale, height * scale, fill=False,
                                           edgecolor=frame, linewidth=0.8 if frame == "black" else 1.5))
        return drawn

    def title(self, row: int, column: int, text: str, fontsize: float | None = None) -> None:
        x, y = self.box(row, column)
        self.board.text(x + self.cell / 2, y - 0.04, text, fontsize=fontsize or self.font, ha="center",
                        va="bottom", linespacing=1.1)

    def caption(self, row: int, column: int, text: str, fontsize: float | None = None, centred: bool = False) -> None:
        """Text under a cell's image box, from its left edge (or centred under it)."""
        x, y = self.box(row, column)
        self.board.text(x + self.cell / 2 if centred else x, y + self.cell + 0.04, text, fontsize=fontsize or self.font,
                        ha="center" if centred else "left", va="top", linespacing=1.1)

    def row_label(self, row: int, text: str, fontsize: float | None = None) -> None:
        x, y = self.box(row, 0)
        self.board.text(x - 0.1, y + self.cell / 2, text, fontsize=fontsize or self.font, ha="right",
                        va="center", linespacing=1.1)

    def colour_bar(self, mappable, first_row: int, last_row: int, label: str):
        """A colour bar at the right of rows first_row..last_row (their image boxes' span)."""
        _, top = self.box(first_row, 0)
        _, bottom = self.box(last_row, 0)
        bottom += self.cell
        x = self.left + self.columns * self.column_width
        axis = self.figure.add_axes((x / self.width, 1 - bottom / self.height, 0.15 / self.width,
                                     (bottom - top) / self.height), label="<colorbar>")
        return self.figure.colorbar(mappable, cax=axis, label=label)

    def save(self, path: str | os.PathLike, dpi: int) -> None:
        save_figure(self.figure, path, dpi)


def sample_grid(
    images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
    path: str | os.PathLike, per_class: int = 5, dpi: int = 100,
) -> None:
    """The first `per_class` images of each class, one row per class, labelled by name."""
    grid = ImageGrid(len(class_names), per_class, cell=0.85, title="Sample training images by class",
                     label_width=label_width(class_names))
    for class_id, name in enumerate(class_names):
        for column, index in enumerate(np.flatnonzero(np.asarray(labels) == class_id)[:per_class]):
            image, style = image_style(images[index])
            grid.show(class_id, column, image, frame="black", **style)
        grid.row_label(class_id, name)
    grid.save(path, dpi)


def training_curves(history: dict[str, Sequence[float]], path: str | os.PathLike, dpi: int = 100,
                    best_epoch: int | None = None) -> None:
    """Accuracy and loss per epoch, training beside validation (the course's two plots), with
    the best epoch (the one saved as the model) marked."""
    figure = new_figure(figsize=(10, 4), layout="constrained")
    axes = figure.subplots(1, 2)
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
    figure = new_figure(figsize=(side + margin + 1.6, side + margin + 0.8))
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


def misclassified_grid(
    images: np.ndarray, actual: Sequence[str], predicted: Sequence[str], confidences: Sequence[float],
    path: str | os.PathLike, dpi: int = 100, columns: int = 5,
) -> None:
    """Test images the model got wrong, in the given order, each titled true / predicted (confidence)."""
    grid = ImageGrid(-(-len(images) // columns), columns, cell=1.65, above=3, font=10,
                     title="Misclassified test images, most confident mistakes first", title_size=13)
    for index, picture in enumerate(images):
        row, column = divmod(index, columns)
        image, style = image_style(picture)
        grid.show(row, column, image, frame="tab:red", **style)
        grid.title(row, column, f"true: {actual[index]}\npredicted: {predicted[index]}\n({confidences[index]:.0%})")
    grid.save(path, dpi)


def feature_maps_figure(
    image: np.ndarray, class_name: str, layer_maps: Sequence[tuple[str, np.ndarray]],
    path: str | os.PathLike, max_channels: int = 16, dpi: int = 100, columns: int = 8,
) -> None:
    save_figure(draw_feature_maps(image, class_name, layer_maps, max_channels, columns), path, dpi)


def draw_feature_maps(image: np.ndarray, class_name: str, layer_maps: Sequence[tuple[str, np.ndarray]],
                      max_channels: int = 16, columns: int = 8):
    """One test image and, below it, the first `max_channels` activation maps of each layer, on
    one colour scale per layer (its colour bar at the row's end), labelled with the channels
    shown out of the layer's total. Returns the figure."""
    blocks = [-(-min(maps.shape[-1], max_channels) // columns) for _, maps in layer_maps]
    grid = ImageGrid(1 + sum(blocks), columns, cell=0.92, above=1, font=8, label_width=0.9, right=0.9,
                     title="Feature maps: activations of the first convolutional layers, one colour scale per layer")
    picture, style = image_style(image)
    grid.show(0, 0, picture, frame="black", **style)
    grid.title(0, 0, f"input ({class_name})", fontsize=9)
    row = 1
    for (name, maps), block in zip(layer_maps, blocks):
        shown = min(maps.shape[-1], max_channels)
        low, high = float(maps[..., :shown].min()), float(maps[..., :shown].max())
        for channel in range(shown):
            place = (row + channel // columns, channel % columns)
            drawn = grid.show(*place, maps[..., channel], frame="grey", cmap="viridis", vmin=low, vmax=high)
            grid.title(*place, f"channel {channel + 1}")
        grid.colour_bar(drawn, row, row + block - 1, "activation")
        grid.row_label(row, f"{name}\n{maps.shape[0]}x{maps.shape[1]}\nchannels 1-{shown}\nof {maps.shape[-1]}",
                       fontsize=9)
        row += block
    return grid.figure


def reliability_diagram(table, ece: float, binning: str, path: str | os.PathLike, dpi: int = 100) -> None:
    """Accuracy against mean confidence per confidence bin (left; the diagonal is perfect
    calibration) and the test images per bin (right)."""
    figure = new_figure(figsize=(10, 4.2), layout="constrained")
    axes = figure.subplots(1, 2)
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
    grid = ImageGrid(rows, columns, cell=1.65, above=3, font=10, right=1.0, title=title, title_size=13)
    colours = colormaps["jet"]
    for index, (image, heat, caption) in enumerate(zip(images, heat_maps, titles)):
        row, column = divmod(index, columns)
        grey = np.asarray(image, dtype=np.float32).mean(axis=-1)
        span = float(grey.max() - grey.min()) or 1.0
        unit = (grey - grey.min()) / span
        grid.show(row, column, unit, cmap="gray_r" if unit.mean() < 0.5 else "gray", vmin=0.0, vmax=1.0)
        # Opacity follows the heat: the image stays visible where the model did not look.
        overlay = colours(np.clip(heat, 0.0, 1.0))
        overlay[..., 3] = 0.15 + 0.6 * np.clip(heat, 0.0, 1.0)
        grid.show(row, column, overlay, frame=frame)
        grid.title(row, column, caption)
    scale = ScalarMappable(Normalize(0.0, 1.0), colours)
    grid.colour_bar(scale, 0, rows - 1, "Grad-CAM (1 = strongest)")
    grid.save(path, dpi)


def binary_curves_figure(roc, precision_recall, metrics: dict, positive_class: str,
                         path: str | os.PathLike, dpi: int = 100) -> None:
    """ROC curve (left) and precision-recall curve (right) for the positive class."""
    figure = new_figure(figsize=(10, 4.5), layout="constrained")
    axes = figure.subplots(1, 2)
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
    figure = new_figure(figsize=(11, 4.5))
    axes = figure.subplots(1, 2)
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
    # The mixed row's captions hang below the grid: the saved figure grows to hold them (save_figure).
    grid = ImageGrid(rows + (1 if mixed else 0), columns, cell=0.85, above=1, font=8,
                     label_width=label_width([*row_labels, "mixed"]), title="Augmentation preview")

    def draw(row, column, image):
        unit = np.clip((image - low) / (high - low), 0.0, 1.0)
        if unit.shape[-1] == 1:
            grid.show(row, column, unit[..., 0], frame="black", cmap=cmap, vmin=0.0, vmax=1.0)
        else:
            grid.show(row, column, unit, frame="black")

    for row in range(rows):
        for column, image in enumerate([originals[row], *variants[row]]):
            draw(row, column, image)
        grid.row_label(row, row_labels[row], fontsize=10)
    if mixed:
        for column, (image, caption) in enumerate(zip(mixed["images"][:columns], mixed["captions"])):
            draw(rows, column, image)
            grid.caption(rows, column, caption.replace(" + ", "\n+ "), fontsize=6, centred=True)
        grid.row_label(rows, "mixed", fontsize=10)
    grid.title(0, 0, "original")
    for column in range(1, columns):
        grid.title(0, column, f"augmented {column}")
    grid.save(path, dpi)


def lr_find_curve(rates: np.ndarray, losses: np.ndarray, smoothed: np.ndarray, record: dict,
                  path: str | os.PathLike, dpi: int = 100) -> None:
    """The range test: loss against learning rate (log scale), the suggested rate marked."""
    figure = new_figure(figsize=(6.4, 4.0))
    axis = figure.subplots()
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
    grid = ImageGrid(-(-len(first) // columns), 2 * columns, cell=1.05, above=2, below=1, font=8,
                     title="Duplicate pairs (leakage across splits first)", title_size=11)
    for index in range(len(first)):
        row, column = divmod(index, columns)
        for side, images in enumerate((first, second)):
            image, style = image_style(images[index])
            grid.show(row, 2 * column + side, image,
                      frame="tab:red" if caption[index].startswith("exact") else "tab:orange", **style)
            grid.title(row, 2 * column + side, titles[index][side])
        grid.caption(row, 2 * column, caption[index])
    grid.save(path, dpi)
