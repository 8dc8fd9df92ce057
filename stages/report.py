"""report: reports/report.md and its figures, for a reviewer reading a pull request.

Deterministic: the same inputs give byte-identical Markdown and PNGs (relative links, no
timestamps or training times, stable ordering), so the report's diff shows only real changes. It never imports
TensorFlow: the figures that need the model (misclassified examples, feature maps) are drawn
by `evaluate` into reports/evaluation/figures/ and linked from here.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from stages import compare, plots
from stages.calibration import BINNING
from stages.config import Params, ReportParams
from stages.diagnosis import diagnose_fit
from stages.artifacts import META_FILE, read_meta
from stages.errors import CnnlabError
from stages.io import atomic_dir, read_json, require_file, write_text
from stages.params_text import flatten, show

FIGURES_DIR = "figures"
# DVCLive's Keras callback logs `loss` as train/loss and `val_loss` as eval/loss.
LIVE_SPLITS = {"train": "", "eval": "val_"}
# The metrics of the first screen (those present), in this order; the rest are one click away.
HEADLINE_METRICS = ("accuracy", "f1_macro", "loss", "top_k_accuracy", "expected_calibration_error",
                    "roc_auc", "average_precision", "test_images")
# The most-confused table lists at most this many (actual, predicted) pairs.
CONFUSED_PAIRS = 10
# Below this many validation images, one image moves validation accuracy by more than 1 point.
SMALL_VALIDATION_SET = 100


@dataclass(frozen=True)
class ReportInputs:
    prepared_dir: Path
    summary_path: Path
    metrics_path: Path
    evaluation_dir: Path
    live_dir: Path
    augmented_dir: Path | None = None


def load_history(live_dir: str | Path) -> dict[str, list[float]]:
    """Per-epoch metrics from DVCLive's TSV files, keyed the way Keras names them."""
    history = {}
    for split, prefix in LIVE_SPLITS.items():
        for tsv in sorted((Path(live_dir) / "plots" / "metrics" / split).glob("*.tsv")):
            table = pd.read_csv(tsv, sep="\t").sort_values("step")
            history[prefix + tsv.stem] = table[tsv.stem].astype(float).tolist()
    return history


def markdown_table(table: pd.DataFrame, float_format: str = ".4f") -> str:
    return table.to_markdown(index=False, floatfmt=float_format)


def is_regularizer(key: str) -> bool:
    """dropout_rate, l2, kernel_regularizer, batch_norm, weight_decay, blocks.0.dropout, ..."""
    words = re.split(r"[._]", key.lower())
    pairs = ["_".join(pair) for pair in zip(words, words[1:])]
    return any(word in ("dropout", "l1", "l2", "noise") or word.startswith(("regulari", "batchnorm"))
               for word in words) or any(pair in ("batch_norm", "weight_decay") for pair in pairs)


def regularizers(model_params: Mapping[str, Any]) -> str:
    """The regularization settings among the model params that are switched on."""
    active = [f"{key} {show(value)}" for key, value in flatten(model_params).items()
              if is_regularizer(key) and value not in (None, False, 0, 0.0, "none", "off", [], ())]
    return ", ".join(active) or "none"


def describe_augmentation(augment: dict) -> str:
    """The mode, and the transforms only when they are applied (mode off ignores them)."""
    if augment.get("mode", "off") == "off":
        return "off"
    return ", ".join(f"{key} {show(value)}" for key, value in augment.items())


def training_section(meta: dict, summary: dict) -> str:
    params = summary.get("params", {})
    train, model = params.get("train", {}), params.get("model", {})
    augment = flatten(params.get("augment", {}))
    optimizer = ", ".join(f"{key.replace('_', ' ')} {show(train[key])}"
                          for key in ("learning_rate", "batch_size") if key in train)
    rows = [
        ("dataset", f"{meta['dataset']} ({meta['source']})"),
        ("image shape", " x ".join(str(size) for size in meta["image_shape"])),
        ("classes", f"{meta['num_classes']}: {', '.join(meta['class_names'])}"),
        ("images (train / val / test)", " / ".join(str(meta["splits"][s]) for s in ("train", "val", "test"))),
        ("model", f"{show(model.get('architecture', summary.get('architecture')))}, "
                  f"{summary['total_params']:,} parameters"),
        ("optimizer", f"{show(train.get('optimizer'))}" + (f" ({optimizer})" if optimizer else "")),
        ("regularizers", regularizers(model)),
        ("augmentation", describe_augmentation(augment)),
        ("epochs run", str(summary["epochs_run"])),
        ("best epoch", f"{summary['best_epoch']} ({summary['monitor']} {summary['best_value']:.4f})"),
    ]
    return markdown_table(pd.DataFrame(rows, columns=["", "value"]))


HEALTH_ROWS = (("train", "within train"), ("val", "within val"), ("test", "within test"),
               ("train-val", "val images also in train"), ("train-test", "test images also in train"),
               ("val-test", "test images also in val"))


def health_section(meta: dict, duplicates_link: str | None) -> str | None:
    """Duplicates within and across splits (leakage), what deduplicate removed, images per class."""
    record = meta.get("health")
    if not record:
        return None
    leaked = sum(record[kind][key] for kind in ("exact", "near") for key in ("train-val", "train-test", "val-test"))
    removed = sum(record["removed"].values())
    if leaked and record["deduplicate"] == "none":
        verdict = (f"**Leakage**: {leaked} validation/test images have a duplicate in an earlier split, so "
                   "their scores flatter the model; `prepare.deduplicate: near` drops them.")
    elif removed:
        verdict = (f"`prepare.deduplicate: {record['deduplicate']}` removed {removed} images "
                   f"({', '.join(f'{count} {name}' for name, count in record['removed'].items())}); "
                   "the counts below are from before.")
    else:
        verdict = "No image has a duplicate in an earlier split."
    counts = pd.DataFrame([(label, record["exact"][key], record["near"][key]) for key, label in HEALTH_ROWS],
                          columns=["images with an earlier duplicate", "exact copies", "near duplicates"])
    per_class = pd.DataFrame({"class": list(meta["class_names"]),
                              **{split: [record["images_per_class"][split][name] for name in meta["class_names"]]
                                 for split in ("train", "val", "test")}})
    conflicts = record["label_conflicts"]
    parts = [
        verdict,
        markdown_table(counts),
        ("Near duplicates: not searched (`prepare.near_distance: null`)." if record["near_distance"] is None else
         f"Near duplicates: 64-bit perceptual hashes (imagehash's pHash) at most {record['near_distance']} bits "
         f"apart and pixels differing by at most {record['near_difference']:.1%} on average.")
        + f" Duplicate pairs with different labels: {conflicts['exact']} exact, {conflicts['near']} near.",
        collapsed("Images per class", markdown_table(per_class)),
    ]
    if duplicates_link:
        parts.append(f"![Duplicate pairs]({duplicates_link})")
    return "\n\n".join(parts)


def model_summary_section(summary: dict) -> str | None:
    """Keras-style layer table (layer, type, output shape, parameters), when train recorded it."""
    layers = summary.get("layers")
    if not layers:
        return None
    rows = [(layer["name"], layer["type"],
             "(" + ", ".join("None" if size is None else str(size) for size in layer["output_shape"]) + ")",
             f"{layer['params']:,}", show(layer.get("trainable", True))) for layer in layers]
    table = pd.DataFrame(rows, columns=["layer", "type", "output shape", "parameters", "trainable"])
    totals = (f"Total parameters: {summary['total_params']:,}"
              + (f" (trainable: {summary['trainable_params']:,})" if "trainable_params" in summary else ""))
    return table.to_markdown(index=False, colalign=("left", "left", "left", "right", "left")) + f"\n\n{totals}"


def parameters_section(summary: dict) -> str | None:
    """The training params that differ from cnnlab's defaults, then every value inside a
    collapsed block (augment, model, train groups, as recorded by train)."""
    used = flatten(summary.get("params", {}))
    if not used:
        return None
    defaults = flatten(dataclasses.asdict(Params()))

    def declared(key: str) -> str | None:
        """The params key that `key` is, or is an entry of (train.class_weight.3 -> train.class_weight)."""
        while key and key not in defaults:
            key = key.rpartition(".")[0]
        return key or None

    changed = [(key, show(value), show(defaults[declared(key)]) if declared(key) else "(not a cnnlab param)")
               for key, value in used.items() if key not in defaults or show(defaults[key]) != show(value)]
    body = (markdown_table(pd.DataFrame(changed, columns=["key", "value", "cnnlab default"]))
            if changed else "Every training param has cnnlab's default value.")
    everything = markdown_table(pd.DataFrame([(key, show(value)) for key, value in used.items()],
                                             columns=["key", "value"]))
    return f"{body}\n\n" + collapsed("All params used for training", everything)


def collapsed(summary: str, body: str) -> str:
    """A block GitHub shows closed; the blank lines let Markdown tables inside it render."""
    return f"<details><summary>{summary}</summary>\n\n{body}\n\n</details>"


def metrics_section(metrics: dict) -> str:
    rows = []
    for name, value in metrics.items():
        if name == "top_k" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        label = f"top_k_accuracy (k = {metrics['top_k']})" if name == "top_k_accuracy" and "top_k" in metrics else name
        rows.append((label, f"{value:.4f}" if isinstance(value, float) else str(value)))
    return pd.DataFrame(rows, columns=["metric", "value"]).to_markdown(
        index=False, colalign=("left", "right"), disable_numparse=True)


# --- the base revision ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """This run against the base revision's committed test results (compare's significance rules)."""

    rev: str
    test: compare.PairedTest | None
    metrics: pd.DataFrame     # compare.metrics_diff
    per_class: pd.DataFrame   # compare.per_class_f1_diff
    base_per_class: dict[str, dict]


def in_repository(path: Path) -> Path | None:
    """`path` relative to the working directory (the repository root when DVC runs the stage)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()) if path.is_absolute() else path
    except ValueError:
        return None


def compare_with_base(rev: str, inputs: ReportInputs, metrics: dict, per_class: pd.DataFrame,
                      rows: pd.DataFrame | None) -> Comparison | None:
    """This run against `rev`, or None when there is no such revision (or no git and DVC
    repository here) or it has no committed test metrics."""
    paths = [in_repository(path) for path in (inputs.metrics_path, inputs.evaluation_dir / "per_class.csv",
                                             inputs.evaluation_dir / "confusion.csv")]
    if not rev or None in paths:
        return None
    try:
        read = compare.revision_reader(rev)
        old_metrics = compare.read_json_at(read, paths[0])
    except CnnlabError:  # no git repository here, or no such revision
        return None
    if not old_metrics:
        return None
    old_per_class, old_rows = compare.per_class_at(read, paths[1]), compare.read_table_at(read, paths[2])
    test = compare.paired_test(old_rows, rows)
    new_per_class = {str(row.pop("class")): row for row in per_class.to_dict("records")}
    return Comparison(rev, test, compare.metrics_diff(old_metrics, metrics, test),
                      compare.per_class_f1_diff(old_per_class, new_per_class, compare.per_class_tests(old_rows, rows)),
                      old_per_class)


# --- sections -----------------------------------------------------------------------------------
def headline_section(metrics: dict, comparison: Comparison | None) -> str:
    """The verdict against the base revision (when there is one) and the headline metrics."""
    if comparison is None:
        shown = {name: metrics[name] for name in HEADLINE_METRICS if name in metrics}
        return metrics_section({**shown, **({"top_k": metrics["top_k"]} if "top_k" in metrics else {})})
    verdict = compare.verdict_summary(comparison.metrics, comparison.per_class, comparison.test, markdown=True)
    rows = comparison.metrics.set_index("metric")
    table = rows.loc[[name for name in HEADLINE_METRICS if name in rows.index]].reset_index()
    table = table.rename(columns={"old": comparison.rev, "new": "this run"})
    return f"{verdict}\n\n{compare.format_table(table, markdown=True)}"


def per_class_section(per_class: pd.DataFrame, comparison: Comparison | None,
                      train_counts: Mapping[str, int] | None = None) -> str:
    """Precision, recall, F1 and support (test images) per class, and the class's training
    images when train recorded them; with a base revision, each score's change and the F1
    verdict of McNemar's test on that class's images."""
    rows = []
    base = comparison.base_per_class if comparison else {}
    verdicts = dict(zip(comparison.per_class["class"], comparison.per_class["verdict"])) if comparison else {}
    for record in per_class.to_dict("records"):
        row = {"class": record["class"]}
        for column in ("precision", "recall", "f1"):
            row[column] = f"{record[column]:.4f}"
            if comparison:
                before = base.get(record["class"], {}).get(column)
                row[f"{column} change"] = "" if before is None else f"{record[column] - before:+.4f}"
        row["support"] = str(record["support"])
        if train_counts:
            row["train images"] = str(train_counts.get(record["class"], ""))
        if comparison:
            row["F1 verdict"] = {"worse": "**worse**"}.get(verdicts.get(record["class"], ""),
                                                        verdicts.get(record["class"], ""))
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.to_markdown(index=False, disable_numparse=True,
                             colalign=["left"] + ["right"] * (len(table.columns) - 1 - bool(comparison))
                             + (["left"] if comparison else []))


def most_confused(rows: pd.DataFrame, at_most: int = CONFUSED_PAIRS) -> pd.DataFrame:
    """The (actual, predicted) pairs with the most mistakes, with the share of the actual class."""
    totals = rows["actual"].value_counts()
    wrong = rows[rows["actual"] != rows["predicted"]]
    pairs = wrong.groupby(["actual", "predicted"]).size().reset_index(name="count")
    # astype: mapping no pair at all gives an empty text column (pandas with pyarrow), not numbers
    pairs["share of the actual class"] = pairs["count"] / pairs["actual"].map(totals).astype("int64")
    return pairs.sort_values(["count", "actual", "predicted"], ascending=[False, True, True]).head(at_most)


def confused_section(rows: pd.DataFrame | None) -> str:
    if rows is None:
        return "Not available: reports/evaluation/confusion.csv is missing."
    pairs = most_confused(rows)
    if not len(pairs):
        return "No test image was misclassified."
    pairs["share of the actual class"] = [f"{share:.1%}" for share in pairs["share of the actual class"]]
    return pairs.to_markdown(index=False, disable_numparse=True, colalign=("left", "left", "right", "right"))


def imbalance_warning(summary: dict, ratio_limit: float) -> str | None:
    """A warning when the training set's largest class outnumbers its smallest by more than
    `ratio_limit` (report.imbalance_ratio) and train.class_weight leaves the classes unweighted."""
    counts = summary.get("class_counts") or {}
    if not counts or summary.get("params", {}).get("train", {}).get("class_weight", "none") != "none":
        return None
    largest, smallest = max(counts, key=counts.get), min(counts, key=counts.get)
    ratio = counts[largest] / max(counts[smallest], 1)
    if ratio <= ratio_limit:
        return None
    return (f"**Imbalanced training set**: class {largest} has {counts[largest]} images, class {smallest} "
            f"{counts[smallest]} ({ratio:.1f} times fewer; report.imbalance_ratio is {ratio_limit:g}), and "
            "train.class_weight is none: the rare classes weigh little in the loss. Consider "
            "train.class_weight=balanced, and judge by recall and macro F1 rather than accuracy.")


def diagnosis_section(params: ReportParams, history: dict, summary: dict, meta: dict) -> str:
    diagnosis = diagnose_fit(history, summary.get("best_epoch", 0), params.underfit_error, params.overfit_gap)
    if diagnosis is None:
        return "Not available: the training history has no per-epoch accuracy and val_accuracy."
    rows = [("training error", f"{diagnosis.train_error:.4f}"),
            ("validation error", f"{diagnosis.val_error:.4f}"),
            ("gap (validation - training)", f"{diagnosis.gap:.4f}"),
            ("underfit_error threshold (report params)", f"{diagnosis.underfit_error:.4f}"),
            ("overfit_gap threshold (report params)", f"{diagnosis.overfit_gap:.4f}")]
    table = pd.DataFrame(rows, columns=[f"at epoch {diagnosis.epoch}", "value"])
    note = ("Training accuracy is Keras's running average over each epoch, measured with dropout "
            "(and online augmentation) active, so the training error is slightly pessimistic.")
    table = table.to_markdown(index=False, colalign=("left", "right"), disable_numparse=True)
    parts = [diagnosis.explanation()]
    validation = meta.get("splits", {}).get("val")
    if validation is not None and validation < SMALL_VALIDATION_SET:
        parts.append(f"**Small validation set**: {validation} images, so one image moves validation "
                     f"accuracy by {1 / max(validation, 1):.1%}; the best epoch and this diagnosis rest "
                     f"on few images (use at least {SMALL_VALIDATION_SET}).")
    parts.append(collapsed("The numbers behind the diagnosis", f"{table}\n\n{note}"))
    return "\n\n".join(parts)


def calibration_section(metrics: dict, reliability_link: str | None) -> str:
    ece = metrics.get("expected_calibration_error")
    if ece is None or reliability_link is None:
        return "Not available: evaluate wrote no calibration table (re-run `dvc repro`)."
    text = (f"Expected calibration error (ECE): **{ece:.4f}**, over {BINNING}: the mean gap between the "
            "model's confidence and its accuracy, weighted by test images (0 = confidence means what it says).")
    return f"{text}\n\n![Reliability diagram]({reliability_link})"


def thresholds_section(evaluation_dir: Path, metrics: dict) -> str:
    path = evaluation_dir / "thresholds.csv"
    if not path.is_file():
        return "Not available: evaluate wrote no thresholds table (re-run `dvc repro`)."
    table = pd.read_csv(path)
    shown = pd.DataFrame({
        "abstain below p": [f"{value:.2f}" for value in table["threshold"]],
        "images classified": [str(value) for value in table["images"]],
        "coverage": [f"{value:.1%}" for value in table["coverage"]],
        "accuracy on them": ["" if pd.isna(value) else f"{value:.4f}" for value in table["accuracy"]],
    })
    intro = (f"The model answers only when the probability of its predicted class reaches p, and abstains "
             f"otherwise (accuracy on every test image: {metrics.get('accuracy', float('nan')):.4f}).")
    return f"{intro}\n\n" + shown.to_markdown(index=False, disable_numparse=True,
                                               colalign=("right", "right", "right", "right"))


def gradcam_section(summary: dict, links: dict[str, str]) -> str:
    shown = [f"![{title}]({link})" for title, link in links.items()]
    if shown:
        return ("Where the model looked: the gradient of the predicted class's score weighs the last "
                "convolutional feature map (red = regions that raised the score most).\n\n" + "\n\n".join(shown))
    types = [layer.get("type", "") for layer in summary.get("layers", [])]
    if summary.get("architecture") == "transfer" or any("Conv" in name for name in types):
        return "Not drawn: no test image to show."
    return (f"Not drawn: the model ({show(summary.get('architecture'))}) has no convolutional layer, and "
            "Grad-CAM weighs a convolutional layer's feature maps.")


def relative_link(target: Path, markdown_path: Path) -> str:
    return Path(os.path.relpath(target.resolve(), markdown_path.parent.resolve())).as_posix()


def image(links: dict[str, str], name: str, title: str) -> str:
    """The figure `name` as a Markdown image, or "" when it was not drawn."""
    return f"![{title}]({links[name]})" if name in links else ""


def write_figures(inputs: ReportInputs, summary: dict, metrics: dict, output_path: Path, folder: Path,
                  dpi: int) -> dict[str, str]:
    """Draw or copy the report's own figures into `folder` (published as figures/ next to the
    Markdown) and link those `evaluate` drew; return {file name: link}."""
    links = {}
    history = load_history(inputs.live_dir)
    if history:
        plots.training_curves(history, folder / "training_curves.png", dpi, summary.get("best_epoch"))
        links["training_curves.png"] = f"{FIGURES_DIR}/training_curves.png"
    reliability = inputs.evaluation_dir / "calibration.csv"
    if reliability.is_file() and "expected_calibration_error" in metrics:
        plots.reliability_diagram(pd.read_csv(reliability), metrics["expected_calibration_error"], BINNING,
                                  folder / "reliability.png", dpi)
        links["reliability.png"] = f"{FIGURES_DIR}/reliability.png"
    for drawn in sorted((inputs.evaluation_dir / FIGURES_DIR).glob("*.png")):
        links[drawn.name] = relative_link(drawn, output_path)
    # data/ is DVC-cached, not committed: copy its figures so the report renders in the PR.
    copies = [(inputs.prepared_dir / name, name) for name in ("samples.png", "duplicates.png")]
    if inputs.augmented_dir is not None:
        copies.append((inputs.augmented_dir / "preview.png", "augmentation_preview.png"))
    for source, name in copies:
        if source.is_file():
            shutil.copyfile(source, folder / name)
            links[name] = f"{FIGURES_DIR}/{name}"
    return links


def report(params: ReportParams, inputs: ReportInputs, output_path: str | Path) -> str:
    """Run the stage; return the Markdown written to `output_path`."""
    output_path = Path(output_path)
    meta = read_meta(inputs.prepared_dir / META_FILE)
    summary = read_json(inputs.summary_path, "training summary")
    metrics = read_json(inputs.metrics_path, "test metrics")
    per_class = pd.read_csv(
        require_file(inputs.evaluation_dir / "per_class.csv", "per-class table"), dtype={"class": str}
    )
    confusion = inputs.evaluation_dir / "confusion.csv"
    rows = pd.read_csv(confusion, dtype=str) if confusion.is_file() else None
    history = load_history(inputs.live_dir)
    comparison = compare_with_base(params.base_rev, inputs, metrics, per_class, rows)

    with atomic_dir(output_path.parent / FIGURES_DIR) as folder:
        links = write_figures(inputs, summary, metrics, output_path, folder, params.figure_dpi)

    against = f" (against `{comparison.rev}`)" if comparison else ""
    health = health_section(meta, links.get("duplicates.png"))
    sections = [
        f"# {params.title}",
        f"## Test results{against}", headline_section(metrics, comparison),
        collapsed("All test metrics", metrics_section(metrics)),
        "## Fit diagnosis", diagnosis_section(params, history, summary, meta),
        image(links, "training_curves.png", "Training and validation accuracy and loss per epoch; the dashed line is "
               "the best epoch, the one saved as the model"),
        "## Where the model errs",
        "### Per-class precision, recall and F1", imbalance_warning(summary, params.imbalance_ratio),
        per_class_section(per_class, comparison, summary.get("class_counts")),
        "### Confusion matrix (test set)", image(links, "confusion_matrix.png", "Confusion matrix (test set)"),
        "### Most confused class pairs", confused_section(rows),
        "### Misclassified test images", image(links, "misclassified.png", "Misclassified test images")
        or "No test image was misclassified.",
        "## Can its confidence be trusted?",
        "### Calibration", calibration_section(metrics, links.get("reliability.png")),
        "### Confidence thresholding", thresholds_section(inputs.evaluation_dir, metrics),
        "### Grad-CAM", gradcam_section(summary, {
            title: links[name] for name, title in (
                ("gradcam_mistakes.png", "Grad-CAM over the most confident mistakes"),
                ("gradcam_correct.png", "Grad-CAM over one correct image per class")) if name in links}),
        "## What was trained", training_section(meta, summary),
        *(part for heading, body in (("### Model summary", model_summary_section(summary)),
                                     ("### Params that differ from cnnlab's defaults", parameters_section(summary)))
          if body for part in (heading, body)),
        *(("## Data health", health) if health else ()),
        "## More figures",
        *(f"### {title}\n\n{image(links, name, title)}" for name, title in (
            ("roc_precision_recall.png", "ROC and precision-recall curves"),
            ("samples.png", "Sample training images"),
            ("augmentation_preview.png", "Augmentation preview"),
            ("feature_maps.png", "Feature maps of the first convolutional layers (one test image)"))
          if name in links),
    ]
    markdown = "\n\n".join(section for section in sections if section) + "\n"
    write_text(output_path, markdown)
    return markdown
