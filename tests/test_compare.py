"""cnnlab compare: diffs of params and metrics, the experiments table, and both modes end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from conftest import EXPERIMENT, REPO_ROOT
import pandas as pd

from stages.compare import (
    Experiment,
    direction,
    experiments_table,
    format_table,
    metrics_diff,
    paired_test,
    params_diff,
    parse_experiments,
    per_class_f1_diff,
    per_class_tests,
    sign_test_p_value,
    verdict,
    verdict_summary,
)

OLD_METRICS = {"accuracy": 0.80, "loss": 0.50, "f1_macro": 0.75, "test_images": 100}
NEW_METRICS = {"accuracy": 0.90, "loss": 0.60, "f1_macro": 0.75, "test_images": 100, "roc_auc": 0.95}


def test_direction_of_metrics():
    assert direction("accuracy") == 1 and direction("f1_macro") == 1 and direction("roc_auc") == 1
    assert direction("loss") == -1 and direction("eval.loss") == -1
    assert direction("test_images") == 0 and direction("top_k") == 0


def test_metrics_diff_absolute_relative_and_what_got_worse():
    table = metrics_diff(OLD_METRICS, NEW_METRICS).set_index("metric")

    assert table.loc["accuracy", "change"] == pytest.approx(0.10)
    assert table.loc["accuracy", "relative"] == pytest.approx(0.125)  # 0.10 / 0.80
    assert table.loc["accuracy", "verdict"] == "better"  # +0.10 > the 95% interval for 100 images (0.098)
    assert table.loc["loss", "change"] == pytest.approx(0.10)
    assert table.loc["loss", "relative"] == pytest.approx(0.20)
    assert table.loc["loss", "verdict"] == "worse"  # a higher loss is worse
    assert table.loc["f1_macro", "change"] == 0 and table.loc["f1_macro", "verdict"] == "no change"
    assert table.loc["test_images", "verdict"] == ""
    assert table.loc["roc_auc", "old"] is None and table.loc["roc_auc", "change"] is None  # new metric

    text = format_table(metrics_diff(OLD_METRICS, NEW_METRICS), markdown=True)
    assert re.search(r"\| loss +\| +0\.5000 \| +0\.6000 \| +\+0\.1000 \| +\+20\.00% \| \*\*worse\*\* +\|", text)
    assert re.search(r"\| test_images +\| +100 \| +100 \| +\+0 \|", text)


def rows(actual: str, predicted: str) -> pd.DataFrame:
    """confusion.csv: one actual,predicted row per test image."""
    return pd.DataFrame({"actual": list(actual), "predicted": list(predicted)})


def test_mcnemar_counts_only_the_images_whose_correctness_changed():
    old = rows("aaaabbbbcc" * 10, "aaabbbbbcc" * 10)   # 10 of 100 wrong
    same = paired_test(old, old.copy())
    assert (same.fixed, same.broken, same.p_value) == (0, 0, 1.0) and not same.significant
    new = old.copy()
    new.loc[new.index[:30], "predicted"] = new.loc[new.index[:30], "actual"]  # fixes 3 of them
    few = paired_test(old, new)
    assert (few.fixed, few.broken) == (3, 0) and few.p_value == pytest.approx(0.25)  # 2 * 0.5**3
    many = paired_test(old, old.assign(predicted=old["actual"]))
    assert (many.fixed, many.broken) == (10, 0) and many.p_value == pytest.approx(2 * 0.5 ** 10)
    assert many.significant and "10 fixed (wrong to right), 0 broken" in many.describe()
    assert paired_test(old, old.iloc[:50]) is None  # another test set: no pairing
    assert paired_test(None, old) is None
    assert set(per_class_tests(old, new)) == {"a", "b", "c"}
    assert per_class_tests(old, new)["a"].fixed == 3  # the wrong images are cats of class a



@pytest.mark.parametrize("changed", [0, 1, 2, 7, 40, 301, 2000])
def test_the_exact_sign_test_equals_scipys_binomial_test(changed):
    from scipy.stats import binomtest

    for fixed in sorted({0, 1, changed // 3, changed // 2, changed - 1, changed} - {-1}):
        broken = changed - fixed
        expected = binomtest(min(fixed, broken), changed).pvalue if changed else 1.0
        assert sign_test_p_value(fixed, broken) == pytest.approx(min(1.0, expected), rel=1e-9, abs=1e-300)

def test_float_noise_and_changes_the_test_set_cannot_resolve_are_no_change():
    assert verdict("loss", 0.0891262, 0.0891262 + 1e-8) == "no change"        # another CPU
    assert verdict("accuracy", 0.974, 0.974 + 1e-8) == "no change"
    assert verdict("accuracy", 0.80, 0.82, images=100) == "no change"         # 2 images of 100
    assert verdict("accuracy", 0.80, 0.95, images=100) == "better"
    insignificant = paired_test(rows("ab" * 50, "ab" * 50), rows("ab" * 50, "bb" + "ab" * 49))
    assert verdict("accuracy", 1.0, 0.99, insignificant) == "no change"        # one image, p = 1
    assert verdict("test_images", 100, 200) == ""


def test_per_class_f1_diff_and_the_verdict_summary():
    old = {"cat": {"f1": 0.9, "support": 500}, "dog": {"f1": 0.5, "support": 500}}
    new = {"cat": {"f1": 0.8, "support": 500}, "dog": {"f1": 0.7, "support": 500}, "bird": {"f1": 0.0, "support": 2}}
    table = per_class_f1_diff(old, new)

    assert table["class"].tolist() == ["cat", "dog", "bird"]
    assert table["change"].tolist()[:2] == pytest.approx([-0.1, 0.2])
    assert table["verdict"].tolist() == ["worse", "better", ""]
    summary = verdict_summary(metrics_diff(OLD_METRICS, NEW_METRICS), table, None, markdown=True)
    assert summary.startswith("**Verdict: better** (no per-image predictions at both revisions")
    assert summary.endswith("**Got worse:** loss (+0.1000), F1 of class cat (-0.1000)")
    same = verdict_summary(metrics_diff(OLD_METRICS, OLD_METRICS), per_class_f1_diff(old, old), None, False)
    assert same.startswith("Verdict: no change") and same.endswith("Nothing got worse beyond noise.")


def test_params_diff_lists_changed_added_and_removed_keys():
    old = {"seed": 1, "train": {"optimizer": "adam", "epochs": 3}, "model": {"conv_filters": [8, 16]}}
    new = {"seed": 1, "train": {"optimizer": "sgd", "epochs": 3, "momentum": 0.9}, "model": {"conv_filters": [8]}}
    table = params_diff(old, new)
    assert table.values.tolist() == [["model.conv_filters", "[8, 16]", "[8]"],
                                     ["train.momentum", "(absent)", "0.9"],
                                     ["train.optimizer", "adam", "sgd"]]
    assert params_diff(old, old).empty


def exp_state(rev: str, name: str | None, optimizer: str, accuracy: float | None) -> dict:
    """One entry shaped like `dvc exp show --json` (DVC 3) output."""
    metrics = {} if accuracy is None else {
        "reports/metrics.json": {"data": {"accuracy": accuracy, "loss": 1 - accuracy, "f1_macro": accuracy - 0.01}}}
    return {"rev": rev, "name": name, "error": None, "experiments": None,
            "data": {"rev": rev, "timestamp": "2026-01-01T00:00:00", "meta": {}, "metrics": metrics,
                     "params": {"params.yaml": {"data": {"seed": 1, "train": {"optimizer": optimizer,
                                                                                   "epochs": 3}}}}}}


EXP_SHOW = [
    exp_state("workspace", None, "adam", 0.5),
    {**exp_state("a" * 40, "main", "adam", 0.5),
     "experiments": [{"name": "quick-fox", "executor": None, "revs": [exp_state("b" * 40, "quick-fox", "sgd", 0.3)]},
                     {"name": "slow-owl", "executor": None, "revs": [exp_state("c" * 40, "slow-owl", "rmsprop", 0.7)]},
                     {"name": "queued", "executor": "workspace", "revs": [exp_state("d" * 40, "queued", "sgd", None)]}]},
]


def test_parse_experiments_skips_the_workspace_and_unfinished_ones():
    experiments = parse_experiments(EXP_SHOW)
    assert [(e.name, e.rev[0]) for e in experiments] == [("main", "a"), ("quick-fox", "b"), ("slow-owl", "c")]
    assert experiments[1].params["train.optimizer"] == "sgd"
    assert experiments[2].metrics["accuracy"] == 0.7


def test_experiments_table_shows_differing_params_sorted_by_the_chosen_metric():
    experiments = parse_experiments(EXP_SHOW)
    summaries = {"c" * 40: {"epochs_run": 3}}
    table = experiments_table(experiments, summaries, "accuracy")
    assert table["experiment"].tolist() == ["slow-owl", "main", "quick-fox"]
    assert "train.optimizer" in table.columns and "train.epochs" not in table.columns and "seed" not in table.columns
    assert table.loc[0, "epochs"] == 3
    by_loss = experiments_table(experiments, summaries, "loss")
    assert by_loss["experiment"].tolist() == ["slow-owl", "main", "quick-fox"]  # lowest loss first
    one = [Experiment("x", "e" * 40, {"a": 1}, {"accuracy": 0.5})]
    assert "a" not in experiments_table(one, {}, "accuracy").columns


# --- end to end, with the real dvc --------------------------------------------------------------------
NO_TENSORFLOW = ("import sys\nfrom stages.cli import app\n"
                 "try:\n    app(sys.argv[1:], standalone_mode=False)\n"
                 "finally:\n    assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n")


def cnnlab_without_tensorflow(project, *arguments: str) -> subprocess.CompletedProcess:
    """Run a cnnlab command in the project and fail if it imported TensorFlow."""
    return subprocess.run([sys.executable, "-c", NO_TENSORFLOW, *arguments], cwd=project.path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin",
                                                               "DVC_NO_ANALYTICS": "1", "HOME": str(project.path)})


def write_metrics(project, accuracy: float, loss: float, cat_f1: float, cat_right: int = 20) -> None:
    """The files evaluate writes, for 50 test images (25 cats, 25 dogs)."""
    reports = project.path / "reports"
    (reports / "evaluation").mkdir(parents=True, exist_ok=True)
    (reports / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "loss": loss, "test_images": 50}))
    pd.DataFrame({"class": ["cat", "dog"], "f1": [cat_f1, 0.8], "support": [25, 25]}).to_csv(
        reports / "evaluation" / "per_class.csv", index=False)
    predicted = ["cat"] * cat_right + ["dog"] * (25 - cat_right) + ["dog"] * 25
    pd.DataFrame({"actual": ["cat"] * 25 + ["dog"] * 25, "predicted": predicted}).to_csv(
        reports / "evaluation" / "confusion.csv", index=False)


@pytest.mark.e2e
def test_compare_against_a_revision_reads_committed_files_without_tensorflow(dvc_project):
    write_metrics(dvc_project, accuracy=0.80, loss=0.40, cat_f1=0.9)
    dvc_project("git", "add", "-A")
    dvc_project("git", "commit", "-q", "-m", "baseline metrics")
    write_metrics(dvc_project, accuracy=0.84, loss=0.44, cat_f1=0.85, cat_right=10)  # 10 broken
    params = yaml.safe_load((dvc_project.path / "params.yaml").read_text())
    old_learning_rate = params["train"]["learning_rate"]
    params["train"]["learning_rate"] = 0.01
    (dvc_project.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    result = cnnlab_without_tensorflow(dvc_project, "compare", "--rev", "HEAD", "--md")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "## cnnlab compare: workspace vs HEAD" in text
    assert "**Verdict: better** (McNemar's exact test on the 50 test images of both revisions: " \
           "0 fixed (wrong to right), 10 broken (right to wrong), p = 0.00195" in text
    assert "**Got worse:** loss (+0.0400), F1 of class cat (-0.0500)" in text
    assert re.search(rf"\| train\.learning_rate +\| {re.escape(str(old_learning_rate))} +\| 0\.01 +\|", text)
    assert re.search(r"\| accuracy +\| +0\.8000 \| +0\.8400 \| +\+0\.0400 \| +\+5\.00% \| better", text)
    assert re.search(r"\| cat +\| +0\.9000 \| +0\.8500 \| +-0\.0500 \| \*\*worse\*\*", text)

    bad = cnnlab_without_tensorflow(dvc_project, "compare", "--rev", "no-such-branch")
    assert bad.returncode != 0 and "no-such-branch" in bad.stderr


@pytest.mark.e2e
def test_compare_names_a_bad_revision_in_one_line(dvc_project):
    write_metrics(dvc_project, accuracy=0.8, loss=0.4, cat_f1=0.9)
    result = subprocess.run([sys.executable, "-m", "stages", "compare", "--rev", "no-such-branch"],
                            cwd=dvc_project.path, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("cnnlab: error: cannot read git revision 'no-such-branch'")
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
@pytest.mark.tf
def test_an_experiment_beside_the_baseline_then_compare(experimented_project):
    """conftest's experiment "tuned" (nadam, cosine schedule, batch norm, online augmentation)
    beside the committed baseline (adam)."""
    dvc_project = experimented_project

    accuracies = {}
    for baseline in json.loads(dvc_project("dvc", "exp", "show", "--json").stdout)[1:]:
        for experiment in [baseline] + [e["revs"][0] for e in baseline["experiments"] or []]:
            accuracies[experiment["name"]] = experiment["data"]["metrics"]["reports/metrics.json"]["data"]["accuracy"]
    assert set(accuracies) == {"main", "tuned"}
    # `dvc exp show`: headline metrics only, no file prefixes (DVC adds them only on name
    # collisions), and the changed columns fit a pull request.
    header = dvc_project("dvc", "exp", "show", "--md").stdout.splitlines()[0]
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert not [column for column in columns if ":" in column]
    metrics = json.loads((dvc_project.path / "reports" / "metrics.json").read_text())
    assert set(metrics) <= set(columns)
    shown = json.loads(dvc_project("dvc", "exp", "show", "--json").stdout)
    assert set(shown[1]["data"]["metrics"]) == {"reports/metrics.json"}  # no per-class or DVCLive metrics
    changed = dvc_project("dvc", "exp", "show", "--md", "--only-changed").stdout.splitlines()[0]
    assert "train.optimizer" in changed and len(changed.strip("|").split("|")) <= 30

    text = dvc_project("cnnlab", "compare", "--experiments", "--md").stdout
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
             if line.startswith("| ") and not line.startswith("|:")]
    rows = {row[0]: dict(zip(table[0], row)) for row in table[1:]}
    assert {name: (row["train.optimizer"], row["accuracy"]) for name, row in rows.items()} == {
        "main": ("adam", f"{accuracies['main']:.4f}"), "tuned": ("nadam", f"{accuracies['tuned']:.4f}")}
    # The params that differ, and only those, beside the metrics.
    assert table[0] == ["experiment", "rev", *sorted(EXPERIMENT), "accuracy", "loss", "f1_macro", "epochs"]
    assert (dvc_project.path / "reports" / "compare" / "experiments.png").read_bytes().startswith(b"\x89PNG")

    # Take the experiment into the workspace: compare against the committed baseline.
    dvc_project("dvc", "exp", "apply", "tuned")
    against_head = dvc_project("cnnlab", "compare", "--rev", "HEAD").stdout
    change = accuracies["tuned"] - accuracies["main"]
    assert re.search(r"train\.optimizer +adam +nadam", against_head)
    numbers = [f"{accuracies['main']:.4f}", f"{accuracies['tuned']:.4f}", f"{change:+.4f}"]
    assert re.search("accuracy +" + " +".join(map(re.escape, numbers)), against_head)
    dvc_project("git", "add", "-A")
    dvc_project("git", "commit", "-q", "-m", "take the tuned experiment")
    assert dvc_project("cnnlab", "compare", "--rev", "HEAD~1").stdout == against_head.replace("HEAD", "HEAD~1")
    assert "No params changed." in dvc_project("cnnlab", "compare", "--rev", "HEAD").stdout
    # DVC's own diff shows the headline metrics (per-class numbers are plots, not metric columns).
    diff = json.loads(dvc_project("dvc", "metrics", "diff", "HEAD~1", "--all", "--json").stdout)
    assert "accuracy" in diff["reports/metrics.json"]
