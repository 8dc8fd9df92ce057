"""Tiny datasets written by the tests in the real file formats the sources read.

IDX (gzipped or raw, as MNIST and Fashion-MNIST ship), Keras's .npz, CIFAR's python
batches (pickles as Python 2 wrote them, in a folder or a .tar.gz), and folders of
image files (PNG, JPEG, BMP, GIF).
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: 0, 0, type 0x08, ndim, big-endian sizes, then the values."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gzipped: bool = True) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data, mtime=0) if gzipped else data)
    return path


def mnist_like(train_per_class: int = 4, test_per_class: int = 2, seed: int = 0, size: int = 28) -> dict:
    """Random 28x28 images, labels 0..9 in a shuffled order: the four MNIST parts."""
    rng = np.random.default_rng(seed)
    parts = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        parts[f"{split}_images"] = rng.integers(0, 256, (len(labels), size, size), dtype=np.uint8)
        parts[f"{split}_labels"] = labels
    return parts


def write_mnist_idx(folder: Path, parts: dict, gzipped: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part, stem in IDX_NAMES.items():
        write_idx(folder / (f"{stem}.gz" if gzipped else stem), parts[part], gzipped)
    return folder


def write_mnist_npz(path: Path, parts: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x_train=parts["train_images"], y_train=parts["train_labels"],
                        x_test=parts["test_images"], y_test=parts["test_labels"])
    return path


# --- CIFAR ------------------------------------------------------------------------------------
class Python2Pickler(pickle._Pickler):
    """Writes bytes the way Python 2 wrote its `str`: SHORT_BINSTRING/BINSTRING, as in CIFAR's files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, value: bytes) -> None:
        if len(value) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(value)]) + value)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(value)) + value)
        self.memoize(value)

    dispatch[bytes] = save_python2_str


def python2_pickle(value) -> bytes:
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(value)
    # numpy 1.x (the one that pickled CIFAR) names its module numpy.core, not numpy._core.
    return buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def cifar_like(num_classes: int, train_per_class: int, test_per_class: int, seed: int = 0) -> dict:
    """NHWC uint8 32x32x3 images and labels for a train and a test split."""
    rng = np.random.default_rng(seed)
    parts = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
        parts[f"{split}_images"] = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
        parts[f"{split}_labels"] = labels
    return parts


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """NHWC -> CIFAR's rows: 1024 red, 1024 green, 1024 blue values per image."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def write_cifar10(folder: Path, parts: dict, num_batches: int = 5) -> Path:
    """cifar-10-batches-py/: data_batch_1..5, test_batch, batches.meta (Python 2 pickles)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [name.encode() for name in CIFAR10_NAMES]
    batches = np.array_split(np.arange(len(parts["train_labels"])), num_batches)
    for number, rows in enumerate(batches, start=1):
        batch = {b"batch_label": f"training batch {number} of 5".encode(),
                 b"labels": [int(label) for label in parts["train_labels"][rows]],
                 b"data": cifar_rows(parts["train_images"][rows]),
                 b"filenames": [f"image_{row}.png".encode() for row in rows]}
        (folder / f"data_batch_{number}").write_bytes(python2_pickle(batch))
    test = {b"batch_label": b"testing batch 1 of 1",
            b"labels": [int(label) for label in parts["test_labels"]],
            b"data": cifar_rows(parts["test_images"])}
    (folder / "test_batch").write_bytes(python2_pickle(test))
    (folder / "batches.meta").write_bytes(
        python2_pickle({b"label_names": names, b"num_cases_per_batch": 10000, b"num_vis": 3072}))
    return folder


def write_cifar100(folder: Path, parts: dict, fine_names: list[str]) -> Path:
    """cifar-100-python/: train, test, meta with fine and coarse labels."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        labels = [int(label) for label in parts[f"{split}_labels"]]
        batch = {b"fine_labels": labels, b"coarse_labels": [label // 5 for label in labels],
                 b"data": cifar_rows(parts[f"{split}_images"])}
        (folder / split).write_bytes(python2_pickle(batch))
    (folder / "meta").write_bytes(python2_pickle({
        b"fine_label_names": [name.encode() for name in fine_names],
        b"coarse_label_names": [b"group"]}))
    return folder


def write_tar_gz(archive: Path, folder: Path) -> Path:
    """The folder packed as the official archives are: its name as the top-level member."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"]


class RunsACommand:
    """What an attacker pickles: unpickling it would call os.system(command)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


# --- folders of images ------------------------------------------------------------------------
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def write_image(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (12, 10),
                mode: str = "RGB", seed: int = 0) -> Path:
    """A noisy image of one dominant colour (Pillow picks the format from the extension)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    pixels = np.clip(np.asarray(color) + rng.integers(-25, 26, (height, width, 3)), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB").convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_truncated_png(path: Path) -> Path:
    """A PNG cut in half: its header says image, its data ends early."""
    write_image(path, (128, 128, 128), size=(40, 40))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def image_tree(root: Path, classes: dict[str, str], per_class: int = 6) -> Path:
    """root/<class>/ with `per_class` images of the class's colour in mixed formats and sizes."""
    extensions = (".png", ".jpg", ".bmp", ".gif", ".jpeg", ".PNG")
    for class_index, (name, color) in enumerate(classes.items()):
        for number in range(per_class):
            extension = extensions[number % len(extensions)]
            mode = "L" if number == 1 and extension != ".gif" else "RGB"   # one grayscale file each
            size = (12 + number, 10 + 2 * (number % 3))
            write_image(root / name / f"{number:03d}{extension}", COLORS[color], size, mode,
                        seed=class_index * 100 + number)
    return root
