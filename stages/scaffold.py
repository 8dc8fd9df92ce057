"""init: create a new cnnlab project (git + DVC, the pipeline, a commented params.yaml).

The new project runs the same pipeline as this repository: its dvc.yaml is shipped as
package data (stages/project/dvc.yaml, kept equal to the repository's by a test), and its
params.yaml is written from the params declarations in stages/config.py, one comment per
key, so it can never list a key cnnlab does not accept.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from string import Template


from stages.config import PIN_FILE, describe_params, parse_params, read_yaml, yaml_value
from stages.errors import CnnlabError, DataError
from stages.io import atomic_dir

TEMPLATES = resources.files("stages") / "project"
# Copied as they are (template name -> path in the new project). dvc.yaml is the repository's
# pipeline with requirements.txt (the cnnlab pin) in place of the stages/ modules as the code
# each stage depends on; data/raw/README.md is the repository's own. tests/test_init.py keeps
# them in step.
COPIED = {"dvc.yaml": "dvc.yaml", "gitignore": ".gitignore", "dvcignore": ".dvcignore",
          "data/raw/README.md": "data/raw/README.md"}
# DVC's custom plot templates (template name -> file in stages/project/), copied into .dvc/plots/
# after `dvc init`; the repository's own .dvc/plots/ holds the same files (tested).
PLOT_TEMPLATES = {"learning_rate": "learning_rate.json"}
# The branch `cnnlab compare` compares with by default.
MAIN_BRANCH = "main"


def params_text(overrides: dict[str, object]) -> str:
    """params.yaml with every declared key at its default (or override), each with a comment."""
    rows = describe_params()
    unknown = set(overrides) - {key for key, *_ in rows}
    if unknown:
        raise CnnlabError(f"this cnnlab does not declare {', '.join(sorted(unknown))}; upgrade cnnlab")
    lines = [
        "# cnnlab parameters: every knob of the pipeline, written by `cnnlab init`.",
        "# `cnnlab check` validates this file. Try a change without editing it:",
        "#   dvc exp run -S train.epochs=10",
    ]
    previous: list[str] | None = None
    for key, default, allowed, help_text in rows:
        *groups, name = key.split(".")
        if groups != previous:  # open the groups this key is in (a blank line before each top one)
            shared = 0 if previous is None else len(os.path.commonprefix([groups, previous]))
            if shared == 0:
                lines.append("")
            lines += [f"{'  ' * depth}{groups[depth]}:" for depth in range(shared, len(groups))]
            previous = groups
        indent = "  " * len(groups)
        value = yaml_value(overrides[key]) if key in overrides else default
        lines += [f"{indent}# {help_text}; {allowed}", f"{indent}{name}: {value}"]
    return "\n".join(lines) + "\n"


def pin_text() -> str:
    """requirements.txt: the installed cnnlab, which every stage depends on (dvc.yaml)."""
    from importlib.metadata import version

    return ("# The cnnlab that runs this pipeline. Every stage depends on this file (dvc.yaml):\n"
            "# after upgrading cnnlab, pin the new version here and `dvc repro` re-runs the stages.\n"
            f"cnnlab=={version('cnnlab')}\n")


def data_source(data_dir: str | Path | None) -> tuple[dict[str, object], str]:
    """The params overrides and the README line for the project's images."""
    if data_dir is None:
        return {}, ("It starts on scikit-learn's bundled 8x8 digits. To train on your own images, put "
                    "them in `data/raw/<name>/<class>/` and set `prepare.dataset: folder` and "
                    "`prepare.data_dir: data/raw/<name>` in params.yaml.")
    data_dir = Path(data_dir).resolve()  # absolute: the project may be run from anywhere
    if not data_dir.is_dir():
        raise DataError(f"--data {data_dir}: no such folder; pass a folder with one sub-folder "
                        "of images per class")
    return ({"prepare.dataset": "folder", "prepare.data_dir": str(data_dir)}, (
        f"Images come from `{data_dir}` (one sub-folder per class; the folder names are the class "
        "names). That folder is outside the project, so `dvc repro` re-runs `prepare` when params "
        "change but not when those images change (`dvc repro --force prepare` then). To version the "
        "images with the project, move them to `data/raw/<name>`, run `dvc add data/raw/<name>` and "
        "set `prepare.data_dir: data/raw/<name>`."))


def run_git(folder: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    if shutil.which("git") is None:
        raise CnnlabError("git not found on PATH; install git, then run cnnlab init again")
    result = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True)
    if check and result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise CnnlabError(f"git {args[-1] if args[0] == '-c' else args[0]} failed ({reason}); "
                          "the project was not created: fix git, then run cnnlab init again")
    return result


def commit_all(folder: Path) -> None:
    """The first commit. DVCLive (in `train`) and `dvc exp run` both fail in a repo without one."""
    run_git(folder, "add", "--all")
    message = ["commit", "--quiet", "--message", "New cnnlab project (cnnlab init)"]
    if run_git(folder, *message, check=False).returncode != 0:
        # Usually git has no user.name/email here: sign this one commit as cnnlab (amend it at will).
        run_git(folder, "-c", "user.name=cnnlab init", "-c", "user.email=cnnlab@localhost", *message)


def init_dvc(folder: Path) -> None:
    """`dvc init` through DVC's Python API (no dependence on PATH), with this project's settings."""
    from dvc.repo import Repo

    dvc_logger = logging.getLogger("dvc")
    level = dvc_logger.level
    dvc_logger.setLevel(logging.WARNING)  # keep DVC's "Initialized DVC repository." off our stdout
    try:
        repo = Repo.init(str(folder))
    finally:
        dvc_logger.setLevel(level)
    with repo.config.edit() as config:
        config["core"]["autostage"] = True     # dvc stages the .gitignore files it writes
        config["core"]["analytics"] = False
    repo.close()


def init(project_dir: str | Path, data_dir: str | Path | None = None) -> dict:
    """Create the project in `project_dir` (new or empty); return what was written."""
    project_dir = Path(project_dir).resolve()
    if project_dir.exists() and (not project_dir.is_dir() or any(project_dir.iterdir())):
        raise CnnlabError(f"{project_dir} already exists and is not an empty folder; choose a new one")
    overrides, source = data_source(data_dir)
    params = params_text(overrides)
    parse_params(read_yaml(params), "params.yaml")  # a project that fails `cnnlab check` is no project
    readme = Template((TEMPLATES / "README.md").read_text(encoding="utf-8"))

    # Built in a temporary folder and moved into place: a failure leaves no half-made project.
    with atomic_dir(project_dir) as folder:
        for template, target in COPIED.items():
            (folder / target).parent.mkdir(parents=True, exist_ok=True)
            (folder / target).write_bytes(TEMPLATES.joinpath(*template.split("/")).read_bytes())
        (folder / "params.yaml").write_text(params, encoding="utf-8")
        (folder / PIN_FILE).write_text(pin_text(), encoding="utf-8")
        (folder / "README.md").write_text(
            readme.substitute(name=project_dir.name, source=source), encoding="utf-8")
        run_git(folder, "init", "--quiet", f"--initial-branch={MAIN_BRANCH}")
        init_dvc(folder)
        for name, template in PLOT_TEMPLATES.items():
            (folder / ".dvc" / "plots").mkdir(exist_ok=True)
            (folder / ".dvc" / "plots" / f"{name}.json").write_bytes(TEMPLATES.joinpath(template).read_bytes())
        commit_all(folder)
    return {"project_dir": str(project_dir), **overrides}
