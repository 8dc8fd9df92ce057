"""Atomic writes: a failure mid-write never leaves a half-written artifact behind."""

from __future__ import annotations

import numpy as np
import pytest

from stages.errors import DataError
from stages.io import atomic_dir, atomic_path, load_array, read_json, save_array, write_json


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.9})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temp:
            temp.write_text("{half")
            raise RuntimeError("crash mid-write")
    assert read_json(target) == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_failed_directory_write_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "prepared"
    with atomic_dir(target) as folder:
        (folder / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as folder:
            (folder / "new.txt").write_text("new")
            raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]


def test_successful_directory_write_replaces_the_whole_folder(tmp_path):
    target = tmp_path / "prepared"
    with atomic_dir(target) as folder:
        (folder / "stale.txt").write_text("x")
    with atomic_dir(target) as folder:
        (folder / "fresh.txt").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["fresh.txt"]


def test_arrays_round_trip_memory_mapped_without_pickle(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    save_array(tmp_path / "x.npy", array)
    loaded = load_array(tmp_path / "x.npy")
    assert isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, array)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_array(tmp_path / "objects.npy", mmap=False)


def test_missing_artifacts_say_which_stage_to_run(tmp_path):
    with pytest.raises(DataError, match=r"prepared metadata not found: .*meta.json; run the stage"):
        read_json(tmp_path / "meta.json", "prepared metadata")
