"""The DVC commands a user runs every day, end to end: real git, real dvc, temporary repositories.

One project is trained once (conftest's `reproduced`: `dvc repro` on digits with fast params,
committed on main); each test works on its own copy of it, so the tests do not depend on each other.
"""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from conftest import REPO_ROOT, stages_run

pytestmark = [pytest.mark.e2e, pytest.mark.tf, pytest.mark.slow]
QUIET = ("WARNING", "ERROR", "failed", "Traceback")


def assert_quiet(result) -> None:
    """Exit 0 and not one warning or error: what a user expects from a daily command."""
    text = result.stdout + result.stderr
    assert result.returncode == 0 and not any(word in text for word in QUIET), text


@pytest.fixture
def project(reproduced_project):
    """A copy of conftest's `reproduced` project (trained once, committed on main), for one test."""
    return reproduced_project


def test_after_repro_status_checkout_commit_plots_and_metrics_are_clean(project):
    assert project("dvc", "status").stdout.strip() == "Data and pipelines are up to date."
    assert project("git", "status", "--porcelain").stdout == ""  # every output committed or ignored
    # The template pipeline in stages/project/ is not a second pipeline of this repository.
    assert sorted(re.findall(r"^(\S+)", project("dvc", "stage", "list").stdout, flags=re.MULTILINE)) == \
        ["augment", "evaluate", "prepare", "report", "train"]
    for command in (("dvc", "checkout"), ("dvc", "commit", "--force"), ("dvc", "metrics", "diff", "HEAD"),
                    ("dvc", "plots", "diff", "HEAD", "--json")):
        assert_quiet(project(*command, check=False))

    plots = json.loads(project("dvc", "plots", "show", "--json").stdout)
    assert not plots.get("errors")
    accuracy = plots["data"]["Accuracy per epoch (train and validation)"][0]["content"]
    assert {row["filename"] for row in accuracy["data"]["values"]} == {"train/accuracy.tsv", "eval/accuracy.tsv"}
    learning_rate = plots["data"]["Learning rate per epoch"][0]["content"]["encoding"]["y"]
    assert learning_rate["scale"] == {"zero": True}  # .dvc/plots/learning_rate.json: not an axis of "0"
    confusion = json.dumps(plots["data"]["reports/evaluation/confusion.csv"][0]["content"])
    axes = re.findall(r'"(x|y)": \{"field": "(\w+)"', confusion)
    assert axes[:2] == [("x", "predicted"), ("y", "actual")]  # as in confusion_matrix.png


def test_a_failed_stage_loses_nothing_that_dvc_checkout_cannot_restore(project):
    model = project.path / "models" / "model.keras"
    before = model.read_bytes()
    params = project.path / "params.yaml"
    params.write_text(params.read_text().replace("optimizer: adam", "optimizer: adamm"))
    failed = project("dvc", "repro", check=False)
    assert failed.returncode != 0 and "'train.optimizer' must be one of" in failed.stderr + failed.stdout
    project("git", "checkout", "params.yaml")
    assert_quiet(project("dvc", "checkout", check=False))
    assert model.read_bytes() == before
    assert project("dvc", "status").stdout.strip() == "Data and pipelines are up to date."
    assert project("git", "status", "--porcelain").stdout == ""


def test_branch_switches_leave_nothing_to_reproduce_and_a_run_seen_before_comes_back_from_the_run_cache(project):
    """A user tries 2 epochs on a branch and commits it, switches back and forth with `dvc
    checkout`, then runs the same params on main: DVC's run-cache restores them, no training."""
    shutil.rmtree(project.path / ".cnnlab")  # no resume state: only the run-cache can avoid training
    project("git", "checkout", "-q", "-b", "shorter")
    started = time.perf_counter()
    first = project("dvc", "exp", "run", "-S", "train.epochs=2")  # then commit it on the branch
    trained_seconds = time.perf_counter() - started
    assert "train" in stages_run(first.stdout)
    project("git", "add", "-A")
    project("git", "commit", "-q", "-m", "2 epochs")
    for branch in ("main", "shorter", "main"):
        project("git", "checkout", "-q", branch)
        assert_quiet(project("dvc", "checkout", check=False))
        assert stages_run(project("dvc", "repro", "--dry").stdout) == [], branch
        assert project("dvc", "status").stdout.strip() == "Data and pipelines are up to date.", branch

    shutil.rmtree(project.path / ".cnnlab")
    started = time.perf_counter()
    again = project("dvc", "exp", "run", "-S", "train.epochs=2")
    restored_seconds = time.perf_counter() - started
    assert "Stage 'train' is cached - skipping run, checking out outputs" in again.stdout
    assert "Stage 'evaluate' is cached" in again.stdout and "train" not in stages_run(again.stdout)
    print(f"run-cache: trained in {trained_seconds:.1f} s, restored in {restored_seconds:.1f} s")
    assert json.loads((project.path / "models" / "summary.json").read_text())["epochs_run"] == 2


def test_identical_runs_give_identical_dvc_lock_and_committed_files(project):
    """A run of everything from scratch (no resume state, no run-cache) writes the bytes the
    committed baseline holds. Only the report differs: it now compares with main's results."""
    shutil.rmtree(project.path / ".cnnlab")
    project("dvc", "repro", "--force", "--no-run-cache")
    assert project("git", "diff", "--name-only").stdout.split() == ["dvc.lock", "reports/report.md"]
    diff = project("git", "diff", "-U0", "dvc.lock").stdout
    changed = [line.split(":")[0].strip("+- ") for line in diff.splitlines()
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert sorted(changed) == ["md5", "md5", "size", "size"], diff  # one output's hash and size...
    hunk = project("git", "diff", "-U3", "dvc.lock").stdout
    assert "path: reports/report.md" in hunk, hunk  # ...and that output is the report


def test_exp_run_round_trip_of_an_unchanged_value_is_no_change(project):
    """DVC rewrites params.yaml with its YAML 1.2 dumper (mode: "off" -> mode: off)."""
    project("dvc", "exp", "run", "-S", "augment.mode=off", "-n", "same")
    assert re.search(r"^  mode: off", (project.path / "params.yaml").read_text(), flags=re.MULTILINE)
    compared = project("cnnlab", "compare", "--rev", "HEAD").stdout
    assert "No params changed." in compared and "Verdict: no change" in compared
    assert project("dvc", "status").stdout.strip() == "Data and pipelines are up to date."
    assert_quiet(project("dvc", "exp", "apply", "same", check=False))


def test_a_code_edit_marks_the_stages_that_run_that_code_changed(project):
    with open(project.path / "stages" / "evaluate.py", "a") as module:
        module.write("# an edit\n")
    status = project("dvc", "status").stdout
    assert re.findall(r"^(\w+):", status, flags=re.MULTILINE) == ["evaluate"]
    assert "modified:           stages/evaluate.py" in status
    with open(project.path / "stages" / "io.py", "a") as module:  # shared by every stage
        module.write("# an edit\n")
    assert len(re.findall(r"^(\w+):", project("dvc", "status").stdout, flags=re.MULTILINE)) == 5


def test_identical_results_on_another_cpu_are_no_change(project):
    """Float noise at the 8th decimal (another CPU) is not a change: not in compare, not in the PR."""
    metrics_path = project.path / "reports" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics_path.write_text(json.dumps({key: value + 1e-8 if isinstance(value, float) else value
                                        for key, value in metrics.items()}))
    compared = project("cnnlab", "compare", "--rev", "HEAD", "--md").stdout
    assert "**Verdict: no change** (McNemar's exact test on the 270 test images of both revisions: " \
           "0 fixed (wrong to right), 0 broken (right to wrong), p = 1" in compared
    assert "worse" not in compared.replace("Nothing got worse beyond noise.", "")


@pytest.mark.parametrize("example", sorted(path.name for path in (REPO_ROOT / "examples").glob("*.yaml")))
def test_every_example_passes_dvcs_params_check(project, example):
    """`cp examples/X.yaml params.yaml && dvc repro`: DVC finds every params key it needs."""
    shutil.copy(REPO_ROOT / "examples" / example, project.path / "params.yaml")
    dry = project("dvc", "repro", "--dry", check=False)
    assert dry.returncode == 0 and "missing" not in dry.stdout + dry.stderr, dry.stdout + dry.stderr
    assert project("cnnlab", "check").returncode == 0
