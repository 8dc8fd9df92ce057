"""Reading image files and normalizing pixel arrays: shared by `prepare` and `predict`.

Both stages must turn a picture into exactly the same array, so the conversion lives
here once: decode with Pillow, convert the colour mode, resize, then normalize with the
statistics recorded in data/prepared/meta.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
COLOR_MODES = {"grayscale": "L", "rgb": "RGB"}


class UnreadableImage(Exception):
    """A file that is not a decodable image (corrupt, truncated, not an image at all)."""


def is_image_file(path: Path) -> bool:
    """Image extension and not hidden (skips .DS_Store, ._resource forks and the like)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


GRAYSCALE_PILLOW_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def image_header(path: str | Path) -> tuple[int, int, bool] | None:
    """(height, width, is grayscale) from the file's header, without decoding its pixels;
    None when Pillow cannot identify the file (prepare then skips and lists it)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.height, image.width, image.mode in GRAYSCALE_PILLOW_MODES
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def load_image(path: str | Path, image_size: tuple[int, int], color_mode: str) -> np.ndarray:
    """Decode one file to a uint8 (height, width, channels) array of the requested size and mode."""
    from PIL import Image, UnidentifiedImageError  # Pillow keeps its decompression-bomb limit on

    try:
        with Image.open(path) as image:
            image.load()  # decode now, so truncated files fail here and not later
            converted = image.convert(COLOR_MODES[color_mode])
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # A decompression bomb (far more pixels than any real photo) is refused, not decoded.
        raise UnreadableImage(f"{path}: {error}") from None
    height, width = image_size
    if converted.size != (width, height):
        converted = converted.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(converted, dtype=np.uint8)
    return array[..., np.newaxis] if array.ndim == 2 else array


def normalize(images: np.ndarray, normalization: Mapping) -> np.ndarray:
    """Raw pixel values -> the float32 inputs the model was trained on.

    `normalization` is meta.json's record: {"method": "unit", "scale": 255} divides by the
    full-intensity value (the course's x / 255); {"method": "standardize", "scale", "mean",
    "std"} then subtracts the per-channel training mean and divides by the training std.
    """
    scaled = np.asarray(images, dtype=np.float32) / np.float32(normalization["scale"])
    if normalization["method"] == "unit":
        return scaled.clip(0.0, 1.0)
    mean = np.asarray(normalization["mean"], dtype=np.float32)
    std = np.asarray(normalization["std"], dtype=np.float32)
    return (scaled - mean) / std
