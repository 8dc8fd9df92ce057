"""predict: classify new image files with the trained model.

Every picture (any size, colour or grayscale) is converted exactly as `prepare` converted
the training data: decoded and resized by stages/images.py to the size and colour mode of
meta.json's `image_shape`, then normalized with meta.json's `normalization`. Files are
read one batch at a time, so a folder of any size never sits in memory whole.

A file that cannot be decoded is skipped and reported; the caller decides the exit code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from stages.artifacts import read_meta, read_model
from stages.errors import DataError
from stages.images import IMAGE_EXTENSIONS, UnreadableImage, is_image_file, load_image, normalize
from stages.io import atomic_path, display_path

# Exit code of `cnnlab predict` when some files were unreadable (the others were classified).
PARTIAL_FAILURE_EXIT_CODE = 1
CHANNELS_TO_COLOR_MODE = {1: "grayscale", 3: "rgb"}


@dataclass(frozen=True)
class ImageSettings:
    """How `prepare` turned pictures into model inputs, as recorded in meta.json."""

    image_size: tuple[int, int]          # (height, width)
    color_mode: str                      # "grayscale" or "rgb"
    normalization: dict
    class_names: tuple[str, ...]

    @classmethod
    def from_meta(cls, meta: dict, source: str | Path = "meta.json") -> ImageSettings:
        height, width, channels = meta["image_shape"]
        if channels not in CHANNELS_TO_COLOR_MODE:
            raise DataError(
                f"{source}: image_shape {meta['image_shape']} has {channels} channels; "
                "cnnlab predicts on 1 (grayscale) or 3 (rgb) channel images only"
            )
        return cls((int(height), int(width)), CHANNELS_TO_COLOR_MODE[channels],
                   dict(meta["normalization"]), tuple(meta["class_names"]))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (*self.image_size, 1 if self.color_mode == "grayscale" else 3)


@dataclass
class Predictions:
    table: pd.DataFrame                                   # one row per classified file
    failures: list[tuple[Path, str]] = field(default_factory=list)  # (file, why it was skipped)


def check_output_path(output_csv: str | Path | None) -> None:
    if output_csv is not None and Path(output_csv).is_dir():
        raise DataError(f"--output {output_csv} is a folder; give the name of the CSV file to write, "
                        f"such as {Path(output_csv) / 'predictions.csv'}")


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files named on the command line as they are, plus the image files inside folders (recursive)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if is_image_file(p)))
        elif path.exists():
            files.append(path)  # asked for by name: try it even without an image extension
        else:
            raise DataError(f"{path}: no such file or folder; pass image files or folders of images")
    if not files:
        raise DataError(
            f"no image files found in {', '.join(map(str, paths))}; "
            f"expected files ending in {', '.join(IMAGE_EXTENSIONS)}; pass image files, or folders "
            "that hold some"
        )
    return list(dict.fromkeys(files))  # a file named twice (or inside a named folder) once


def load_batch(files: Sequence[Path], settings: ImageSettings):
    """Decode and normalize one batch; return (inputs, files read, failures)."""
    images, loaded, failures = [], [], []
    for path in files:
        try:
            images.append(load_image(path, settings.image_size, settings.color_mode))
            loaded.append(path)
        except UnreadableImage as error:
            failures.append((path, str(error)))
    inputs = normalize(np.stack(images), settings.normalization) if images else None
    return inputs, loaded, failures


def class_probabilities(outputs, num_classes: int) -> np.ndarray:
    """One probability per class; a binary model's single sigmoid unit p becomes [1 - p, p]."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.shape[-1] == 1 and num_classes == 2:
        return np.concatenate([1.0 - outputs, outputs], axis=-1)
    return outputs


def top_k_table(files: Sequence[Path], probabilities: np.ndarray, class_names: Sequence[str],
                top_k: int) -> pd.DataFrame:
    """file, predicted, confidence, then top_2, top_2_confidence ... top_k, top_k_confidence."""
    top_k = min(top_k, len(class_names))
    # A stable sort keeps the lowest class id first among ties, as argmax (and evaluate) does.
    ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    names = np.asarray(class_names, dtype=object)
    table = pd.DataFrame({"file": [display_path(path) for path in files]})  # valid UTF-8, always
    for rank in range(top_k):
        label = "predicted" if rank == 0 else f"top_{rank + 1}"
        table[label] = names[ranked[:, rank]]
        table["confidence" if rank == 0 else f"{label}_confidence"] = np.take_along_axis(
            probabilities, ranked[:, rank:rank + 1], axis=1)[:, 0]
    return table


def progress_bar():
    """A rich progress bar on stderr (so stdout stays the table), hidden when not on a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(TextColumn("classifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not console.is_terminal)


def predict(
    paths: Sequence[str | Path], model_path: str | Path, meta_path: str | Path,
    batch_size: int = 256, top_k: int = 3, output_csv: str | Path | None = None,
) -> Predictions:
    """Classify image files and folders of images; write the table to `output_csv` if given."""
    meta = read_meta(meta_path)
    settings = ImageSettings.from_meta(meta, meta_path)
    check_output_path(output_csv)
    files = find_images(paths)  # before loading the model: a typo fails in a second, not ten
    model = read_model(model_path, meta)

    classified, batches, failures = [], [], []
    with progress_bar() as progress:
        task = progress.add_task("classify", total=len(files))
        for start in range(0, len(files), batch_size):
            inputs, loaded, skipped = load_batch(files[start:start + batch_size], settings)
            failures.extend(skipped)
            if inputs is not None:
                classified.extend(loaded)
                batches.append(class_probabilities(model.predict_on_batch(inputs), len(settings.class_names)))
            progress.advance(task, len(loaded) + len(skipped))

    num_classes = len(settings.class_names)
    probabilities = np.concatenate(batches) if batches else np.empty((0, num_classes))
    table = top_k_table(classified, probabilities, settings.class_names, top_k)
    if output_csv is not None:
        with atomic_path(output_csv) as temp:
            table.to_csv(temp, index=False, float_format="%.6f")
    return Predictions(table, failures)


def results_table(predictions: Predictions):
    """The predictions as a rich table for the terminal: file, class, confidence, runners-up."""
    from rich.table import Table

    frame = predictions.table
    runners_up = [column for column in frame.columns if column.startswith("top_") and
                  not column.endswith("_confidence")]
    table = Table(show_edge=False)
    table.add_column("file", overflow="fold")
    table.add_column("predicted")
    table.add_column("confidence", justify="right")
    if runners_up:
        table.add_column("next most likely")
    for _, row in frame.iterrows():
        others = ", ".join(f"{row[column]} ({row[column + '_confidence']:.1%})" for column in runners_up)
        table.add_row(row["file"], str(row["predicted"]), f"{row['confidence']:.1%}",
                      *([others] if runners_up else []))
    return table
