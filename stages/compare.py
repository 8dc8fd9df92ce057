"""compare: what changed? Params and metrics against a git revision, or across DVC experiments.

Reads committed artifacts only (params.yaml, the metrics JSON files, DVCLive's per-epoch
TSVs, models/summary.json) through DVC's file system, at any git revision or experiment,
so it never imports TensorFlow. Returns text (plain or Markdown); the CLI prints it.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from stages import plots
from stages.config import read_yaml
from stages.errors import CnnlabError
from stages.io import rounded
from stages.params_text import flatten, show

# Counts and settings, not scores: reported, never called better or worse.
NEUTRAL_METRICS = ("top_k", "test_images", "step", "support")
EXPERIMENT_METRICS = ("accuracy", "loss", "f1_macro")
# Metrics that are shares of the test images (a 95% interval from the test-set size applies).
PROPORTIONS = ("accuracy", "top_k_accuracy", "precision", "recall", "f1")
# A change is real when McNemar's test (or the interval) says so at this level.
ALPHA = 0.05
Reader = Callable[[Path], "str | None"]


@dataclass(frozen=True)
class ComparePaths:
    """Where the pipeline writes what compare reads (the paths in dvc.yaml)."""

    params: Path = Path("params.yaml")
    metrics: Path = Path("reports/metrics.json")
    per_class: Path = Path("reports/evaluation/per_class.csv")
    confusion: Path = Path("reports/evaluation/confusion.csv")
    summary: Path = Path("models/summary.json")
    live_dir: Path = Path("reports/train")


def direction(metric: str) -> int:
    """+1 if higher is better, -1 if lower is better (losses, errors), 0 for counts."""
    name = metric.rsplit(".", 1)[-1]
    if name in NEUTRAL_METRICS:
        return 0
    return -1 if name.endswith("loss") or name.endswith("error") else 1


# --- is a change real? ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PairedTest:
    """McNemar's exact test on the test images both revisions classified: only the images that
    one revision got right and the other wrong say anything about which model is better."""

    images: int
    fixed: int    # wrong at the old revision, right now
    broken: int   # right at the old revision, wrong now
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def describe(self) -> str:
        return (f"McNemar's exact test on the {self.images} test images of both revisions: "
                f"{self.fixed} fixed (wrong to right), {self.broken} broken (right to wrong), "
                f"p = {self.p_value:.3g} (a change is real when p < {ALPHA})")


def paired_test(old_rows: pd.DataFrame | None, new_rows: pd.DataFrame | None) -> PairedTest | None:
    """The test on two `actual,predicted` tables (confusion.csv) of the same test images in the
    same order; None when either is missing or the test sets differ."""
    if old_rows is None or new_rows is None or len(old_rows) != len(new_rows) or not len(new_rows):
        return None
    if not (old_rows["actual"].to_numpy() == new_rows["actual"].to_numpy()).all():
        return None
    old_right = (old_rows["actual"] == old_rows["predicted"]).to_numpy()
    new_right = (new_rows["actual"] == new_rows["predicted"]).to_numpy()
    fixed, broken = int((~old_right & new_right).sum()), int((old_right & ~new_right).sum())
    return PairedTest(len(new_rows), fixed, broken, sign_test_p_value(fixed, broken))


def sign_test_p_value(fixed: int, broken: int) -> float:
    """Two-sided p-value of McNemar's exact test: the chance that a fair coin, tossed once per
    changed image, splits them at least this unevenly (scipy.stats.binomtest(k, n, 0.5), in
    exact integer arithmetic: importing SciPy's statistics takes about a second)."""
    changed, fewer = fixed + broken, min(fixed, broken)
    ways, tail = 1, 1  # C(changed, 0); the sum of C(changed, i) for i <= fewer
    for i in range(fewer):
        ways = ways * (changed - i) // (i + 1)
        tail += ways
    return min(1.0, 2 * tail / 2 ** changed)


def per_class_tests(old_rows: pd.DataFrame | None, new_rows: pd.DataFrame | None) -> dict[str, PairedTest]:
    """The paired test restricted to the test images of each class."""
    if paired_test(old_rows, new_rows) is None:
        return {}
    return {name: paired_test(old_rows[old_rows["actual"] == name], new_rows[new_rows["actual"] == name])
            for name in new_rows["actual"].unique()}


def verdict(metric: str, before: float | None, after: float | None, test: PairedTest | None = None,
            images: int | None = None) -> str:
    """better, worse, or no change when the difference is float noise (equal at the 4 significant
    digits metrics are published with) or smaller than the test set can resolve: judged by the
    paired test when there is one, else by a 95% interval from the test-set size for proportions."""
    if before is None or after is None or direction(metric) == 0:
        return ""
    if rounded(before) == rounded(after):
        return "no change"
    if test is not None:
        if not test.significant:
            return "no change"
    elif images and metric.rsplit(".", 1)[-1].startswith(PROPORTIONS):
        margin = 1.96 * math.sqrt(max(before * (1 - before) + after * (1 - after), 0.0) / images)
        if abs(after - before) < margin:
            return "no change"
    return "better" if (after - before) * direction(metric) > 0 else "worse"


# --- reading artifacts at a revision ------------------------------------------------------------
def revision_reader(rev: str | None, repo: str | Path = ".") -> Reader:
    """A function reading a file's text at git revision `rev` (None: the workspace), or None if absent."""
    if rev is None:
        def read_workspace(path: Path) -> str | None:
            file = Path(repo) / path
            return file.read_text(encoding="utf-8") if file.is_file() else None

        return read_workspace
    from dvc.api import DVCFileSystem
    from dvc.scm import SCM, SCMError, resolve_rev

    try:
        fs = DVCFileSystem(str(repo), rev=resolve_rev(SCM(str(repo)), rev))
    except SCMError as error:
        raise CnnlabError(f"cannot read git revision {rev!r} ({error}); pass an existing branch, "
                          "tag or commit to --rev (fetch it first in a shallow clone)") from None

    def read(path: Path) -> str | None:
        try:
            return fs.read_text(Path(path).as_posix())
        except (FileNotFoundError, IsADirectoryError):
            return None  # not there at that revision, or its DVC cache is not here

    return read


def read_json_at(read: Reader, path: Path) -> dict:
    text = read(path)
    return json.loads(text) if text else {}


def read_table_at(read: Reader, path: Path) -> pd.DataFrame | None:
    """A CSV written by evaluate (class names as text), or None when it is not there."""
    text = read(path)
    return pd.read_csv(io.StringIO(text), dtype={"class": str, "actual": str, "predicted": str}) if text else None


def per_class_at(read: Reader, path: Path) -> dict[str, dict]:
    """{class: {precision, recall, f1, support}} from per_class.csv."""
    table = read_table_at(read, path)
    return {} if table is None else {str(row.pop("class")): row for row in table.to_dict("records")}


def read_history_at(read: Reader, live_dir: Path) -> dict[str, list[float]]:
    """Validation accuracy and loss per epoch from DVCLive's TSVs (Keras names: val_accuracy...)."""
    history = {}
    for metric in ("accuracy", "loss"):
        text = read(live_dir / "plots" / "metrics" / "eval" / f"{metric}.tsv")
        if text:
            table = pd.read_csv(io.StringIO(text), sep="\t").sort_values("step")
            history[f"val_{metric}"] = table[metric].astype(float).tolist()
    return history


# --- tables ----------------------------------------------------------------------------------------
def params_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> pd.DataFrame:
    """Every params key whose value differs (added and removed keys included), sorted by key."""
    old, new = flatten(old), flatten(new)
    rows = [(key, show(old[key]) if key in old else "(absent)", show(new[key]) if key in new else "(absent)")
            for key in sorted(set(old) | set(new)) if old.get(key, ...) != new.get(key, ...)]
    return pd.DataFrame(rows, columns=["param", "old", "new"])


def metrics_diff(old: Mapping[str, Any], new: Mapping[str, Any], test: PairedTest | None = None) -> pd.DataFrame:
    """Old and new value, absolute and relative change and verdict of every numeric metric."""
    images = new.get("test_images")
    old, new = flatten(old), flatten(new)
    rows = []
    for key in list(new) + [key for key in old if key not in new]:
        before, after = old.get(key), new.get(key)
        if not all(value is None or _is_number(value) for value in (before, after)):
            continue
        change = after - before if before is not None and after is not None else None
        relative = change / abs(before) if change is not None and before else None
        rows.append((key, before, after, change, relative, verdict(key, before, after, test, images)))
    return pd.DataFrame(rows, columns=["metric", "old", "new", "change", "relative", "verdict"], dtype=object)


def per_class_f1_diff(old: Mapping[str, Any], new: Mapping[str, Any],
                      tests: Mapping[str, PairedTest] | None = None) -> pd.DataFrame:
    """F1 of each class before and after, in the new file's class order, judged by the paired
    test on that class's images (or the interval from its support)."""
    rows = []
    for name in list(new) + [name for name in old if name not in new]:
        before, after = old.get(name, {}).get("f1"), new.get(name, {}).get("f1")
        change = after - before if before is not None and after is not None else None
        test = (tests or {}).get(name)
        rows.append((name, before, after, change,
                     verdict("f1", before, after, test, new.get(name, {}).get("support"))))
    return pd.DataFrame(rows, columns=["class", "old F1", "new F1", "change", "verdict"], dtype=object)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_table(table: pd.DataFrame, markdown: bool) -> str:
    """Numbers to 4 decimals (relative changes as percentages), blanks for missing, bold `worse`;
    numeric columns right-aligned."""
    shown = table.astype(object).copy()
    for column in shown.columns:
        shown[column] = [_format_cell(column, value, markdown) for value in shown[column]]
    numeric = [any(_is_number(value) for value in table[column]) for column in table.columns]
    return shown.to_markdown(index=False, tablefmt="pipe" if markdown else "simple", disable_numparse=True,
                             colalign=["right" if number else "left" for number in numeric])


def _format_cell(column: str, value: Any, markdown: bool) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if column == "relative":
        return f"{value:+.2%}"
    if column == "change" and _is_number(value):
        return f"{value:+.4f}" if isinstance(value, float) else f"{value:+d}"
    if isinstance(value, float):
        return f"{value:.4f}"
    if value == "worse" and markdown:
        return "**worse**"
    return str(value)


def verdict_summary(metrics: pd.DataFrame, per_class: pd.DataFrame, test: PairedTest | None,
                    markdown: bool) -> str:
    """The reviewer's answer first: better, no change or worse, the test that says so, and what
    got worse beyond noise."""
    accuracy = metrics.set_index("metric")["verdict"].get("accuracy", "") if len(metrics) else ""
    overall = accuracy or "no change"
    if test is not None:
        basis = test.describe()
    else:
        basis = ("no per-image predictions at both revisions: accuracy judged by a 95% interval "
                 "from the test-set size")
    worse = [f"{row.metric} ({row.change:+.4f})" for row in metrics.itertuples() if row.verdict == "worse"]
    worse += [f"F1 of class {row[1]} ({row.change:+.4f})" for row in per_class.itertuples() if row.verdict == "worse"]
    headline = f"**Verdict: {overall}**" if markdown else f"Verdict: {overall}"
    label = "**Got worse:**" if markdown else "Got worse:"
    tail = f"{label} " + ", ".join(worse) if worse else "Nothing got worse beyond noise."
    return f"{headline} ({basis}).\n\n{tail}"


def _section(title: str, body: str, markdown: bool) -> str:
    return f"### {title}\n\n{body}" if markdown else f"{title}\n{'=' * len(title)}\n{body}"


# --- compare against a revision --------------------------------------------------------------------
def compare_revision(rev: str, paths: ComparePaths = ComparePaths(), markdown: bool = False,
                     repo: str | Path = ".") -> str:
    """Params, headline metrics and per-class F1 of the workspace against git revision `rev`,
    each change judged by McNemar's test on the two revisions' per-image predictions."""
    old, new = revision_reader(rev, repo), revision_reader(None, repo)
    if new(paths.metrics) is None:
        raise CnnlabError(f"test metrics not found: {paths.metrics}; run the pipeline first (dvc repro)")
    params = params_diff(read_yaml(old(paths.params) or "{}", f"{rev}:{paths.params}") or {},
                         read_yaml(new(paths.params) or "{}", str(paths.params)) or {})
    old_rows, new_rows = read_table_at(old, paths.confusion), read_table_at(new, paths.confusion)
    test = paired_test(old_rows, new_rows)
    metrics = metrics_diff(read_json_at(old, paths.metrics), read_json_at(new, paths.metrics), test)
    per_class = per_class_f1_diff(per_class_at(old, paths.per_class), per_class_at(new, paths.per_class),
                                  per_class_tests(old_rows, new_rows))
    title = f"## cnnlab compare: workspace vs {rev}" if markdown else f"cnnlab compare: workspace vs {rev}"
    parts = [title, verdict_summary(metrics, per_class, test, markdown),
             _section("Params", format_table(params, markdown) if len(params) else "No params changed.", markdown),
             _section("Test metrics", format_table(metrics, markdown), markdown)]
    if len(per_class):
        parts.append(_section("Per-class F1", format_table(per_class, markdown), markdown))
    return "\n\n".join(parts) + "\n"


# --- compare experiments -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Experiment:
    name: str
    rev: str
    params: dict = field(default_factory=dict)   # flattened params.yaml
    metrics: dict = field(default_factory=dict)  # flattened headline metrics


def dvc_exp_show(repo: str | Path = ".") -> list[dict]:
    """`dvc exp show --json`: the baseline commit(s) and their experiments, with params and metrics."""
    result = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=repo,
                            capture_output=True, text=True)
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise CnnlabError(f"dvc exp show failed in {os.path.abspath(repo)}: {last_line}; "
                          "run cnnlab compare --experiments in a DVC project with committed experiments")
    return json.loads(result.stdout)


def parse_experiments(exp_show: list[dict], paths: ComparePaths = ComparePaths()) -> list[Experiment]:
    """One Experiment per baseline commit and per finished experiment (the workspace row is skipped)."""

    def build(name: str, state: dict) -> Experiment | None:
        data = state.get("data") or {}
        metrics = (data.get("metrics") or {}).get(paths.metrics.as_posix(), {}).get("data")
        if not metrics:  # queued, running or failed: nothing to compare yet
            return None
        params = (data.get("params") or {}).get(paths.params.as_posix(), {}).get("data") or {}
        return Experiment(name, state["rev"], flatten(params), flatten(metrics))

    experiments = []
    for baseline in exp_show:
        if baseline.get("rev") == "workspace":
            continue
        experiments.append(build(baseline.get("name") or baseline["rev"][:7], baseline))
        for experiment in baseline.get("experiments") or []:
            state = (experiment.get("revs") or [{}])[0]
            name = experiment.get("name") or state.get("name") or state.get("rev", "")[:7]
            experiments.append(build(name, state) if state.get("rev") else None)
    return [experiment for experiment in experiments if experiment is not None]


def differing_params(experiments: list[Experiment]) -> list[str]:
    """The params keys whose values are not the same in every experiment, sorted."""
    keys = sorted({key for experiment in experiments for key in experiment.params})
    return [key for key in keys if len({show(e.params.get(key, "(absent)")) for e in experiments}) > 1]


def experiments_table(experiments: list[Experiment], summaries: Mapping[str, dict], sort_by: str) -> pd.DataFrame:
    """One row per experiment: the params that differ, key metrics and epochs run."""
    differing = differing_params(experiments)
    rows = []
    for experiment in experiments:
        summary = summaries.get(experiment.rev, {})
        rows.append({"experiment": experiment.name, "rev": experiment.rev[:7],
                     **{key: show(experiment.params.get(key, "(absent)")) for key in differing},
                     **{metric: experiment.metrics.get(metric) for metric in dict.fromkeys((*EXPERIMENT_METRICS, sort_by))},
                     "epochs": summary.get("epochs_run")})
    table = pd.DataFrame(rows, dtype=object)
    ascending = direction(sort_by) < 0
    return table.sort_values(sort_by, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)


def curve_labels(experiments: list[Experiment]) -> dict[str, str]:
    """Experiment name -> legend label naming the params that set it apart (optimizer=sgd, ...)."""
    differing = differing_params(experiments)
    return {e.name: e.name + (": " if differing else "") + ", ".join(
        f"{key.rsplit('.', 1)[-1]}={show(e.params.get(key, '(absent)'))}" for key in differing) for e in experiments}


def compare_experiments(
    paths: ComparePaths = ComparePaths(), sort_by: str = "accuracy", markdown: bool = False,
    plot_path: str | Path | None = None, repo: str | Path = ".", dpi: int = 100,
) -> str:
    """A table of the experiments (from dvc exp show) and an overlay plot of their validation curves."""
    experiments = parse_experiments(dvc_exp_show(repo), paths)
    if not experiments:
        raise CnnlabError("no experiments with test metrics found; run some first, e.g. "
                          "dvc exp run -S train.optimizer=sgd")
    available = sorted({metric for experiment in experiments for metric in experiment.metrics})
    if sort_by not in available:
        raise CnnlabError(f"--sort-by {sort_by!r} is not a metric of these experiments; "
                          f"expected one of {', '.join(available)}")
    readers = {experiment.rev: revision_reader(experiment.rev, repo) for experiment in experiments}
    summaries = {rev: read_json_at(read, paths.summary) for rev, read in readers.items()}
    table = experiments_table(experiments, summaries, sort_by)
    title = f"Experiments, sorted by {sort_by} ({'ascending' if direction(sort_by) < 0 else 'descending'})"
    parts = [_section(title, format_table(table, markdown), markdown)]
    if plot_path is not None:
        labels = curve_labels(experiments)
        histories = {labels[e.name]: read_history_at(readers[e.rev], paths.live_dir) for e in experiments}
        plots.experiments_overlay({label: h for label, h in histories.items() if h}, plot_path, dpi)
        parts.append(f"![Validation accuracy and loss per epoch]({Path(plot_path).as_posix()})" if markdown
                     else f"Validation accuracy and loss per epoch: {plot_path}")
    return "\n\n".join(parts) + "\n"
