"""report: reports/report.md and its figures, for a reviewer reading a pull request.

Deterministic: the same inputs give byte-identical Markdown and PNGs (relative links, no
timestamps, stable ordering), so the report's diff shows only real changes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stages import plots
from stages.config import ReportParams
from stages.io import atomic_dir, read_json, require_file, write_text

FIGURES_DIR = "figures"
# DVCLive's Keras callback logs `loss` as train/loss and `val_loss` as eval/loss.
LIVE_SPLITS = {"train": "", "eval": "val_"}


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


def training_section(meta: dict, summary: dict) -> str:
    train = summary["params"]["train"]
    model = summary["params"]["model"]
    rows = [
        ("dataset", f"{meta['dataset']} ({meta['source']})"),
        ("image shape", " x ".join(str(size) for size in meta["image_shape"])),
        ("classes", f"{meta['num_classes']}: {', '.join(meta['class_names'])}"),
        ("images (train / val / test)", " / ".join(str(meta["splits"][s]) for s in ("train", "val", "test"))),
        ("architecture", f"{model['architecture']}, {summary['total_params']:,} parameters"),
        ("optimizer", f"{train['optimizer']}, learning rate {train['learning_rate']}, batch {train['batch_size']}"),
        ("augmentation", summary["params"]["augment"]["mode"]),
        ("epochs run", str(summary["epochs_run"])),
        ("best epoch", f"{summary['best_epoch']} ({summary['monitor']} {summary['best_value']:.4f})"),
        ("training time", f"{summary['training_seconds']:.0f} s"),
    ]
    return markdown_table(pd.DataFrame(rows, columns=["", "value"]))


def metrics_section(metrics: dict) -> str:
    rows = [(name, value) for name, value in metrics.items() if isinstance(value, float)]
    return markdown_table(pd.DataFrame(rows, columns=["metric", "value"]))


def write_figures(inputs: ReportInputs, meta: dict, folder: Path, dpi: int) -> dict[str, str]:
    """Draw every figure into `folder`; return {title: file name} in report order."""
    figures = {}
    samples = inputs.prepared_dir / "samples.png"
    if samples.is_file():
        shutil.copyfile(samples, folder / "samples.png")
        figures["Sample training images"] = "samples.png"
    preview = inputs.augmented_dir / "preview.png" if inputs.augmented_dir else None
    if preview is not None and preview.is_file():
        shutil.copyfile(preview, folder / "augmentation_preview.png")
        figures["Augmentation: originals beside augmented variants"] = "augmentation_preview.png"
    history = load_history(inputs.live_dir)
    if history:
        plots.training_curves(history, folder / "training_curves.png", dpi)
        figures["Training and validation accuracy and loss per epoch"] = "training_curves.png"
    matrix_csv = require_file(inputs.evaluation_dir / "confusion_matrix.csv", "confusion matrix")
    matrix = pd.read_csv(matrix_csv, index_col=0).to_numpy(dtype=np.int64)
    plots.confusion_matrix_figure(matrix, meta["class_names"], folder / "confusion_matrix.png", dpi)
    figures["Confusion matrix"] = "confusion_matrix.png"
    return figures


def report(params: ReportParams, inputs: ReportInputs, output_path: str | Path) -> str:
    """Run the stage; return the Markdown written to `output_path`."""
    output_path = Path(output_path)
    meta = read_json(inputs.prepared_dir / "meta.json", "prepared metadata")
    summary = read_json(inputs.summary_path, "training summary")
    metrics = read_json(inputs.metrics_path, "test metrics")
    per_class = pd.read_csv(
        require_file(inputs.evaluation_dir / "per_class.csv", "per-class table"), dtype={"class": str}
    )

    with atomic_dir(output_path.parent / FIGURES_DIR) as folder:
        figures = write_figures(inputs, meta, folder, params.figure_dpi)

    sections = [
        f"# {params.title}",
        "## What was trained", training_section(meta, summary),
        "## Test metrics", metrics_section(metrics),
        "## Per-class precision, recall and F1", markdown_table(per_class),
        "## Figures",
        *(f"### {title}\n\n![{title}]({FIGURES_DIR}/{name})" for title, name in figures.items()),
    ]
    markdown = "\n\n".join(sections) + "\n"
    write_text(output_path, markdown)
    return markdown
