"""Shared fixtures: tiny real data, the cnnlab command in a subprocess, a temporary DVC project."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from stages.runtime import thread_limits

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent  # the venv's bin: cnnlab and dvc live here

# The test workers (pytest-xdist) share the cores: each worker's TensorFlow, in-process or in the
# commands it starts, gets its share of them, so that two workers' trainings never spin against
# each other (two default-project trainings side by side: median 17 s with one thread each, 27 s
# with all cores each; docs/performance.md).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.update(thread_limits(max(1, len(os.sched_getaffinity(0)) // WORKERS)))


def pytest_collection_modifyitems(items) -> None:
    """The longest test files first: `make test` hands whole files to its workers (pytest-xdist
    --dist loadfile) in this order, so a slow file never starts last while the other workers
    idle. Files are ranked by their slowest marker (slow, e2e, tf, none), in order otherwise."""
    def rank(item) -> int:
        return next((index for index, marker in enumerate(("slow", "e2e", "tf"))
                     if item.get_closest_marker(marker)), 3)

    file_rank: dict[Path, int] = {}
    for item in items:
        file_rank[item.path] = min(file_rank.get(item.path, 3), rank(item))
    items.sort(key=lambda item: file_rank[item.path])  # stable: a file stays together


def run_cnnlab(*args: str, cwd: Path | str, check: bool = False, columns: int | None = None,
               ) -> subprocess.CompletedProcess:
    """Run `cnnlab ARGS` in a fresh interpreter, as a user (or DVC) would (on a terminal
    `columns` wide, when given: tables wrap to the width)."""
    result = subprocess.run(
        [sys.executable, "-m", "stages", *args], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **({"COLUMNS": str(columns)} if columns else {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"cnnlab {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result



@pytest.fixture
def cnnlab_in_process(monkeypatch):
    """cnnlab_in_process(*args, cwd=..., columns=None): `cnnlab ARGS` run in `cwd` within this
    test's process, through the same typer app, sparing a fresh interpreter's imports (TensorFlow's
    alone takes 3 to 7 s on 2 cores). For what a command writes and prints when it succeeds: it
    must exit 0, and its result has .stdout. Exit codes, error lines and what a fresh process
    imports stay with run_cnnlab."""
    from typer.testing import CliRunner

    from stages.cli import app

    def run(*args: str, cwd: Path, columns: int | None = None):
        monkeypatch.chdir(cwd)
        result = CliRunner().invoke(app, list(args), catch_exceptions=False,
                                    env={"COLUMNS": str(columns)} if columns else None)
        assert result.exit_code == 0, result.output
        return result

    return run

def write_params(folder: Path, overrides: dict) -> Path:
    """Copy the project's params.yaml into `folder`, with nested `overrides` applied."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for group, values in overrides.items():
        if isinstance(values, dict):
            params.setdefault(group, {}).update(values)
        else:
            params[group] = values
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# Small enough for seconds of training, big enough to learn digits well; evaluate draws every
# figure, with fewer panels (matplotlib spends about 40 ms per panel).
FAST_PARAMS = {"train": {"epochs": 3, "batch_size": 32, "learning_rate": 0.005},
               "model": {"conv_filters": [8, 16], "dense_units": [16]},
               "evaluate": {"misclassified_images": 5, "feature_map_layers": 1}}


def copy_repository_pipeline(project: Path) -> None:
    """This repository's pipeline files: dvc.yaml, the ignore files and stages/ (the code each
    stage depends on, and the template pipeline that DVC must not see), data/raw."""
    project.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO_ROOT / name, project / name)
    shutil.copytree(REPO_ROOT / "stages", project / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    (project / "data" / "raw").mkdir(parents=True)  # prepare's dependency (dataset files go here)
    shutil.copy(REPO_ROOT / "data" / "raw" / "README.md", project / "data" / "raw" / "README.md")


def project_runner(project: Path):
    """run(*command, check=True) in `project` with the venv's dvc and cnnlab first on PATH."""
    env = {**os.environ, "PATH": f"{BIN_DIR}{os.pathsep}{os.environ['PATH']}",
           "TF_CPP_MIN_LOG_LEVEL": "3", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "cnnlab test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "cnnlab test", "GIT_COMMITTER_EMAIL": "test@example.com"}

    def run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    run.path = project  # type: ignore[attr-defined]
    return run


def new_dvc_project(project: Path):
    """A git + DVC repository at `project` holding this repository's pipeline and fast params,
    committed on main (DVCLive needs a first commit); returns its runner."""
    copy_repository_pipeline(project)
    write_params(project, FAST_PARAMS)
    run = project_runner(project)
    run("git", "init", "-q", "-b", "main")
    init_dvc_with_templates(run)
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "init")
    return run


@pytest.fixture
def dvc_project(tmp_path: Path):
    """A temporary git + DVC repository holding this repository's pipeline and fast params."""
    return new_dvc_project(tmp_path / "project")


def built_once(tmp_path_factory, worker_id: str, name: str, build) -> Path:
    """The folder `name`, made by `build(folder)` once for the whole test run: the first
    pytest-xdist worker to ask builds it while the others wait on a file lock. Nobody changes
    it afterwards: tests work on copies."""
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent  # the folder every worker's own temporary folder is in
    folder, built = shared / name / "project", shared / f"{name}.built"
    with FileLock(shared / f"{name}.lock"):
        if not built.exists():
            shutil.rmtree(folder.parent, ignore_errors=True)  # what a failed build left
            build(folder)
            built.touch()
    return folder


def copy_of_project(source: Path, destination: Path):
    """A copy of a git + DVC project (its DVC cache, run-cache and experiments included) and its runner."""
    return project_runner(Path(shutil.copytree(source, destination, symlinks=True)))


def reproduce_baseline(project: Path) -> None:
    run = new_dvc_project(project)
    first = run("dvc", "repro")
    assert stages_run(first.stdout) == ["prepare", "augment", "train", "evaluate", "report"]
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "baseline")


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory, worker_id):
    """A git + DVC project of this repository's pipeline after a first `dvc repro` (all five
    stages ran), committed on main as "baseline". Built once for the whole run; tests work on a
    copy (`reproduced_project`, `trained_digits`)."""
    return project_runner(built_once(tmp_path_factory, worker_id, "reproduced", reproduce_baseline))


@pytest.fixture
def reproduced_project(reproduced, tmp_path: Path):
    """A copy of the `reproduced` project, for one test."""
    return copy_of_project(reproduced.path, tmp_path / "project")


# The experiment users try first beside a baseline: another optimizer and schedule, batch
# normalization, online augmentation. Each -S is one param, as `dvc exp run` takes them.
EXPERIMENT = {"train.optimizer": "nadam", "train.schedule": "cosine", "train.patience": "5",
              "model.batch_norm": "true", "augment.mode": "online", "augment.rotation": "15"}


@pytest.fixture(scope="session")
def experimented(reproduced, tmp_path_factory, worker_id):
    """The `reproduced` project after `dvc exp run -n tuned` with every EXPERIMENT param set
    (stages from augment on ran): the experiment's results in the workspace, its params in
    params.yaml, the baseline committed. Run once for the whole test run; tests work on a copy
    (`experimented_project`) and check what concerns them: compare (optimizer), train (schedule,
    batch norm), augment (online mode)."""
    def run_experiment(project: Path) -> None:
        run = copy_of_project(reproduced.path, project)
        switches = [argument for key, value in EXPERIMENT.items() for argument in ("-S", f"{key}={value}")]
        ran = run("dvc", "exp", "run", "-n", "tuned", *switches)
        assert stages_run(ran.stdout) == ["augment", "train", "evaluate", "report"], ran.stdout

    return project_runner(built_once(tmp_path_factory, worker_id, "experimented", run_experiment))


@pytest.fixture
def experimented_project(experimented, tmp_path: Path):
    """A copy of the `experimented` project, for one test."""
    return copy_of_project(experimented.path, tmp_path / "project")


def stages_run(output: str) -> list[str]:
    """The stages `dvc repro` / `dvc exp run` ran, in order, from its output."""
    return re.findall(r"^Running stage '(\w+)'", output, flags=re.MULTILINE)


def init_dvc_with_templates(run) -> None:
    """`dvc init`, then this repository's custom plot templates (.dvc/plots/)."""
    run("dvc", "init", "-q")
    run("dvc", "config", "core.analytics", "false")
    shutil.copytree(REPO_ROOT / ".dvc" / "plots", run.path / ".dvc" / "plots", dirs_exist_ok=True)


def prepared_folder(folder: Path, params: dict) -> Path:
    """`folder` with params.yaml (these overrides) after prepare and augment: no TensorFlow involved."""
    write_params(folder, params)
    for command in ("prepare", "augment"):
        run_cnnlab(command, cwd=folder, check=True)
    return folder


# What the stages wrote in a reproduced project, without git, DVC and the pipeline's definition.
PIPELINE_FILES = (".git", ".dvc", ".dvcignore", ".gitignore", "dvc.yaml", "dvc.lock", "stages")


def working_copy(source: Path, destination: Path) -> Path:
    """A plain folder with `source`'s params.yaml and the stages' outputs (data/, models/,
    reports/): the project as `cnnlab` commands run without DVC see it."""
    return Path(shutil.copytree(source, destination, ignore=lambda folder, names: [
        name for name in names if Path(folder) == source and name in PIPELINE_FILES]))


@pytest.fixture(scope="session")
def trained_digits(reproduced, tmp_path_factory) -> Path:
    """A folder where prepare -> augment -> train -> evaluate (and report) ran on digits with
    FAST_PARAMS: the `reproduced` project's outputs, for the tests that need a real model and
    the evaluate stage's predictions (predict, export). Tests must not modify it."""
    return working_copy(reproduced.path, tmp_path_factory.mktemp("trained_digits") / "project")


def error_line(result: subprocess.CompletedProcess, exit_code: int = 2) -> str:
    """The one `cnnlab: error:` line a failed command printed (asserting there is exactly one,
    no traceback, and the exit code: 2 bad input, 1 environment failure)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == exit_code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error: "), result.stderr
    return lines[0].removeprefix("cnnlab: error: ")


def digests(*folders: Path) -> dict[str, str]:
    """sha256 of every file under `folders`: the artifacts a failed command must leave byte-identical."""
    import hashlib

    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in folders for path in sorted(Path(folder).rglob("*")) if path.is_file()}
