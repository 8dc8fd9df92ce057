"""Atomic, durable writes and small file helpers.

Every artifact is written to a temporary name in the same folder, flushed to the disk
(fsync) and then moved into place with `os.replace`, so a crash, a Ctrl-C or a power cut
never leaves a half-written file (or folder) that looks finished. Temporary names carry
the writer's process id: the next run removes those of processes that no longer exist.
A full disk or a permission problem while writing becomes one `EnvironmentFailure` line
that names the artifact; the previous version of it stays as it was.
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

from stages.errors import DataError, environment_failure


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to the disk."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _fsync_tree(folder: Path) -> None:
    for directory, _, names in os.walk(folder):
        for name in names:
            _fsync(Path(directory) / name)
        _fsync(Path(directory))


def _publish(temp: Path, target: Path, mode: int) -> None:
    """Give the temporary file or folder normal permissions (mkstemp makes them private), flush
    it to the disk, then move it into place (and flush the move)."""
    os.chmod(temp, mode & ~_current_umask())
    _fsync_tree(temp) if temp.is_dir() else _fsync(temp)
    os.replace(temp, target)
    _fsync(target.parent)


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(target: Path) -> None:
    """Delete the temporary files and folders that killed runs left beside `target`
    (`.<name>.<pid>.*` of a process that no longer exists)."""
    marker = f".{target.name}."
    with contextlib.suppress(OSError):
        for path in target.parent.iterdir():
            owner = path.name[len(marker):].split(".", 1)[0] if path.name.startswith(marker) else ""
            if owner.isdigit() and int(owner) != os.getpid() and not _process_alive(int(owner)):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


@contextlib.contextmanager
def environment_errors(target: Path, temp: Path | None = None) -> Iterator[None]:
    """A full disk or a refused permission while writing `target` (creating its temporary, or
    writing into the temporary `temp`) becomes one line naming `target`; the same refusal on
    another file (one the block reads) names that file."""
    try:
        yield
    except OSError as error:
        # shutil.copyfile names its source in filename and its destination in filename2.
        names = [str(name) for name in (error.filename, error.filename2) if name is not None]
        ours = temp is None or not names or any(name.startswith(str(temp)) for name in names)
        failure = environment_failure(error, target if ours else None)
        if failure is None:
            raise
        raise failure from error


def scratch_dir(target: Path, what: str = "scratch"):
    """A temporary folder beside `target` (same disk), removed at the end and by later runs
    if this one is killed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    return tempfile.TemporaryDirectory(prefix=f"{_temp_prefix(target)}{what}.", dir=target.parent)


def require_destination(target: Path, folder: bool) -> None:
    """Refuse, before anything is written, a destination that writing would destroy or cannot
    reach: a file where a folder is to be written (or a folder where a file is), or a path
    through a file (a typo such as `--output params.yaml` or `--output params.yaml/data`)."""
    wanted, other = ("folder", "file") if folder else ("file", "folder")
    if target.exists() and target.is_dir() != folder:
        raise DataError(f"{target}: is a {other}, where this command writes a {wanted}; pass another "
                        f"output path, or move the {other} away first (nothing was changed)")
    existing = next(parent for parent in target.parents if parent.exists())
    if not existing.is_dir():
        raise DataError(f"{target}: cannot be written, because {existing} is a file, not a folder; "
                        "pass another output path")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path that replaces `path` only if the block succeeds."""
    target = Path(path)
    require_destination(target, folder=False)
    with environment_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        # The full suffix (.weights.h5, .keras, .npy) so that writers that check it accept the name.
        handle, temp_name = tempfile.mkstemp(
            prefix=_temp_prefix(target), suffix=".tmp" + "".join(target.suffixes[-2:]), dir=target.parent
        )
        os.close(handle)
    temp = Path(temp_name)
    try:
        with environment_errors(target, temp):
            yield temp
            _publish(temp, target, 0o666)
    finally:
        temp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces the folder `path` if the block succeeds."""
    target = Path(path)
    require_destination(target, folder=True)
    with environment_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        temp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        with environment_errors(target, temp):
            yield temp
            # A folder cannot be os.replace'd over a non-empty one: move the old one aside first.
            old = None
            if target.exists():
                old = target.with_name(f"{_temp_prefix(target)}old")
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


def save_keras_model(model, target: str | os.PathLike) -> None:
    """`model.save` to `target`, atomically and made deterministic: the same weights give the
    same bytes, so that identical runs record identical hashes in dvc.lock. (Keras stamps the
    save time into metadata.json and a zip entry, and memory addresses into config.json as the
    ids of shared objects, which are renumbered in order of appearance.)"""
    target = Path(target)
    with atomic_path(target) as temp, tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        saved = Path(scratch) / "model.keras"
        model.save(saved)
        with zipfile.ZipFile(saved) as archive, zipfile.ZipFile(temp, "w") as published:
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
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        problem = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise DataError(f"{what} {path} is not valid JSON ({problem}); re-run dvc repro") from None


def save_array(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as temp:
        np.save(temp, array, allow_pickle=False)


def open_array(path: str | os.PathLike, dtype, shape: tuple[int, ...]) -> np.memmap:
    """A new .npy file of `shape`, memory-mapped for writing, its disk space reserved first: on a
    full disk this fails here with ENOSPC, where writing through the map would kill the process
    with SIGBUS."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    handle = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(handle).st_size
        if size:
            os.posix_fallocate(handle, 0, size)
    finally:
        os.close(handle)
    return array


def load_array(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """Load a .npy file, memory-mapped by default so large arrays are not read whole."""
    path = require_file(path, "array")
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def display_path(path: str | os.PathLike) -> str:
    """A path as printable UTF-8 text: bytes of a file name that are not UTF-8 are shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")
