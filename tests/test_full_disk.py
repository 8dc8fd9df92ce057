"""The machine says no: a full disk, a read-only folder, a file-size limit. Each command says
in one line what it was writing and what happened, exits with code 1 (not 2: the input is
fine), and leaves the previous artifacts byte-identical and no temporary files behind.

The disks are real: tiny tmpfs file systems mounted for the test (root only, skipped
otherwise); the file-size limit (RLIMIT_FSIZE) works for any user."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST_PARAMS, digests, error_line, run_cnnlab, write_params

ENVIRONMENT_EXIT_CODE = 1


@contextlib.contextmanager
def tiny_disk(folder: Path, size: str):
    """A tmpfs of `size` mounted on `folder` for the block."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny file system needs root")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(disk: Path, leave: int = 0) -> None:
    """Fill the disk up, leaving about `leave` bytes free."""
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize - leave
    with open(disk / "filler", "wb") as file:
        with contextlib.suppress(OSError):
            while free > 0:
                free -= file.write(bytes(min(free, 2**20)))


def project_files(project: Path) -> dict[str, str]:
    return digests(*(project / name for name in ("data", "models", "reports") if (project / name).exists()))


def temporaries(project: Path) -> list[str]:
    return sorted(str(path.relative_to(project)) for path in project.rglob(".*") if ".tmp" in path.name
                  or ".scratch" in path.name or path.name.endswith(".old"))


@pytest.fixture(scope="module")
def prepared_digits(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prepared_digits")
    write_params(folder, FAST_PARAMS)
    run_cnnlab("prepare", cwd=folder, check=True)
    return folder


@pytest.mark.parametrize("leave", [0, 64 * 1024])
def test_prepare_on_a_full_disk_says_so_and_keeps_the_previous_arrays(prepared_digits, tmp_path, leave):
    """With a little room left, the arrays' memory maps would once have died by SIGBUS."""
    with tiny_disk(tmp_path / "disk", "2m") as disk:
        project = Path(shutil.copytree(prepared_digits, disk / "project"))
        before = project_files(project)
        fill(disk, leave)

        line = error_line(run_cnnlab("prepare", cwd=project), ENVIRONMENT_EXIT_CODE)

        assert line == ("cannot write data/prepared: no space left on the disk; free some space and run the "
                        "same command again (any previous data/prepared is unchanged)")
        assert project_files(project) == before and temporaries(project) == []


def test_a_read_only_project_says_so(prepared_digits, tmp_path):
    with tiny_disk(tmp_path / "disk", "2m") as disk:
        project = Path(shutil.copytree(prepared_digits, disk / "project"))
        before = project_files(project)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)

        line = error_line(run_cnnlab("prepare", cwd=project), ENVIRONMENT_EXIT_CODE)

        assert line == ("cannot write data/prepared: read-only file system; run from a writable copy of the "
                        "project (any previous data/prepared is unchanged)")
        assert project_files(project) == before


def test_a_file_size_limit_is_an_environment_failure(prepared_digits, tmp_path):
    """RLIMIT_FSIZE: the kernel refuses writes past 64 KiB (EFBIG), for any user."""
    project = Path(shutil.copytree(prepared_digits, tmp_path / "project"))
    before = project_files(project)

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    result = subprocess.run([sys.executable, "-m", "stages", "prepare"], cwd=project, capture_output=True,
                            text=True, preexec_fn=limit_file_size)

    assert error_line(result, ENVIRONMENT_EXIT_CODE) == (
        "cannot write data/prepared: file too large for this file system or limit; write to another disk "
        "(any previous data/prepared is unchanged)")
    assert project_files(project) == before and temporaries(project) == []


@pytest.mark.tf
def test_train_evaluate_and_predict_on_a_full_disk_keep_what_they_wrote_before(trained_digits, tmp_path):
    with tiny_disk(tmp_path / "disk", "8m") as disk:
        project = Path(shutil.copytree(trained_digits, disk / "project"))
        before = project_files(project)
        fill(disk)
        expected = ("cannot write {}: no space left on the disk; free some space and run the same command "
                    "again (any previous {} is unchanged)")
        for command, written in ((["train"], "models/model.keras"), (["evaluate"], "reports/evaluation"),
                                 (["predict", "data/prepared/samples.png", "--output", "predictions.csv"],
                                  "predictions.csv")):
            line = error_line(run_cnnlab(*command, cwd=project), ENVIRONMENT_EXIT_CODE)
            assert line == expected.format(written, written), command
            assert project_files(project) == before and temporaries(project) == []
