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
from stages.calibration import expected_calibration_error, reliability_table, threshold_table
from conftest import REPO_ROOT, project_runner, run_cnnlab, write_params

CLASS_NAMES = ["circle", "square", "triangle"]
# The reviewer's order: results and fit first, then errors, trust, and what was trained.
SECTIONS = ["# cnnlab report", "## Test results", "## Fit diagnosis", "## Where the model errs",
            "### Per-class precision, recall and F1", "### Confusion matrix (test set)",
            "### Most confused class pairs", "### Misclassified test images",
            "## Can its confidence be trusted?", "### Calibration", "### Confidence thresholding",
            "### Grad-CAM", "## What was trained", "### Model summary",
            "### Params that differ from cnnlab's defaults", "## More figures", "### Sample training images",
            "### Augmentation preview", "### Feature maps of the first convolutional layers (one test image)"]
# The test set: three images per class; the model gets two triangles wrong (called squares).
ACTUAL = np.repeat(np.arange(3), 3)
PREDICTED = np.array([0, 0, 0, 1, 1, 1, 2, 1, 1])
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
               "best_epoch": 3, "monitor": "val_accuracy", "best_value": 0.8,
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
    probabilities = np.full((9, 3), 0.1)
    probabilities[np.arange(9), PREDICTED] = np.linspace(0.5, 0.95, 9)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    reliability = reliability_table(ACTUAL, probabilities)
    reliability.to_csv(evaluation / "calibration.csv", index=False)
    threshold_table(ACTUAL, probabilities).to_csv(evaluation / "thresholds.csv", index=False)
    (reports / "metrics.json").write_text(json.dumps({
        "accuracy": 0.7778, "loss": 0.61, "top_k_accuracy": 1.0, "precision_macro": 0.8,
        "recall_macro": 0.7778, "f1_macro": 0.77, "top_k": 2, "test_images": 9,
        "expected_calibration_error": round(expected_calibration_error(reliability), 4)}))
    pd.DataFrame({"actual": np.array(CLASS_NAMES)[ACTUAL], "predicted": np.array(CLASS_NAMES)[PREDICTED]}).to_csv(
        evaluation / "confusion.csv", index=False)
    pd.DataFrame({"class": CLASS_NAMES, "precision": [1.0, 0.6, 0.75], "recall": [1.0, 1.0, 0.3333],
                  "f1": [1.0, 0.75, 0.4615], "support": [3, 3, 3]}).to_csv(evaluation / "per_class.csv", index=False)
    matrix = np.array([[3, 0, 0], [0, 3, 0], [0, 2, 1]])
    plots.confusion_matrix_figure(matrix, CLASS_NAMES, evaluation / "figures" / "confusion_matrix.png")
    plots.misclassified_grid(images[:2], ["triangle", "triangle"], ["square", "square"], [0.9, 0.6],
                             evaluation / "figures" / "misclassified.png")
    plots.feature_maps_figure(images[0], "circle", [("conv2d", rng.random((8, 8, 4)))],
                              evaluation / "figures" / "feature_maps.png")
    plots.gradcam_grid(images[:2], rng.random((2, 8, 8)), ["a", "b"], "Grad-CAM",
                       evaluation / "figures" / "gradcam_mistakes.png")
    live = reports / "train" / "plots" / "metrics"
    for split, accuracy, loss in (("train", [0.5, 0.8, 0.97, 0.99], [1.0, 0.6, 0.1, 0.05]),
                                  ("eval", [0.5, 0.7, 0.80, 0.78], [1.0, 0.7, 0.6, 0.65])):
        write_tsv(live / split / "accuracy.tsv", "accuracy", accuracy)
        write_tsv(live / split / "loss.tsv", "loss", loss)
    write_params(root, {})
    return ["report", "--prepared", "data/prepared", "--augmented", "data/augmented",
            "--summary", "models/summary.json", "--metrics", "reports/metrics.json",
            "--evaluation", "reports/evaluation", "--live-dir", "reports/train", "--output", "reports/report.md"]


@pytest.fixture
def report_command(cnnlab_in_process):
    """report_command(arguments, folder): `cnnlab report ...` run in `folder` within this test's
    process (conftest's cnnlab_in_process). Fresh interpreters stay where the process is what is
    tested: exit codes and error lines, and that no TensorFlow is imported."""
    return lambda arguments, folder: cnnlab_in_process(*arguments, cwd=folder)


def linked_images(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def test_report_has_every_section_and_every_linked_image_exists(tmp_path, report_command):
    report_command(make_artifacts(tmp_path), tmp_path)
    report = tmp_path / "reports" / "report.md"
    markdown = report.read_text()

    positions = [markdown.find(f"\n{section}\n") if section.startswith("##") else markdown.find(section)
                 for section in SECTIONS]
    assert all(position >= 0 for position in positions), [s for s, p in zip(SECTIONS, positions) if p < 0]
    assert positions == sorted(positions)  # and in this order
    links = linked_images(markdown)
    assert len(links) == 8
    for link in links:
        assert not Path(link).is_absolute()
        assert (report.parent / link).is_file(), link
        assert (report.parent / link).read_bytes().startswith(b"\x89PNG")


def test_report_content_what_was_trained_metrics_and_diagnosis(tmp_path, report_command):
    report_command(make_artifacts(tmp_path), tmp_path)
    markdown = (tmp_path / "reports" / "report.md").read_text()

    for expected in ("shapes (synthetic test shapes)", "8 x 8 x 1", "3: circle, square, triangle",
                     "30 / 6 / 9", "cnn, 235 parameters", "rmsprop (learning rate 0.01, batch size 8)",
                     "augmentation                | mode online, flip horizontal", "3 (val_accuracy 0.8000)"):
        assert expected in markdown, expected
    assert "training time" not in markdown  # machine-dependent: it would change the committed report
    regularizers = re.search(r"\| regularizers +\| (.+?) +\|", markdown).group(1)
    assert regularizers == "dropout_rate 0.3, l2 0.001, batch_norm yes"  # label_smoothing 0 is off
    # The layer table, with Keras-style shapes.
    assert re.search(r"\| conv2d +\| Conv2D +\| \(None, 8, 8, 4\) +\| +40 \| yes", markdown)
    assert "Total parameters: 235 (trainable: 235)" in markdown
    assert re.search(r"\| top_k_accuracy \(k = 2\) +\| +1\.0000 \|", markdown)
    assert re.search(r"\| test_images +\| +9 \|", markdown)
    assert re.search(r"\| triangle +\| +0\.7500 \| +0\.3333 \| +0\.4615 \| +3 \|", markdown)
    # The most confused pair: two of the three triangles called squares.
    assert re.search(r"\| triangle +\| square +\| +2 \| +66\.7% \|", markdown)
    # Best epoch 3: training error 3%, validation error 20% -> overfitting, with the numbers.
    assert "**Overfitting**: at the best epoch (3) the training error is 3.0% and the validation error is " \
           "20.0%" in markdown
    assert "overfit_gap = 5.0 points" in markdown


def test_report_is_byte_identical_when_run_twice(tmp_path, report_command):
    arguments = make_artifacts(tmp_path)
    report_command(arguments, tmp_path)
    report = tmp_path / "reports" / "report.md"
    first = report.read_bytes()
    first_figures = {path.name: path.read_bytes() for path in (tmp_path / "reports" / "figures").iterdir()}
    report_command(arguments, tmp_path)
    assert report.read_bytes() == first
    assert {path.name: path.read_bytes() for path in (tmp_path / "reports" / "figures").iterdir()} == first_figures
    assert sorted(first_figures) == ["augmentation_preview.png", "reliability.png", "samples.png",
                                     "training_curves.png"]


def test_report_without_layer_table_or_preview_omits_them(tmp_path, report_command):
    report_command(make_artifacts(tmp_path, layers=False, preview=False), tmp_path)
    markdown = (tmp_path / "reports" / "report.md").read_text()
    assert "### Model summary" not in markdown
    assert "Augmentation preview" not in markdown
    assert "## Fit diagnosis" in markdown
    for link in linked_images(markdown):
        assert (tmp_path / "reports" / link).is_file()


def test_report_thresholds_come_from_params(tmp_path, report_command):
    arguments = make_artifacts(tmp_path)
    write_params(tmp_path, {"report": {"overfit_gap": 0.25}})  # the 17-point gap is now acceptable
    report_command(arguments, tmp_path)
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


def section(markdown: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = markdown.index(f"\n{heading}\n") + len(heading) + 2
    ends = [markdown.find(f"\n{'#' * size} ", start) for size in range(1, len(level) + 1)]
    return markdown[start:min([end for end in ends if end >= 0] or [len(markdown)])]


def test_calibration_thresholds_and_grad_cam_sections(tmp_path, report_command):
    report_command(make_artifacts(tmp_path), tmp_path)
    markdown = (tmp_path / "reports" / "report.md").read_text()
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())

    calibration = section(markdown, "### Calibration")
    assert f"**{metrics['expected_calibration_error']:.4f}**" in calibration
    assert "10 equal-width bins" in calibration and "figures/reliability.png" in calibration
    thresholds = pd.read_csv(tmp_path / "reports" / "evaluation" / "thresholds.csv")
    table = section(markdown, "### Confidence thresholding")
    for row in thresholds.itertuples():
        assert re.search(rf"\| +{row.threshold:.2f} \| +{row.images} \| +{row.coverage:.1%} \|", table)
    assert "evaluation/figures/gradcam_mistakes.png" in section(markdown, "### Grad-CAM")


def test_grad_cam_note_for_a_model_without_convolutional_layers(tmp_path, report_command):
    arguments = make_artifacts(tmp_path)
    (tmp_path / "reports" / "evaluation" / "figures" / "gradcam_mistakes.png").unlink()
    summary_path = tmp_path / "models" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["architecture"] = "mlp"
    summary["layers"] = [layer for layer in LAYERS if layer["type"] != "Conv2D"]
    summary_path.write_text(json.dumps(summary))
    report_command(arguments, tmp_path)
    grad_cam = section((tmp_path / "reports" / "report.md").read_text(), "### Grad-CAM")
    assert "Not drawn: the model (mlp) has no convolutional layer" in grad_cam


def test_params_body_lists_only_values_that_differ_from_the_defaults(tmp_path, report_command):
    report_command(make_artifacts(tmp_path), tmp_path)
    markdown = (tmp_path / "reports" / "report.md").read_text()
    body, full = section(markdown, "### Params that differ from cnnlab's defaults").split("<details>")
    assert re.search(r"\| train.optimizer +\| rmsprop +\| adam +\|", body)  # adam is the default
    assert "model.architecture" not in body  # cnn is the default
    assert "All params used for training" in full and re.search(r"\| model.architecture +\| cnn +\|", full)


def first_screen(markdown: str) -> str:
    """Everything before the section about where the model errs."""
    return markdown[:markdown.index("\n## Where the model errs\n")]


@pytest.fixture
def committed_run(tmp_path):
    """The report's inputs committed on `main` of a git repository (a base revision to compare with)."""
    arguments = make_artifacts(tmp_path)
    run = project_runner(tmp_path)
    run("git", "init", "-q", "-b", "main")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "base run")
    return tmp_path, arguments


def test_identical_run_against_the_base_revision_is_no_change(committed_run, report_command):
    folder, arguments = committed_run
    report_command(arguments, folder)
    markdown = (folder / "reports" / "report.md").read_text()
    screen = first_screen(markdown)
    assert "## Test results (against `main`)" in screen
    assert "**Verdict: no change** (McNemar's exact test on the 9 test images of both revisions: 0 fixed" in screen
    assert re.search(r"\| accuracy +\| +0\.7778 \| +0\.7778 \| +\+0\.0000 \|", screen)
    # The verdict and the metrics come before any params table, the training curves within the first screen.
    assert screen.index("Verdict") < screen.index("| accuracy") < markdown.index("### Params that differ")
    assert "figures/training_curves.png" in screen


def test_changed_run_shows_deltas_per_class_changes_and_the_verdict(committed_run, report_command):
    folder, arguments = committed_run
    evaluation = folder / "reports" / "evaluation"
    # The new model gets every triangle right: 2 of 9 images fixed, none broken.
    pd.DataFrame({"actual": np.array(CLASS_NAMES)[ACTUAL], "predicted": np.array(CLASS_NAMES)[ACTUAL]}).to_csv(
        evaluation / "confusion.csv", index=False)
    per_class = pd.read_csv(evaluation / "per_class.csv")
    per_class[["precision", "recall", "f1"]] = 1.0
    per_class.to_csv(evaluation / "per_class.csv", index=False)
    metrics_path = folder / "reports" / "metrics.json"
    metrics_path.write_text(json.dumps({**json.loads(metrics_path.read_text()), "accuracy": 1.0, "f1_macro": 1.0}))
    report_command(arguments, folder)
    markdown = (folder / "reports" / "report.md").read_text()

    screen = first_screen(markdown)
    # 2 discordant images, both fixed: p = 0.5, too few to call it better.
    assert "**Verdict: no change** (McNemar's exact test on the 9 test images of both revisions: 2 fixed" in screen
    assert re.search(r"\| accuracy +\| +0\.7778 \| +1\.0000 \| +\+0\.2222 \| +\+28\.57% \| no change", screen)
    per_class_table = section(markdown, "### Per-class precision, recall and F1")
    assert re.search(r"\| triangle +\| +1\.0000 \| +\+0\.2500 \| +1\.0000 \| +\+0\.6667 \| +1\.0000 \| "
                     r"+\+0\.5385 \| +3 \| no change", per_class_table)


def test_base_revision_that_does_not_exist_is_silently_skipped(committed_run, report_command):
    folder, arguments = committed_run
    write_params(folder, {"report": {"base_rev": "no-such-branch"}})
    report_command(arguments, folder)
    markdown = (folder / "reports" / "report.md").read_text()
    assert "## Test results\n" in markdown and "Verdict" not in markdown
    assert re.search(r"\| accuracy +\| +0\.7778 \|\n", markdown)
