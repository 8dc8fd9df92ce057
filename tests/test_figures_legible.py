"""The figures a reviewer reads at GitHub's page width: real PNGs, drawn from real arrays."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stages import plots
from stages.calibration import BINNING, reliability_table


def confusion(classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    matrix = np.diag(rng.integers(20, 60, classes))
    for _ in range(3 * classes):
        matrix[rng.integers(classes), rng.integers(classes)] += rng.integers(1, 9)
    return matrix


def boxes(figure, artists):
    renderer = figure.canvas.get_renderer()
    return [artist.get_window_extent(renderer) for artist in artists if artist.get_text()]


def overlapping(extents) -> bool:
    return any(a.overlaps(b) for index, a in enumerate(extents) for b in extents[index + 1:])


@pytest.mark.parametrize("names", [["cat", "dog"],
                                   ["a rather long class name", "another very long name here", "short"],
                                   [f"class {index}" for index in range(12)],
                                   [f"class_{index:02d}" for index in range(100)]],
                         ids=["2 classes", "3 long names", "12 classes", "100 classes"])
def test_confusion_matrix_labels_and_counts_never_overlap(names, tmp_path):
    matrix = confusion(len(names))
    matrix[0, -1] = 0
    figure = plots.draw_confusion_matrix(matrix, names)
    axis = figure.axes[0]
    assert not overlapping(boxes(figure, axis.get_xticklabels()))
    assert not overlapping(boxes(figure, axis.get_yticklabels()))
    counts = axis.texts
    if len(names) <= 30:
        assert len(counts) == np.count_nonzero(matrix)  # zeros left blank
        assert str(matrix[0, 0]) in {text.get_text() for text in counts}
        # Each count inside its own cell: cell width in pixels from the data transform.
        left, right = axis.transData.transform([(0, 0), (1, 0)])
        assert all(box.width < right[0] - left[0] for box in boxes(figure, counts))
    else:
        assert len(counts) == 0  # too many classes: colours only, said in the title
        assert "counts left out" in axis.get_title()
    plots.save_figure(figure, tmp_path / "matrix.png", dpi=100)
    width, height = Image.open(tmp_path / "matrix.png").size
    assert 250 <= width <= 1500 and 200 <= height <= 1500


def test_every_new_figure_is_a_png_of_the_expected_size(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((7, 12, 12, 1)).astype(np.float32)
    plots.gradcam_grid(images, rng.random((7, 12, 12)), [f"true: a\npredicted: b\n({i}0%)" for i in range(7)],
                       "Grad-CAM", tmp_path / "gradcam.png", dpi=100)
    labels = np.arange(50) % 3
    probabilities = rng.dirichlet(np.ones(3), 50)
    plots.reliability_diagram(reliability_table(labels, probabilities), 0.1234, BINNING,
                              tmp_path / "reliability.png", dpi=100)
    plots.training_curves({"accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.4, 0.6, 0.55],
                           "loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.8, 0.9]}, tmp_path / "curves.png", 100, 2)
    plots.feature_maps_figure(images[0], "a", [("conv1", rng.random((12, 12, 32)))], tmp_path / "maps.png", 16, 100)
    for name, (low, high) in {"gradcam.png": (900, 1100), "reliability.png": (900, 1100),
                              "curves.png": (900, 1100), "maps.png": (900, 1200)}.items():
        width, height = Image.open(tmp_path / name).size
        assert low <= width <= high, (name, width)  # about GitHub's page width: titles stay readable
        assert height > 200, name


def test_feature_maps_share_one_scale_per_layer_and_say_which_channels():
    rng = np.random.default_rng(1)
    first, second = rng.random((6, 6, 20)), 10 * rng.random((3, 3, 4))
    figure = plots.draw_feature_maps(rng.random((6, 6, 1)), "a", [("conv1", first), ("conv2", second)],
                                     max_channels=16)
    board = figure.axes[0]  # the grid's images and texts; then the colour bars
    maps = board.images[1:]  # after the input image: 16 maps of conv1, 4 of conv2
    assert len(maps) == 20
    assert {image.get_clim() for image in maps[:16]} == {(first[..., :16].min(), first[..., :16].max())}
    assert {image.get_clim() for image in maps[16:]} == {(second.min(), second.max())}
    labels = " ".join(text.get_text() for text in board.texts)
    assert "channels 1-16\nof 20" in labels and "channels 1-4\nof 4" in labels
    assert "channel 16" in labels and "channel 17" not in labels
    bars = [axis for axis in figure.axes if axis.get_label() == "<colorbar>"]
    assert [bar.get_ylim() for bar in bars] == [maps[0].get_clim(), maps[16].get_clim()]


@pytest.mark.parametrize(("above", "below", "title_lines", "font"), [(3, 0, 3, 10), (2, 1, 2, 8), (1, 0, 1, 8)],
                         ids=["three-line titles", "titles and captions", "one-line titles"])
def test_image_grid_texts_never_overlap_each_other_or_the_images(above, below, title_lines, font):
    """The grids are laid out by hand: every title, caption and row label has its own room."""
    rng = np.random.default_rng(2)
    grid = plots.ImageGrid(3, 4, cell=1.05, title="A figure title over the whole grid", above=above, below=below,
                           font=font, label_width=0.9, right=0.9)
    for row in range(3):
        for column in range(4):
            drawn = grid.show(row, column, rng.random((8, 12 if column % 2 else 8)), frame="grey",
                              cmap="viridis", vmin=0, vmax=1)
            grid.title(row, column, "\n".join(["title"] * title_lines))
            if below:
                grid.caption(row, column, "caption")
        grid.row_label(row, "layer\n8x8\nchannels\nof 4", fontsize=9)
    grid.colour_bar(drawn, 0, 2, "activation")
    grid.figure.canvas.draw()
    texts = boxes(grid.figure, grid.board.texts)
    assert len(texts) == 1 + 3 * 4 * (2 if below else 1) + 3
    assert not overlapping(texts)
    renderer = grid.figure.canvas.get_renderer()
    images = [image.get_window_extent(renderer) for image in grid.board.images]
    assert not overlapping(images)
    assert not any(text.overlaps(image) for text in texts for image in images)
    bar = [axis for axis in grid.figure.axes if axis.get_label() == "<colorbar>"][0].get_window_extent(renderer)
    assert not any(bar.overlaps(image) for image in images)
    assert min(box.x0 for box in texts) >= 0 and max(box.y1 for box in texts) <= grid.figure.bbox.height
