"""Dataset sources: digits, mnist, fashion_mnist, cifar10, cifar100 and folder.

Each source returns its raw images (uint8, NHWC) and labels, with the value that means
"full intensity" (`max_value`), so `prepare` scales every source the same way.

The standard datasets are looked for, in order: `prepare.data_dir` (when set), the
known local copies (Debian's dataset packages, Keras's download cache, the project's
data/raw/), and last Keras's own downloader when a network is reachable. Whatever was
found is recorded (`found_at`); when nothing is, one error says which files to put where.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages import formats
from stages.config import PrepareParams
from stages.errors import CnnlabError, ConfigError, DataError
from stages.folders import list_folder, load_folder_split
from stages.progress import track

FULL_INTENSITY_8BIT = 255.0
PROJECT_RAW_DIR = Path("data/raw")          # relative to the project folder (where dvc runs)
OFFLINE_VARIABLE = "CNNLAB_OFFLINE"         # set it to never try Keras's downloader


@dataclass(frozen=True)
class RawDataset:
    train_images: np.ndarray          # (N, H, W, C) uint8 (memory-mapped for folders)
    train_labels: np.ndarray          # (N,), int class ids
    test_images: np.ndarray | None    # the source's own test split, if it has one
    test_labels: np.ndarray | None
    class_names: tuple[str, ...]
    max_value: float                  # pixel value of full intensity (16 for digits, 255 for 8-bit)
    description: str
    found_at: str = ""                # where the files were read from
    skipped: tuple[dict, ...] = ()    # unreadable image files (folder source)
    ignored_files: int = 0            # hidden files and non-images (folder source)
    links: tuple[str, ...] = ()       # links to folders, not followed (folder source)


DIGITS_FILE = "datasets/data/digits.csv.gz"  # inside the installed scikit-learn package


def scikit_learn_file(relative: str) -> Path:
    """A data file shipped with scikit-learn, found without importing it (that takes over a second)."""
    spec = importlib.util.find_spec("sklearn")  # locates a top-level package without running it
    folders = spec.submodule_search_locations if spec is not None else None
    path = Path(folders[0]) / relative if folders else None
    if path is None or not path.is_file():
        raise CnnlabError(f"digits: scikit-learn's bundled file sklearn/{relative} is missing from this "
                          "Python environment (scikit-learn not installed or damaged); reinstall the "
                          "project's dependencies (make install)")
    return path


def load_digits() -> RawDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 17 grey levels).

    Read as scikit-learn's own load_digits reads it: one CSV row per image, 64 pixels then the digit.
    """
    rows = np.loadtxt(scikit_learn_file(DIGITS_FILE), delimiter=",")
    images = rows[:, :-1].reshape(-1, 8, 8).astype(np.uint8)[..., np.newaxis]
    return RawDataset(
        train_images=images,
        train_labels=rows[:, -1].astype(np.int64),
        test_images=None,
        test_labels=None,
        class_names=tuple(str(digit) for digit in range(10)),
        max_value=16.0,
        description="scikit-learn digits (8x8 grayscale, bundled)",
        found_at="bundled with scikit-learn",
    )


# --- the standard datasets: where their files may lie ---------------------------------------
IDX_PARTS = {  # part -> file stem of the MNIST/Fashion-MNIST distributions
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass(frozen=True)
class CifarFiles:
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str


@dataclass(frozen=True)
class StandardSource:
    name: str
    title: str
    family: str                       # "idx" or "cifar": the format of a folder of its files
    layouts: tuple[tuple[str, str], ...]   # (path under a search folder, format) in search order
    expected: str                     # the files, for the not-found message
    keras_module: str                 # keras.datasets.<module>.load_data() downloads it
    download_host: str
    class_names: tuple[str, ...] = ()  # empty: read from the CIFAR meta file
    system_dirs: tuple[Path, ...] = ()
    cifar: CifarFiles | None = None


CIFAR10_FILES = CifarFiles(tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                           "batches.meta", "labels", "label_names")
CIFAR100_FILES = CifarFiles(("train",), "test", "meta", "fine_labels", "fine_label_names")

STANDARD_SOURCES = {
    "mnist": StandardSource(
        "mnist", "MNIST", "idx",
        layouts=(("mnist.npz", "npz"), ("mnist", "idx"), ("mnist/mnist.npz", "npz")),
        expected="mnist.npz (Keras's file) in data/raw/, or the four IDX files "
                 "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
                 "t10k-labels-idx1-ubyte.gz) in data/raw/mnist/",
        keras_module="mnist", download_host="storage.googleapis.com",
        class_names=tuple(str(digit) for digit in range(10)),
    ),
    "fashion_mnist": StandardSource(
        "fashion_mnist", "Fashion-MNIST", "idx",
        layouts=(("fashion-mnist", "idx"), ("fashion_mnist", "idx"),
                 ("fashion-mnist.npz", "npz"), ("fashion_mnist.npz", "npz")),
        expected="the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                 "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in data/raw/fashion-mnist/ "
                 "(on Debian/Ubuntu: apt-get install dataset-fashion-mnist)",
        keras_module="fashion_mnist", download_host="storage.googleapis.com",
        class_names=FASHION_CLASSES, system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
    ),
    "cifar10": StandardSource(
        "cifar10", "CIFAR-10", "cifar",
        layouts=(("cifar-10-batches-py", "cifar"),
                 ("cifar-10-batches-py-target/cifar-10-batches-py", "cifar"),
                 ("cifar-10-python.tar.gz", "cifar"), ("cifar-10-batches-py.tar.gz", "cifar"),
                 ("cifar-10-batches-py-target_archive", "cifar")),
        expected="cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/ folder) in data/raw/",
        keras_module="cifar10", download_host="www.cs.toronto.edu", cifar=CIFAR10_FILES,
    ),
    "cifar100": StandardSource(
        "cifar100", "CIFAR-100", "cifar",
        layouts=(("cifar-100-python", "cifar"),
                 ("cifar-100-python-target/cifar-100-python", "cifar"),
                 ("cifar-100-python.tar.gz", "cifar"), ("cifar-100-python-target_archive", "cifar")),
        expected="cifar-100-python.tar.gz (or its extracted cifar-100-python/ folder) in data/raw/",
        keras_module="cifar100", download_host="www.cs.toronto.edu", cifar=CIFAR100_FILES,
    ),
}


@dataclass(frozen=True)
class Found:
    path: Path
    format: str                       # "idx", "npz", "cifar"
    files: dict = field(default_factory=dict)  # IDX part -> file

    def describe(self) -> str:
        if self.format == "cifar":
            return "CIFAR python batches, " + ("extracted folder" if self.path.is_dir() else "tar archive")
        return {"idx": "IDX files", "npz": "Keras .npz"}[self.format]


def keras_dataset_dirs() -> list[Path]:
    """Keras's download cache: $KERAS_HOME or ~/.keras, and /tmp/.keras when home is read-only."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return [Path(home) / "datasets", Path("/tmp/.keras/datasets")]


def search_places(source: StandardSource, data_dir: str | None) -> list[tuple[Path, str]]:
    """(path, format) pairs to try, in order; generic layouts only where unambiguous."""
    places = []
    if data_dir is not None:
        root = Path(data_dir)
        places.append((root, "npz" if root.suffix == ".npz" else source.family))
        places += [(root / relative, fmt) for relative, fmt in source.layouts]
    places += [(folder, source.family) for folder in source.system_dirs]
    for root in [*keras_dataset_dirs(), PROJECT_RAW_DIR]:
        places += [(root / relative, fmt) for relative, fmt in source.layouts]
    return list(dict.fromkeys(places))


def idx_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The IDX file of each part found in `folder` (gzipped or not), and the missing parts."""
    found, missing = {}, []
    for part, stem in IDX_PARTS.items():
        dotted = stem.replace("-idx", ".idx")  # some mirrors spell train-images.idx3-ubyte
        names = (f"{stem}.gz", stem, f"{dotted}.gz", dotted)
        path = next((folder / name for name in names if (folder / name).is_file()), None)
        if path is None:
            missing.append(f"{stem}.gz")
        else:
            found[part] = path
    return found, missing


def check_place(source: StandardSource, path: Path, fmt: str) -> tuple[Found | None, str | None]:
    """(what is there, None) or (None, a note when the place holds an incomplete set)."""
    if fmt == "npz":
        return (Found(path, "npz"), None) if path.is_file() else (None, None)
    if fmt == "idx":
        if not path.is_dir():
            return None, None
        files, missing = idx_files(path)
        if not missing:
            return Found(path, "idx", files), None
        return None, (f"{path} lacks {', '.join(missing)}" if files else None)
    if path.is_file():
        return Found(path, "cifar"), None
    if not path.is_dir():
        return None, None
    names = (*source.cifar.train, source.cifar.test, source.cifar.meta)
    missing = [name for name in names if not (path / name).is_file()]
    if not missing:
        return Found(path, "cifar"), None
    return None, (f"{path} lacks {', '.join(missing)}" if len(missing) < len(names) else None)


def find_local(source: StandardSource, data_dir: str | None) -> tuple[Found | None, list[str]]:
    """The first complete local copy, and notes on incomplete ones met on the way."""
    notes = []
    for path, fmt in search_places(source, data_dir):
        found, note = check_place(source, path, fmt)
        if found is not None:
            return found, notes
        if note:
            notes.append(note)
    return None, notes


# --- the standard datasets: reading them ---------------------------------------------------------
def checked_arrays(
    images: np.ndarray, labels: np.ndarray, num_classes: int, name: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 NHWC, labels as int64 class ids; anything else is a damaged source."""
    if images.ndim == 3:
        images = images[..., np.newaxis]
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"{name}: expected uint8 images shaped (N, H, W) or (N, H, W, 1|3), got "
                        f"{images.dtype} {images.shape}; replace the files with fresh copies")
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{name}: expected {len(images)} integer labels, got {labels.dtype} "
                        f"{labels.shape}; the image and label files do not belong together: use "
                        "the images and labels of one download")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{name}: labels must lie in 0..{num_classes - 1}, found {labels.min()}.."
                        f"{labels.max()}; the files are not this dataset's: replace them with a "
                        "fresh copy of the dataset")
    return images, labels.astype(np.int64)


def read_idx_set(found: Found, source: StandardSource) -> dict[str, np.ndarray]:
    return {part: formats.read_idx(found.files[part])
            for part in track(IDX_PARTS, f"reading {source.title}")}


def read_npz_set(found: Found, source: StandardSource) -> dict[str, np.ndarray]:
    arrays = formats.read_npz(found.path)
    return {"train_images": arrays["x_train"], "train_labels": arrays["y_train"],
            "test_images": arrays["x_test"], "test_labels": arrays["y_test"]}


def read_cifar_set(found: Found, source: StandardSource) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    files = source.cifar
    batches = formats.read_members(found.path, (*files.train, files.test, files.meta),
                                   formats.unpickle_batch)
    parts = [formats.cifar_images_labels(batches.pop(name), files.label_key, f"{found.path}: {name}")
             for name in files.train]
    test_images, test_labels = formats.cifar_images_labels(
        batches.pop(files.test), files.label_key, f"{found.path}: {files.test}")
    names = formats.label_names(batches[files.meta], files.names_key, f"{found.path}: {files.meta}")
    arrays = {"train_images": np.concatenate([images for images, _ in parts]),
              "train_labels": np.concatenate([labels for _, labels in parts]),
              "test_images": test_images, "test_labels": test_labels}
    return arrays, names


def read_standard(source: StandardSource, found: Found) -> RawDataset:
    class_names = source.class_names
    if found.format == "cifar":
        arrays, class_names = read_cifar_set(found, source)
    else:
        arrays = (read_idx_set if found.format == "idx" else read_npz_set)(found, source)
    train_images, train_labels = checked_arrays(
        arrays["train_images"], arrays["train_labels"], len(class_names), f"{found.path} (train)")
    test_images, test_labels = checked_arrays(
        arrays["test_images"], arrays["test_labels"], len(class_names), f"{found.path} (test)")
    height, width, channels = train_images.shape[1:]
    return RawDataset(
        train_images, train_labels, test_images, test_labels, tuple(class_names),
        max_value=FULL_INTENSITY_8BIT,
        description=f"{source.title} ({found.describe()}, {height}x{width}x{channels})",
        found_at=str(found.path),
    )


def network_reachable(host: str, timeout: float = 3.0) -> bool:
    if os.environ.get(OFFLINE_VARIABLE):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def download_with_keras(source: StandardSource) -> None:
    """Last resort: let Keras download the dataset into its cache (imports TensorFlow)."""
    from stages.runtime import import_tensorflow

    import_tensorflow()
    import keras

    try:
        getattr(keras.datasets, source.keras_module).load_data()
    except Exception as error:  # any failure of a download is the network's, not ours
        raise DataError(f"{source.name}: Keras's download failed ({type(error).__name__}: {error}); "
                        f"put {source.expected} or set prepare.data_dir; prepare.dataset=digits "
                        "always works offline") from None


def not_found_error(
    source: StandardSource, data_dir: str | None, notes: list[str], online: bool,
) -> DataError:
    roots = ([data_dir] if data_dir else []) + [str(path) for path in source.system_dirs]
    roots += [str(path) for path in keras_dataset_dirs()] + [f"{PROJECT_RAW_DIR}/"]
    why = "no complete copy found" + ("" if online else " and no network to download it")
    incomplete = f" (incomplete: {'; '.join(notes)})" if notes else ""
    return DataError(
        f"{source.name}: {why}{incomplete}; put {source.expected}, or set prepare.data_dir to the "
        f"folder holding them (searched {', '.join(roots)}); prepare.dataset=digits always works offline"
    )


def load_standard(source: StandardSource, data_dir: str | None) -> RawDataset:
    found, notes = find_local(source, data_dir)
    if found is None:
        online = network_reachable(source.download_host)
        if online:
            download_with_keras(source)
            found, notes = find_local(source, data_dir)
        if found is None:
            raise not_found_error(source, data_dir, notes, online)
    return read_standard(source, found)


# --- the folder source and the dispatch ----------------------------------------------------------
def load_folder(params: PrepareParams, seed: int, scratch_dir: Path) -> RawDataset:
    """The user's folders of class sub-folders, decoded into memory-mapped scratch arrays."""
    train, listing = load_folder_split(params.data_dir, "prepare.data_dir", params.image_size,
                                       params.color_mode, params.limit, seed, scratch_dir / "train.npy")
    size, channels = train.images.shape[1:3], train.images.shape[3]  # auto resolved on train
    test, test_listing = None, None
    if params.test_dir is not None:
        mode = "grayscale" if channels == 1 else "rgb"
        test, test_listing = load_folder_split(params.test_dir, "prepare.test_dir", size, mode,
                                               params.limit, seed, scratch_dir / "test.npy",
                                               class_names=listing.class_names)
    found_at = str(listing.root) + (f" (test: {test_listing.root})" if test_listing else "")
    return RawDataset(
        train.images, train.labels,
        test.images if test else None, test.labels if test else None,
        listing.class_names, max_value=FULL_INTENSITY_8BIT,
        description=f"image folder ({train.geometry})", found_at=found_at,
        skipped=train.skipped + (test.skipped if test else ()),
        ignored_files=listing.ignored + (test_listing.ignored if test_listing else 0),
        links=listing.links + (test_listing.links if test_listing else ()),
    )


def load_dataset(params: PrepareParams, seed: int, scratch_dir: Path) -> RawDataset:
    """The raw images of `params.dataset`; `scratch_dir` holds decoded folders while prepare runs."""
    if params.dataset == "digits":
        return load_digits()
    if params.dataset == "folder":
        return load_folder(params, seed, scratch_dir)
    try:
        source = STANDARD_SOURCES[params.dataset]
    except KeyError:
        names = ", ".join(["digits", *STANDARD_SOURCES, "folder"])
        raise ConfigError(f"unknown dataset {params.dataset!r}; expected one of {names}") from None
    return load_standard(source, params.data_dir)


# --- `cnnlab datasets` ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Availability:
    name: str
    available: bool | None            # None: not configured (folder without data_dir)
    location: str
    note: str


def folder_availability(params: PrepareParams) -> Availability:
    if params.dataset != "folder" or params.data_dir is None:
        return Availability("folder", None, "", "set prepare.dataset=folder and prepare.data_dir="
                            "<a folder with one sub-folder of images per class>")
    try:
        listing = list_folder(params.data_dir)
        if params.test_dir is not None:
            list_folder(params.test_dir, "prepare.test_dir")
    except CnnlabError as error:
        return Availability("folder", False, params.data_dir, str(error))
    return Availability("folder", True, str(listing.root),
                        f"{len(listing.class_names)} classes, {len(listing.files)} image files "
                        "(decoded by prepare)")


def survey(params: PrepareParams) -> list[Availability]:
    """Which sources `prepare` can read offline right now, and from where (nothing is decoded)."""
    rows = [Availability("digits", True, "bundled with scikit-learn", "8x8 grayscale, 1,797 images")]
    for source in STANDARD_SOURCES.values():
        found, notes = find_local(source, params.data_dir)
        if found is not None:
            rows.append(Availability(source.name, True, str(found.path), found.describe()))
            continue
        hint = "; ".join([*(f"incomplete: {note}" for note in notes), f"put {source.expected}",
                          "or Keras downloads it when online"])
        rows.append(Availability(source.name, False, "", hint))
    rows.append(folder_availability(params))
    return rows


def survey_table(rows: list[Availability], selected: str):
    """The survey as a rich table (source, offline, where / how); * marks prepare.dataset."""
    from rich.table import Table

    table = Table(caption="* = prepare.dataset in params.yaml", caption_justify="left", expand=False)
    table.add_column("", width=1)
    table.add_column("source", no_wrap=True)
    table.add_column("offline", no_wrap=True)
    table.add_column("where / how", overflow="fold")
    for row in rows:
        state = {True: "yes", False: "no", None: "-"}[row.available]
        where = " | ".join(part for part in (row.location, row.note) if part)
        table.add_row("*" if row.name == selected else "", row.name, state, where)
    return table
