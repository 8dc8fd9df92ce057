"""Atomic writes: a failure mid-write never leaves a half-written artifact behind."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import numpy as np
import pytest

from stages.errors import DataError, EnvironmentFailure
from stages.io import (
    atomic_dir, atomic_path, load_array, open_array, read_json, save_array, write_json, write_text,
)


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


def test_temporaries_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    gone, alive = int(dead.stdout), os.getppid()  # a finished process; pytest's parent, still running
    stale = [tmp_path / f".prepared.{gone}.x1.tmp", tmp_path / f".prepared.{gone}.scratch.x2",
             tmp_path / f".prepared.{gone}.old"]
    for folder in stale:
        (folder / "train_x.npy").parent.mkdir(parents=True)
        (folder / "train_x.npy").write_bytes(b"half")
    (tmp_path / f".model.keras.{gone}.x3.tmp.keras").write_bytes(b"half")
    busy = tmp_path / f".prepared.{alive}.x4.tmp"
    busy.mkdir()

    with atomic_dir(tmp_path / "prepared") as folder:
        (folder / "meta.json").write_text("{}")
    write_text(tmp_path / "model.keras", "done")

    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([busy.name, "model.keras", "prepared"])


def test_a_memory_mapped_array_reserves_its_disk_space(tmp_path):
    array = open_array(tmp_path / "x.npy", np.float32, (100, 8, 8, 1))
    array[:] = 1.0
    array.flush()
    assert os.stat(tmp_path / "x.npy").st_blocks * 512 >= 100 * 64 * 4
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.ones((100, 8, 8, 1), np.float32))


def test_environment_failures_name_the_artifact_being_written(tmp_path):
    with pytest.raises(EnvironmentFailure, match=r"^cannot write .*metrics.json: no space left on the disk; "):
        with atomic_path(tmp_path / "metrics.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError):  # not the machine refusing a write: it keeps its traceback
        with atomic_path(tmp_path / "metrics.json"):
            raise FileNotFoundError(errno.ENOENT, "gone")


@pytest.mark.parametrize("folder", [True, False])
def test_a_destination_of_the_other_kind_or_through_a_file_is_refused_untouched(tmp_path, folder):
    """`--output params.yaml` must not replace the user's file with a folder (nor a folder with a
    file), and a path through a file is one line, not a traceback."""
    writer = atomic_dir if folder else atomic_path
    taken = tmp_path / "taken"
    if folder:
        taken.write_text("the user's file\n")
    else:
        (taken / "inside").mkdir(parents=True)
    with pytest.raises(DataError, match=f"is a {'file' if folder else 'folder'}, where this command writes a"):
        with writer(taken):
            raise AssertionError("nothing may be written")
    assert (taken.read_text() == "the user's file\n") if folder else (list(taken.iterdir()) == [taken / "inside"])

    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(DataError, match="because .*notes.txt is a file, not a folder"):
        with writer(tmp_path / "notes.txt" / "out"):
            raise AssertionError("nothing may be written")
