"""Readers for the standard datasets' file formats: IDX, Keras's .npz, CIFAR's python batches.

Downloaded files are data, never code: `.npz` archives are read with
`allow_pickle=False`, and CIFAR's pickled batches go through `RestrictedUnpickler`, which
builds only plain containers, bytes, numbers and numpy arrays. Every malformed file is
reported as a DataError that names the file and what was wrong with it.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, TypeVar

import numpy as np

from stages.errors import DataError, environment_failure
from stages.progress import track

Item = TypeVar("Item")

# --- IDX (MNIST, Fashion-MNIST) -------------------------------------------------------------
GZIP_MAGIC = b"\x1f\x8b"
# IDX type codes -> numpy dtypes (multi-byte values are big-endian).
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# Deflate never packs more than about 1032 bytes into one: a gzipped file whose header announces
# more than this many times its size on disk cannot hold what it announces.
GZIP_MAX_RATIO = 1100
READ_CHUNK = 4 * 2**20
REPLACE = "replace it with a fresh copy of the dataset's file"


def idx_header(file: BinaryIO, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """The magic number (0, 0, type, ndim) and the big-endian sizes at the start of an IDX file."""
    magic = file.read(4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00" or magic[2] not in IDX_DTYPES:
        raise DataError(f"{name}: not an IDX file (bad magic number {magic.hex() or 'none'}); expected "
                        f"MNIST-format files such as train-images-idx3-ubyte.gz; {REPLACE}")
    sizes = file.read(4 * magic[3])
    if len(sizes) < 4 * magic[3]:
        raise DataError(f"{name}: IDX header is cut short; {REPLACE}")
    return struct.unpack(f">{magic[3]}I", sizes), np.dtype(IDX_DTYPES[magic[2]])


def read_announced(file: BinaryIO, shape: tuple[int, ...], dtype: np.dtype, capacity: int,
                   name: str) -> np.ndarray:
    """Exactly the values the header announced, streamed in chunks; refuse a file that holds
    fewer or more bytes (a truncated download, a decompression bomb) without reading the rest."""
    expected = math.prod(shape) * dtype.itemsize
    what = f"{name}: header announces shape {shape} ({expected:,} bytes) but the file"
    if expected > capacity:
        raise DataError(f"{what} cannot hold that many; the file is truncated or damaged; {REPLACE}")
    values = np.empty(expected, dtype=np.uint8)
    buffer, received = memoryview(values), 0
    while received < expected:
        count = file.readinto(buffer[received:received + READ_CHUNK])
        if not count:
            raise DataError(f"{what} holds only {received:,}; the file is truncated or damaged; {REPLACE}")
        received += count
    if file.read(1):
        raise DataError(f"{what} holds more data after them; the file is damaged or not this "
                        f"dataset's; {REPLACE}")
    return values.view(dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | Path) -> np.ndarray:
    """One IDX file, gzipped or not (whatever its name says): the header first, then exactly the
    values it announces, so a damaged or hostile file is refused before it fills the memory."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            compressed = file.read(2) == GZIP_MAGIC
        size = path.stat().st_size
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as file:
            shape, dtype = idx_header(file, str(path))
            header = 4 + 4 * len(shape)
            capacity = size * GZIP_MAX_RATIO if compressed else size - header
            return read_announced(file, shape, dtype, capacity, str(path))
    except (OSError, EOFError, zlib.error) as error:
        if environment_failure(error) is not None:
            raise
        raise DataError(f"{path}: cannot read it ({type(error).__name__}: {error}); the file is damaged "
                        f"or incomplete; {REPLACE}") from None


# --- Keras's .npz --------------------------------------------------------------------------------
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def read_npz(path: str | Path, keys: tuple[str, ...] = NPZ_KEYS) -> dict[str, np.ndarray]:
    """The named arrays of a Keras-style .npz archive (no pickles allowed)."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a .npz archive (a .npz file is a zip archive of .npy arrays, "
                        f"this file is not one); {REPLACE}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in keys if key not in archive.files]
            if missing:
                raise DataError(f"{path}: missing arrays {', '.join(missing)} (holds "
                                f"{', '.join(archive.files) or 'nothing'}); expected Keras's "
                                f"layout with {', '.join(keys)}")
            return {key: archive[key] for key in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        if environment_failure(error) is not None:
            raise
        problem = ("holds Python objects (pickles), which cnnlab never loads" if "pickle" in str(error)
                   else f"not a readable .npz archive ({type(error).__name__})")
        raise DataError(f"{path}: {problem}; {REPLACE}") from None


# --- CIFAR python batches ------------------------------------------------------------------------
def _latin1_bytes(text: Any, encoding: str = "latin1") -> bytes:
    """Python 3 pickles of protocol 2 store bytes as _codecs.encode(text, 'latin1'); nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only to rebuild latin-1 bytes")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only callables a CIFAR batch may name: numpy's array and dtype rebuilders."""
    sample = np.zeros(1, dtype=np.uint8)
    reconstruct = sample.__reduce__()[0]         # numpy(._)core.multiarray._reconstruct
    from_buffer = sample.__reduce_ex__(5)[0]     # numpy(._)core.numeric._frombuffer (protocol 5)
    scalar = np.float64(0).__reduce__()[0]       # numpy(._)core.multiarray.scalar
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1_bytes}
    # Files pickled by numpy 1.x name numpy.core, numpy 2.x numpy._core: accept both spellings.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = from_buffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers, bytes, numbers and numpy arrays; refuses every other global.

    A pickle runs code only through the callables it names (GLOBAL/STACK_GLOBAL/INST/EXT
    opcodes all go through `find_class`), so refusing any name outside the allow-list
    means a crafted file cannot run a command.
    """

    ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load '{module}.{name}'") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent reference")


def _plain_keys(value: Any) -> Any:
    """Python 2 pickles give bytes keys (b'data'); use str keys either way."""
    if isinstance(value, dict):
        return {key.decode("latin1") if isinstance(key, bytes) else key: item
                for key, item in value.items()}
    return value


def unpickle_batch(data: bytes, name: str) -> dict[str, Any]:
    """Decode one CIFAR batch (or meta) pickle with the restricted unpickler."""
    try:
        value = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as error:
        raise DataError(f"{name}: not a CIFAR batch: {error}; a genuine batch holds only plain data "
                        "and numpy arrays, so this file is damaged or crafted; replace it") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            struct.error, MemoryError) as error:
        raise DataError(f"{name}: not a readable CIFAR batch ({type(error).__name__}: {error}); "
                        "replace it with a fresh copy") from None
    value = _plain_keys(value)
    if not isinstance(value, dict):
        raise DataError(f"{name}: not a CIFAR batch (holds a {type(value).__name__}, "
                        "expected a dict); replace it with a fresh copy")
    return value


def cifar_images_labels(batch: dict[str, Any], label_key: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images as uint8 NHWC (N, 32, 32, 3) and its labels as int64."""
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        described = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{name}: 'data' must be a uint8 array of shape (N, 3072), got {described}; "
                        "replace the file with a fresh copy")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        labels = None
    if labels is None or labels.shape != (len(data),):
        raise DataError(f"{name}: '{label_key}' must hold one integer label per image ({len(data)}); "
                        "replace the file with a fresh copy")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major per plane.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def label_names(meta: dict[str, Any], key: str, name: str) -> tuple[str, ...]:
    names = meta.get(key)
    if not isinstance(names, list) or not all(isinstance(item, (bytes, str)) for item in names):
        raise DataError(f"{name}: '{key}' must be a list of class names; replace the file with a "
                        "fresh copy")
    return tuple(item.decode("utf-8") if isinstance(item, bytes) else item for item in names)


def read_members(
    location: Path, names: tuple[str, ...], decode: Callable[[bytes, str], Item],
) -> dict[str, Item]:
    """decode(content, shown_name) of each named file of a folder or of a tar archive.

    Archives are read member by member (found anywhere inside), never extracted, so a
    hostile archive cannot write outside its folder; each member is decoded as soon as
    it is read, so the archive's raw bytes are never all in memory at once.
    """
    if location.is_dir():
        missing = [name for name in names if not (location / name).is_file()]
        if missing:
            raise DataError(f"{location}: missing {', '.join(missing)}; expected the complete "
                            "extracted folder")
        return {name: decode((location / name).read_bytes(), str(location / name))
                for name in track(names, f"reading {location.name}")}
    found: dict[str, Item] = {}
    try:
        with tarfile.open(location, "r:*") as archive:
            for member in track(archive, f"reading {location.name}"):
                base = PurePosixPath(member.name).name
                if member.isfile() and base in names and base not in found:
                    found[base] = decode(archive.extractfile(member).read(), f"{location}:{member.name}")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        if environment_failure(error) is not None:
            raise
        raise DataError(f"{location}: not a readable tar archive (gzip, bzip2, xz or plain) of CIFAR "
                        f"python batches ({type(error).__name__}); {REPLACE}") from None
    missing = [name for name in names if name not in found]
    if missing:
        raise DataError(f"{location}: archive lacks {', '.join(missing)}; expected the official "
                        "CIFAR python archive")
    return found
