"""report: reports/report.md and its figures, for a reviewer reading a pull request.

Deterministic: the same inputs give byte-identical Markdown and PNGs (relative links, no
timestamps, stable ordering), so the report's diff shows only real changes. It never imports
TensorFlow: the figures that need the model (misclassified examples, feature maps) are drawn
by `evaluate` into reports/evaluation/figures/ and linked from here.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from stages import plots
from stages.config import ReportParams
from stages.diagnosis import diagnose_fit
from stages.artifacts import META_FILE, read_meta
from stages.io import atomic_dir, read_json, require_file, write_text

FIGURES_DIR = "figures"
# DVCLive's Keras callback logs `loss` as train/loss and `val_loss` as eval/loss.
LIVE_SPLITS = {"train": "", "eval": "val_"}
# Figures drawn by `evaluate` (file in reports/evaluation/figures/, title), in report order.
EVALUATION_FIGURES = {
    "confusion_matrix.png": "Confusion matrix (test set)",
    "misclassified.png": "Misclassified test images",
    "roc_precision_recall.png": "ROC and precision-recall curves",
}


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


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": [{"d": 2}]} -> {"a.b": 1, "c.0.d": 2}, in the mapping's own order."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, (list, tuple)) and any(isinstance(item, Mapping) for item in value):
            value = {str(index): item for index, item in enumerate(value)}
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + str(key)] = value
    return flat


def show(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(item) for item in value) + "]"
    return "none" if value is None else str(value)


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


def training_time(seconds: float) -> str:
    return f"{seconds:.0f} s" + (f" ({seconds / 60:.1f} min)" if seconds >= 60 else "")


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
        ("training time", training_time(summary["training_seconds"])),
    ]
    return markdown_table(pd.DataFrame(rows, columns=["", "value"]))


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
    """Every params value training used (augment, model, train groups), as recorded by train."""
    params = summary.get("params", {})
    rows = [(key, show(value)) for key, value in flatten(params).items()]
    return markdown_table(pd.DataFrame(rows, columns=["key", "value"])) if rows else None


def metrics_section(metrics: dict) -> str:
    rows = []
    for name, value in metrics.items():
        if name == "top_k" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        label = f"top_k_accuracy (k = {metrics['top_k']})" if name == "top_k_accuracy" and "top_k" in metrics else name
        rows.append((label, f"{value:.4f}" if isinstance(value, float) else str(value)))
    return pd.DataFrame(rows, columns=["metric", "value"]).to_markdown(
        index=False, colalign=("left", "right"), disable_numparse=True)


def diagnosis_section(params: ReportParams, history: dict, summary: dict) -> str:
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
    return f"{diagnosis.explanation()}\n\n{table}\n\n{note}"


def relative_link(target: Path, markdown_path: Path) -> str:
    return Path(os.path.relpath(target.resolve(), markdown_path.parent.resolve())).as_posix()


def write_figures(inputs: ReportInputs, output_path: Path, folder: Path, dpi: int) -> dict[str, str]:
    """Draw or copy the report's own figures into `folder` (published as figures/ next to the
    Markdown) and link those `evaluate` drew; return {title: link} in report order."""
    figures = {}
    history = load_history(inputs.live_dir)
    if history:
        plots.training_curves(history, folder / "training_curves.png", dpi)
        figures["Training and validation accuracy and loss per epoch"] = f"{FIGURES_DIR}/training_curves.png"
    evaluation_figures = inputs.evaluation_dir / FIGURES_DIR
    for name, title in EVALUATION_FIGURES.items():
        if (evaluation_figures / name).is_file():
            figures[title] = relative_link(evaluation_figures / name, output_path)
    # data/ is DVC-cached, not committed: copy its figures so the report renders in the PR.
    copies = [(inputs.prepared_dir / "samples.png", "samples.png", "Sample training images")]
    if inputs.augmented_dir is not None:
        copies.append((inputs.augmented_dir / "preview.png", "augmentation_preview.png", "Augmentation preview"))
    for source, name, title in copies:
        if source.is_file():
            shutil.copyfile(source, folder / name)
            figures[title] = f"{FIGURES_DIR}/{name}"
    if (evaluation_figures / "feature_maps.png").is_file():
        figures["Feature maps of the first convolutional layers (one test image)"] = relative_link(
            evaluation_figures / "feature_maps.png", output_path)
    return figures


def report(params: ReportParams, inputs: ReportInputs, output_path: str | Path) -> str:
    """Run the stage; return the Markdown written to `output_path`."""
    output_path = Path(output_path)
    meta = read_meta(inputs.prepared_dir / META_FILE)
    summary = read_json(inputs.summary_path, "training summary")
    metrics = read_json(inputs.metrics_path, "test metrics")
    per_class = pd.read_csv(
        require_file(inputs.evaluation_dir / "per_class.csv", "per-class table"), dtype={"class": str}
    )
    history = load_history(inputs.live_dir)

    with atomic_dir(output_path.parent / FIGURES_DIR) as folder:
        figures = write_figures(inputs, output_path, folder, params.figure_dpi)

    optional = [("### Model summary", model_summary_section(summary)),
                ("### Parameters used for training", parameters_section(summary))]
    sections = [
        f"# {params.title}",
        "## What was trained", training_section(meta, summary),
        *(part for heading, body in optional if body for part in (heading, body)),
        "## Test metrics", metrics_section(metrics),
        "## Per-class precision, recall and F1", markdown_table(per_class),
        "## Fit diagnosis", diagnosis_section(params, history, summary),
        "## Figures",
        *(f"### {title}\n\n![{title}]({link})" for title, link in figures.items()),
    ]
    markdown = "\n\n".join(sections) + "\n"
    write_text(output_path, markdown)
    return markdown
