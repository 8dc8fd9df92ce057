"""cnnlab init: a new project that runs the same pipeline on the user's own images."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import BIN_DIR, FAST_PARAMS, REPO_ROOT, run_cnnlab
from stages import config
from stages.config import Params, describe_params, parse_params
from stages.errors import CnnlabError
from stages.scaffold import COPIED, TEMPLATES, params_text

GIT_ENV = {"GIT_AUTHOR_NAME": "cnnlab test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "cnnlab test", "GIT_COMMITTER_EMAIL": "test@example.com"}
FOLDER_SOURCE = "folder" in config.DATASETS


def run(*command: str, cwd: Path) -> subprocess.CompletedProcess:
    """git or dvc in the new project, with the venv's dvc and cnnlab on PATH."""
    env = {**os.environ, **GIT_ENV, "PATH": f"{BIN_DIR}{os.pathsep}{os.environ['PATH']}",
           "TF_CPP_MIN_LOG_LEVEL": "3", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def use_fast_params(project: Path, extra: dict | None = None) -> None:
    """Seconds of training instead of minutes: the generated params with FAST_PARAMS applied."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    for group, values in {**FAST_PARAMS, **(extra or {})}.items():
        params[group].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def write_image_tree(root: Path, classes: tuple[str, ...] = ("bright", "dark", "striped"),
                     per_class: int = 16) -> list[str]:
    """Visibly different classes (bright, dark, striped) of small RGB PNGs, of mixed sizes, one
    folder per class."""
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            height, width = rng.integers(12, 24, size=2)
            noise = rng.integers(0, 40, (height, width, 3))
            pixels = {"bright": 200 + noise, "dark": noise,
                      "striped": np.where((np.arange(width) // 2 % 2)[None, :, None], 220, 20) + noise}[name]
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name / f"{index}.png")
    return list(classes)


# --- one source of truth -------------------------------------------------------------------------
def test_packaged_raw_data_readme_is_the_repository_file():
    """New projects get stages/project/data/raw/README.md: byte-for-byte this repo's."""
    name = "data/raw/README.md"
    assert COPIED[name] == name
    assert TEMPLATES.joinpath(*name.split("/")).read_bytes() == (REPO_ROOT / name).read_bytes(), (
        f"{name} changed: copy it to stages/project/{name}")


def test_generated_params_declare_every_key_with_its_comment():
    text = params_text({})
    assert parse_params(yaml.safe_load(text)) == Params()  # every default, nothing else
    lines, index = text.splitlines(), 0
    for key, _, allowed, help_text in describe_params():  # in declaration order
        name = key.rpartition(".")[2]
        index = next(i for i in range(index, len(lines)) if lines[i].strip().startswith(f"{name}:"))
        assert lines[index - 1].strip() == f"# {help_text}; {allowed}", key


def test_generated_params_apply_overrides_and_refuse_unknown_keys():
    text = params_text({"train.epochs": 7, "report.title": 'my "own" report: v2'})
    parsed = parse_params(yaml.safe_load(text))
    assert parsed.train.epochs == 7 and parsed.report.title == 'my "own" report: v2'
    with pytest.raises(CnnlabError, match="prepare.no_such_key"):
        params_text({"prepare.no_such_key": 1})


# --- the command --------------------------------------------------------------------------------
def test_init_creates_a_committed_git_and_dvc_project_that_passes_check(tmp_path):
    result = run_cnnlab("init", "demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    project = tmp_path / "demo"

    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "README.md", ".dvc/config",
                 "data/raw/README.md", "requirements.txt"):
        assert (project / name).is_file(), name
    assert (project / "dvc.yaml").read_bytes() == TEMPLATES.joinpath("dvc.yaml").read_bytes()
    assert "# demo" in (project / "README.md").read_text()
    assert run("git", "status", "--porcelain", cwd=project).stdout == ""  # everything committed
    assert run("git", "log", "--format=%s", cwd=project).stdout.strip() == "New cnnlab project (cnnlab init)"
    assert run("git", "branch", "--show-current", cwd=project).stdout.strip() == "main"  # compare's default
    assert "prepare" in run("dvc", "stage", "list", cwd=project).stdout
    assert run_cnnlab("check", cwd=project).returncode == 0

    # The resume state is ignored by git and DVC, as in this repository.
    (project / ".cnnlab" / "checkpoints").mkdir(parents=True)
    (project / ".cnnlab" / "checkpoints" / "state.json").write_text("{}")
    assert run("git", "status", "--porcelain", cwd=project).stdout == ""
    assert "/.cnnlab/" in (project / ".dvcignore").read_text()

    # requirements.txt pins the installed cnnlab; a stage refuses to run under another version.
    from importlib.metadata import version
    assert f"cnnlab=={version('cnnlab')}" in (project / "requirements.txt").read_text()
    (project / "requirements.txt").write_text("cnnlab==0.0.1\n")
    refused = run_cnnlab("check", cwd=project)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"cnnlab: error: requirements.txt: pins cnnlab==0.0.1 but cnnlab {version('cnnlab')} is installed; "
        "install the pinned one (pip install -r requirements.txt) or pin "
        f"cnnlab=={version('cnnlab')} there to re-run the pipeline with it (dvc repro)")


def test_init_refuses_a_non_empty_folder_and_a_missing_data_folder(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("mine")
    result = run_cnnlab("init", "taken", cwd=tmp_path)
    assert result.returncode == 2 and "not an empty folder" in result.stderr
    assert [path.name for path in (tmp_path / "taken").iterdir()] == ["file.txt"]

    result = run_cnnlab("init", "new", "--data", "no_such_images", cwd=tmp_path)
    assert result.returncode == 2 and "no such folder" in result.stderr
    assert not (tmp_path / "new").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["taken"]  # no temporary leftovers


@pytest.mark.e2e
@pytest.mark.tf
def test_init_then_dvc_repro_on_the_bundled_digits(tmp_path):
    assert run_cnnlab("init", "digits_project", cwd=tmp_path).returncode == 0
    project = tmp_path / "digits_project"
    use_fast_params(project)

    run("dvc", "repro", cwd=project)

    assert (project / "models" / "model.keras").is_file()
    assert "accuracy" in (project / "reports" / "metrics.json").read_text()
    assert "up to date" in run("dvc", "status", cwd=project).stdout
    run("git", "add", "-A", cwd=project)  # the project README's own advice
    run("git", "commit", "-q", "-m", "first model", cwd=project)
    assert run("git", "status", "--porcelain", "--ignored", cwd=project).stdout.count(".cnnlab") == 1  # ignored
    assert run("dvc", "checkout", cwd=project).stderr == ""
    # compare works on the first try: its default revision is the branch init created.
    compared = run_cnnlab("compare", cwd=project)
    assert compared.returncode == 0, compared.stderr
    assert "Verdict: no change" in compared.stdout and "No params changed." in compared.stdout

    # Pinning another cnnlab version marks every stage changed.
    (project / "requirements.txt").write_text("cnnlab==9.9.9\n")
    changed = run("dvc", "status", cwd=project).stdout
    assert all(f"{stage}:" in changed for stage in ("prepare", "augment", "train", "evaluate", "report"))


@pytest.mark.e2e
@pytest.mark.tf
@pytest.mark.skipif(not FOLDER_SOURCE, reason="needs the folder dataset source (prepare.dataset: folder)")
def test_init_with_own_images_then_dvc_repro_and_predict(tmp_path):
    """Two classes, the smallest folder a user brings: the task is binary (one sigmoid unit)."""
    classes = write_image_tree(tmp_path / "my_images", ("bright", "dark"))
    result = run_cnnlab("init", "shapes", "--data", str(tmp_path / "my_images"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    project = tmp_path / "shapes"
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["prepare"]["dataset"] == "folder"
    assert Path(params["prepare"]["data_dir"]) == (tmp_path / "my_images").resolve()
    use_fast_params(project, {"prepare": {"image_size": [12, 12]}})

    run("dvc", "repro", cwd=project)

    meta = yaml.safe_load((project / "data" / "prepared" / "meta.json").read_text())
    assert meta["class_names"] == classes
    assert meta["task"] == "binary" and meta["num_classes"] == 2
    metrics = yaml.safe_load((project / "reports" / "metrics.json").read_text())
    assert metrics["test_images"] == meta["splits"]["test"] > 0
    rows = pd.read_csv(project / "reports" / "evaluation" / "confusion.csv")
    assert set(rows["actual"]) == set(classes)
    output = project / "predictions.csv"
    predicted = run_cnnlab("predict", str(tmp_path / "my_images" / "dark"), "--output", str(output),
                           cwd=project)
    assert predicted.returncode == 0, predicted.stderr
    assert len(pd.read_csv(output)) == 16
