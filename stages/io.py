"""Atomic writes and small file helpers.

Every artifact is written to a temporary name in the same folder and then moved into
place with `os.replace`, so a crash or Ctrl-C never leaves a half-written file (or
folder) that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stages.errors import DataError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(temp: Path, target: Path, mode: int) -> None:
    """Give the temporary file or folder normal permissions (mkstemp makes them private), then move it."""
    os.chmod(temp, mode & ~_current_umask())
    os.replace(temp, target)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path that replaces `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent
    )
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        _publish(temp, target, 0o666)
    finally:
        temp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces the folder `path` if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield temp
        # A folder cannot be os.replace'd over a non-empty one: move the old one aside first.
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        _publish(temp, target, 0o777)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def rounded(value: float, digits: int = 4) -> float:
    """`value` to `digits` significant digits: what a published metric keeps, so that float
    noise between machines (the 8th decimal of a loss) never changes a committed file."""
    return float(f"{value:.{digits}g}")


def publish_keras_archive(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy a .keras archive to `target` atomically, made deterministic: the same weights give
    the same bytes, so that identical runs record identical hashes in dvc.lock. (Keras stamps
    the save time into metadata.json and a zip entry, and memory addresses into config.json as
    the ids of shared objects, which are renumbered in order of appearance.)"""
    with atomic_path(target) as temp, zipfile.ZipFile(source) as archive, \
            zipfile.ZipFile(temp, "w") as published:
        for entry in archive.infolist():
            data = archive.read(entry)
            if entry.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata).encode()
            elif entry.filename == "config.json":
                data = json.dumps(_renumber_shared_objects(json.loads(data), {})).encode()
            fixed = zipfile.ZipInfo(entry.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type, fixed.external_attr = entry.compress_type, 0o644 << 16
            published.writestr(fixed, data)


def _renumber_shared_objects(config: Any, numbers: dict) -> Any:
    if isinstance(config, list):
        return [_renumber_shared_objects(item, numbers) for item in config]
    if not isinstance(config, dict):
        return config
    return {key: numbers.setdefault(value, len(numbers) + 1) if key == "shared_object_id"
            else _renumber_shared_objects(value, numbers) for key, value in config.items()}


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """Return `path` if it is a file; otherwise say which artifact is missing and how to make it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}; run the stage that writes it first (dvc repro)")
    return path


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    path = require_file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{what} {path} is not valid JSON ({error}); re-run dvc repro") from None


def save_array(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as temp:
        np.save(temp, array, allow_pickle=False)


def load_array(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """Load a .npy file, memory-mapped by default so large arrays are not read whole."""
    path = require_file(path, "array")
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
