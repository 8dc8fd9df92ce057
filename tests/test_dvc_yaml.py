"""dvc.yaml declares what DVC needs to be right: the code each stage runs, outputs the run-cache
can restore, and a template for `cnnlab init` projects that is the same pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from stages.config import read_yaml
from stages.scaffold import TEMPLATES

PIPELINE = read_yaml((REPO_ROOT / "dvc.yaml").read_text())
STAGES = PIPELINE["stages"]
# The module each pipeline stage runs (cli.py only parses options and calls it).
ENTRY_MODULES = {"prepare": "prepare", "augment": "augment", "train": "train", "evaluate": "evaluate",
                 "report": "report"}


def local_imports(module: str) -> set[str]:
    """The stages.* modules that `module` imports, at the top or inside functions."""
    tree = ast.parse((REPO_ROOT / "stages" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "stages":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("stages.")}
    return {name for name in found if (REPO_ROOT / "stages" / f"{name}.py").is_file()}


def code_closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += local_imports(name)
    return {f"stages/{name}.py" for name in seen}


def deps(stage: dict) -> list[str]:
    return [dep if isinstance(dep, str) else next(iter(dep)) for dep in stage.get("deps", [])]


def outs(stage: dict, kind: str) -> dict[str, dict]:
    return {(entry if isinstance(entry, str) else next(iter(entry))):
            ({} if isinstance(entry, str) else next(iter(entry.values())) or {}) for entry in stage.get(kind, [])}


@pytest.mark.parametrize("name", list(STAGES))
def test_each_stage_depends_on_exactly_the_code_it_runs(name):
    """A code edit marks the stages that run it changed, and only those (DVC hashes each file)."""
    declared = {dep for dep in deps(STAGES[name]) if dep.startswith("stages/")}
    assert declared == code_closure(ENTRY_MODULES[name])


@pytest.mark.parametrize("name", list(STAGES))
def test_outputs_keep_the_run_cache_on(name):
    """DVC turns the run-cache off for a stage with a `persist` output, or a `cache: false` output
    that is neither a metric nor a plot."""
    stage = STAGES[name]
    for kind in ("outs", "metrics", "plots"):
        assert not any(props.get("persist") for props in outs(stage, kind).values()), (name, kind)
    if name != "report":  # report.md is committed and no plot: report (seconds, no TensorFlow) always runs
        assert all(props.get("cache", True) for props in outs(stage, "outs").values()), name


def test_no_output_is_a_directory_of_resume_state_and_dvclive_metrics_are_no_dvc_metrics():
    every_out = [path for stage in STAGES.values() for kind in ("outs", "metrics", "plots")
                 for path in outs(stage, kind)]
    assert not any("checkpoint" in path for path in every_out)
    metrics = [path for stage in STAGES.values() for path in outs(stage, "metrics")]
    assert metrics == ["reports/metrics.json"]  # DVCLive's train.loss would collide with the param


def test_the_template_is_this_pipeline_with_the_cnnlab_pin_as_its_code():
    template = read_yaml(TEMPLATES.joinpath("dvc.yaml").read_text())
    assert template["plots"] == PIPELINE["plots"]
    assert list(template["stages"]) == list(STAGES)
    for name, stage in STAGES.items():
        copy = template["stages"][name]
        assert {key: value for key, value in copy.items() if key != "deps"} == \
            {key: value for key, value in stage.items() if key != "deps"}, name
        assert set(copy["deps"]) == {dep for dep in stage["deps"] if not dep.startswith("stages/")} | {"requirements.txt"}


def test_dvc_ignores_the_template_and_the_resume_state():
    ignored = (REPO_ROOT / ".dvcignore").read_text().splitlines()
    assert "/stages/project/" in ignored and "/.cnnlab/" in ignored
    assert "/.cnnlab/" in (REPO_ROOT / ".gitignore").read_text().splitlines()


def test_every_example_is_a_complete_params_file():
    """`cp examples/X.yaml params.yaml && dvc repro` needs every key dvc.yaml lists (DVC refuses
    otherwise, at the stage that needs it: after training for evaluate's keys)."""
    from stages.config import check_dvc_params_present

    for example in sorted((REPO_ROOT / "examples").glob("*.yaml")):
        check_dvc_params_present(read_yaml(example.read_text()), PIPELINE, str(example))
    assert Path(REPO_ROOT / "examples").is_dir()


def test_custom_plot_templates_ship_to_new_projects_unchanged():
    from stages.scaffold import PLOT_TEMPLATES

    for name, template in PLOT_TEMPLATES.items():
        assert TEMPLATES.joinpath(template).read_bytes() == (REPO_ROOT / ".dvc" / "plots" / f"{name}.json").read_bytes()


def test_the_committed_dvc_lock_was_made_with_this_code_and_these_params():
    """A fresh clone's `make repro` re-runs no stage because of code or params: every stages/
    file and every param that dvc.lock records has the hash and value committed beside it
    (after a code or params edit: `make repro`, then commit dvc.lock)."""
    import hashlib

    lock = read_yaml((REPO_ROOT / "dvc.lock").read_text())["stages"]
    params = read_yaml((REPO_ROOT / "params.yaml").read_text())
    stale = []
    for stage, record in lock.items():
        for dependency in record.get("deps", []):
            path = REPO_ROOT / dependency["path"]
            if dependency["path"].startswith("stages/") and path.is_file():
                if hashlib.md5(path.read_bytes()).hexdigest() != dependency["md5"]:
                    stale.append(f"{stage}: {dependency['path']}")
        for key, value in record.get("params", {}).get("params.yaml", {}).items():
            current = params
            for part in key.split("."):
                current = current[part]
            if current != value:
                stale.append(f"{stage}: params.yaml {key}")
    assert {stage for stage in lock} == set(STAGES)
    assert not stale, f"dvc.lock is out of date (run `make repro` and commit it): {stale}"
