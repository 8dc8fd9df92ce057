"""The report stage on synthetic artifacts written in the pipeline's real formats (no TensorFlow)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages import plots
from conftest import REPO_ROOT, run_cnnlab, write_params

CLASS_NAMES = ["circle", "square", "triangle"]
SECTIONS = ["# cnnlab report", "## What was trained", "### Model summary", "### Parameters used for training",
            "## Test metrics", "## Per-class precision, recall and F1", "## Fit diagnosis", "## Figures",
            "### Training and validation accuracy and loss per epoch", "### Confusion matrix (test set)",
            "### Misclassified test images", "### Sample training images", "### Augmentation preview",
            "### Feature maps of the first convolutional layers (one test image)"]
LAYERS = [
    {"name": "conv2d", "type": "Conv2D", "output_shape": [None, 8, 8, 4], "params": 40, "trainable": True},
    {"name": "max_pooling2d", "type": "MaxPooling2D", "output_shape": [None, 4, 4, 4], "params": 0,
     "trainable": True},
    {"name": "flatten", "type": "Flatten", "output_shape": [None, 64], "params": 0, "trainable": True},
    {"name": "classifier", "type": "Dense", "output_shape": [None, 3], "params": 195, "trainable": True},
]


def write_tsv(path: Path, metric: str, values: list[float]) -> None:
    """A DVCLive per-epoch file: step, then the metric."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"step": range(len(values)), metric: values}).to_csv(path, sep="\t", index=False)


def make_artifacts(root: Path, layers: bool = True, preview: bool = True) -> list[str]:
    """Everything `report` reads, as the other stages write it; returns the command's options."""
    rng = np.random.default_rng(0)
    images, labels = rng.random((9, 8, 8, 1), dtype=np.float32), np.repeat(np.arange(3), 3)
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    (prepared / "meta.json").write_text(json.dumps({
        "dataset": "shapes", "source": "synthetic test shapes", "class_names": CLASS_NAMES, "num_classes": 3,
        "image_shape": [8, 8, 1], "splits": {"train": 30, "val": 6, "test": 9},
        "normalization": {"method": "unit", "scale": 255.0}}))
    plots.sample_grid(images, labels, CLASS_NAMES, prepared / "samples.png", per_class=2)
    augmented = root / "data" / "augmented"
    augmented.mkdir(parents=True)
    if preview:
        plots.sample_grid(images[::-1], labels, CLASS_NAMES, augmented / "preview.png", per_class=2)

    summary = {"architecture": "cnn", "total_params": 235, "trainable_params": 235, "epochs_run": 4,
               "best_epoch": 3, "monitor": "val_accuracy", "best_value": 0.8, "training_seconds": 75.4,
               "params": {"seed": 1, "augment": {"mode": "online", "flip": "horizontal"},
                          "model": {"architecture": "cnn", "blocks": [{"filters": 4}], "dropout_rate": 0.3,
                                    "l2": 0.001, "batch_norm": True, "label_smoothing": 0.0},
                          "train": {"optimizer": "rmsprop", "learning_rate": 0.01, "batch_size": 8}}}
    if layers:
        summary["layers"] = LAYERS
    (root / "models").mkdir()
    (root / "models" / "summary.json").write_text(json.dumps(summary))

    reports = root / "reports"
    evaluation = reports / "evaluation"
    (evaluation / "figures").mkdir(parents=True)
    (reports / "metrics.json").write_text(json.dumps({
        "accuracy": 0.7777777777777778, "loss": 0.61, "top_k_accuracy": 1.0, "precision_macro": 0.8,
        "recall_macro": 0.7777777777777778, "f1_macro": 0.77, "top_k": 2, "test_images": 9}))
    pd.DataFrame({"class": CLASS_NAMES, "precision": [1.0, 0.6, 0.75], "recall": [1.0, 1.0, 0.3333],
                  "f1": [1.0, 0.75, 0.4615], "support": [3, 3, 3]}).to_csv(evaluation / "per_class.csv", index=False)
    matrix = np.array([[3, 0, 0], [0, 3, 0], [0, 2, 1]])
    plots.confusion_matrix_figure(matrix, CLASS_NAMES, evaluation / "figures" / "confusion_matrix.png")
    plots.misclassified_grid(images[:2], ["triangle", "triangle"], ["square", "square"], [0.9, 0.6],
                             evaluation / "figures" / "misclassified.png")
    plots.feature_maps_figure(images[0], "circle", [("conv2d", rng.random((8, 8, 4)))],
                              evaluation / "figures" / "feature_maps.png")
    live = reports / "train" / "plots" / "metrics"
    for split, accuracy, loss in (("train", [0.5, 0.8, 0.97, 0.99], [1.0, 0.6, 0.1, 0.05]),
                                  ("eval", [0.5, 0.7, 0.80, 0.78], [1.0, 0.7, 0.6, 0.65])):
        write_tsv(live / split / "accuracy.tsv", "accuracy", accuracy)
        write_tsv(live / split / "loss.tsv", "loss", loss)
    write_params(root, {})
    return ["report", "--prepared", "data/prepared", "--augmented", "data/augmented",
            "--summary", "models/summary.json", "--metrics", "reports/metrics.json",
            "--evaluation", "reports/evaluation", "--live-dir", "reports/train", "--output", "reports/report.md"]


def linked_images(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def test_report_has_every_section_and_every_linked_image_exists(tmp_path):
    run_cnnlab(*make_artifacts(tmp_path), cwd=tmp_path, check=True)
    report = tmp_path / "reports" / "report.md"
    markdown = report.read_text()

    positions = [markdown.find(f"\n{section}\n") if section.startswith("##") else markdown.find(section)
                 for section in SECTIONS]
    assert all(position >= 0 for position in positions), [s for s, p in zip(SECTIONS, positions) if p < 0]
    assert positions == sorted(positions)  # and in this order
    links = linked_images(markdown)
    assert len(links) == 6
    for link in links:
        assert not Path(link).is_absolute()
        assert (report.parent / link).is_file(), link
        assert (report.parent / link).read_bytes().startswith(b"\x89PNG")


def test_report_content_what_was_trained_metrics_and_diagnosis(tmp_path):
    run_cnnlab(*make_artifacts(tmp_path), cwd=tmp_path, check=True)
    markdown = (tmp_path / "reports" / "report.md").read_text()

    for expected in ("shapes (synthetic test shapes)", "8 x 8 x 1", "3: circle, square, triangle",
                     "30 / 6 / 9", "cnn, 235 parameters", "rmsprop (learning rate 0.01, batch size 8)",
                     "augmentation                | mode online, flip horizontal", "3 (val_accuracy 0.8000)",
                     "75 s (1.3 min)"):
        assert expected in markdown, expected
    regularizers = re.search(r"\| regularizers +\| (.+?) +\|", markdown).group(1)
    assert regularizers == "dropout_rate 0.3, l2 0.001, batch_norm yes"  # label_smoothing 0 is off
    # The layer table, with Keras-style shapes.
    assert re.search(r"\| conv2d +\| Conv2D +\| \(None, 8, 8, 4\) +\| +40 \| yes", markdown)
    assert "Total parameters: 235 (trainable: 235)" in markdown
    assert re.search(r"\| top_k_accuracy \(k = 2\) +\| +1\.0000 \|", markdown)
    assert re.search(r"\| test_images +\| +9 \|", markdown)
    assert re.search(r"\| triangle +\| +0\.7500 \| +0\.3333 \| +0\.4615 \| +3 \|", markdown)
    # Best epoch 3: training error 3%, validation error 20% -> overfitting, with the numbers.
    assert "**Overfitting**: at the best epoch (3) the training error is 3.0% and the validation error is " \
           "20.0%" in markdown
    assert "overfit_gap = 5.0 points" in markdown


def test_report_is_byte_identical_when_run_twice(tmp_path):
    arguments = make_artifacts(tmp_path)
    run_cnnlab(*arguments, cwd=tmp_path, check=True)
    report = tmp_path / "reports" / "report.md"
    first = report.read_bytes()
    first_figures = {path.name: path.read_bytes() for path in (tmp_path / "reports" / "figures").iterdir()}
    run_cnnlab(*arguments, cwd=tmp_path, check=True)
    assert report.read_bytes() == first
    assert {path.name: path.read_bytes() for path in (tmp_path / "reports" / "figures").iterdir()} == first_figures
    assert sorted(first_figures) == ["augmentation_preview.png", "samples.png", "training_curves.png"]


def test_report_without_layer_table_or_preview_omits_them(tmp_path):
    run_cnnlab(*make_artifacts(tmp_path, layers=False, preview=False), cwd=tmp_path, check=True)
    markdown = (tmp_path / "reports" / "report.md").read_text()
    assert "### Model summary" not in markdown
    assert "Augmentation preview" not in markdown
    assert "## Fit diagnosis" in markdown
    for link in linked_images(markdown):
        assert (tmp_path / "reports" / link).is_file()


def test_report_thresholds_come_from_params(tmp_path):
    arguments = make_artifacts(tmp_path)
    write_params(tmp_path, {"report": {"overfit_gap": 0.25}})  # the 17-point gap is now acceptable
    run_cnnlab(*arguments, cwd=tmp_path, check=True)
    assert "**Good fit**" in (tmp_path / "reports" / "report.md").read_text()

    write_params(tmp_path, {"report": {"overfit_gap": 1.5}})
    result = run_cnnlab(*arguments, cwd=tmp_path)
    assert result.returncode == 2
    assert "'report.overfit_gap' must be a number in (0, 1)" in result.stderr


def test_report_names_a_missing_input(tmp_path):
    arguments = make_artifacts(tmp_path)
    (tmp_path / "reports" / "evaluation" / "per_class.csv").unlink()
    result = run_cnnlab(*arguments, cwd=tmp_path)
    assert result.returncode == 2
    assert "per-class table not found: reports/evaluation/per_class.csv" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["--help", "report"])
def test_report_does_not_import_tensorflow(tmp_path, command):
    arguments = make_artifacts(tmp_path) if command == "report" else [command]
    script = ("import sys\nfrom stages.cli import app\n"
              "try:\n    app(sys.argv[1:], standalone_mode=False)\n"
              "finally:\n    assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n")
    result = subprocess.run([sys.executable, "-c", script, *arguments], cwd=tmp_path, capture_output=True,
                            text=True, env={"PYTHONPATH": str(REPO_ROOT), "PATH": ""})
    assert result.returncode == 0, result.stderr
