"""evaluate: test-set predictions, metrics, per-class table, confusion matrix and figures.

Writes (DVC metrics and plots, committed; dvc.yaml says how DVC draws each):
    reports/metrics.json                     headline metrics (accuracy, loss, top-k, macro and
                                             weighted precision/recall/F1; ROC AUC and average
                                             precision for binary tasks), number of test images,
                                             each to 4 significant digits
    reports/evaluation/per_class.csv         class, precision, recall, f1, support (stages/metrics.py)
    reports/evaluation/confusion.csv         one `actual,predicted` row per test image, in test-set
                                             order (DVC's confusion plot; `cnnlab compare` pairs
                                             two revisions' rows for McNemar's test)
    reports/evaluation/roc.csv, precision_recall.csv   the curves' points: of the positive class
                                             for binary tasks, micro-averaged over classes otherwise
    reports/evaluation/calibration.csv       reliability table: test images, mean confidence and
                                             accuracy per confidence bin (its ECE in metrics.json)
    reports/evaluation/thresholds.csv        coverage and accuracy when abstaining below p = 0.5,
                                             0.7, 0.9
    reports/evaluation/figures/*.png         confusion matrix, most confident mistakes, feature
                                             maps, Grad-CAM heat maps (models with a convolutional
                                             layer), ROC and precision-recall curves (binary tasks)

Everything that needs the model is drawn here, so `report` never imports TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stages import gradcam, plots
from stages.artifacts import META_FILE, read_meta, read_model, read_split
from stages.calibration import expected_calibration_error, reliability_table, threshold_table
from stages.config import EvaluateParams
from stages.io import atomic_dir, rounded, write_json
from stages.metrics import (
    accuracy,
    average_precision,
    averaged,
    confusion_matrix,
    log_loss,
    precision_recall_curve,
    precision_recall_f1,
    roc_auc,
    roc_curve,
    top_k_accuracy,
)

FIGURES_DIR = "figures"
# Feature-map figures show at most this many channels per layer (the first ones).
FEATURE_MAP_CHANNELS = 16
# ROC and precision-recall CSVs keep at most this many points.
CURVE_POINTS = 1000


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: list[str], top_k: int = 1
) -> dict:
    """Headline metrics from true labels and predicted class probabilities (N, num_classes)."""
    predicted = probabilities.argmax(axis=1)
    k = min(top_k, len(class_names))
    metrics = {
        "accuracy": accuracy(labels, predicted),
        "loss": log_loss(labels, probabilities),
        "top_k_accuracy": top_k_accuracy(labels, probabilities, k),
    }
    precision, recall, f1, support = precision_recall_f1(labels, predicted, len(class_names))
    for average in ("macro", "weighted"):
        metrics.update({f"{name}_{average}": averaged(scores, support, average)
                        for name, scores in (("precision", precision), ("recall", recall), ("f1", f1))})
    if len(class_names) == 2 and len(np.unique(labels)) == 2:  # both undefined when the test set has one class
        metrics["roc_auc"] = roc_auc(labels == 1, probabilities[:, 1])
        metrics["average_precision"] = average_precision(labels == 1, probabilities[:, 1])
    metrics["top_k"] = k
    metrics["test_images"] = int(len(labels))
    return metrics


def per_class_table(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    precision, recall, f1, support = precision_recall_f1(labels, predicted, len(class_names))
    return pd.DataFrame({"class": class_names, "precision": precision, "recall": recall,
                         "f1": f1, "support": support})


def confusion_tables(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]):
    """The counts matrix (class names on both axes) and one actual/predicted row per image."""
    counts = confusion_matrix(labels, predicted, len(class_names))
    matrix = pd.DataFrame(counts, index=pd.Index(class_names, name="actual"), columns=class_names)
    names = np.asarray(class_names, dtype=object)
    rows = pd.DataFrame({"actual": names[labels], "predicted": names[predicted]})
    return matrix, rows


def curves(labels: np.ndarray, probabilities: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROC (fpr, tpr) and precision-recall points: of the positive class (class id 1) in a
    binary task, micro-averaged (every image and class as one yes/no decision) otherwise."""
    if probabilities.shape[1] == 2:
        truth, scores = labels == 1, probabilities[:, 1]
    else:
        truth = (labels[:, np.newaxis] == np.arange(probabilities.shape[1])).ravel()
        scores = probabilities.ravel()
    fpr, tpr, _ = roc_curve(truth, scores)
    precision, recall, _ = precision_recall_curve(truth, scores, drop_intermediate=True)
    return (thinned(pd.DataFrame({"fpr": fpr, "tpr": tpr})),
            thinned(pd.DataFrame({"recall": recall, "precision": precision})))


def thinned(points: pd.DataFrame, at_most: int = CURVE_POINTS) -> pd.DataFrame:
    """At most `at_most` points of a curve, evenly spread, first and last kept: enough to draw
    it, small enough to commit."""
    if len(points) <= at_most:
        return points
    return points.iloc[np.unique(np.linspace(0, len(points) - 1, at_most).round().astype(int))]


def most_confident_mistakes(labels: np.ndarray, probabilities: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to `count` misclassified images, the most confident prediction first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    # A stable sort keeps test-set order among equal confidences: the same grid every run.
    return wrong[np.argsort(-confidence, kind="stable")][:count]


def predict_probabilities(model, images: np.ndarray, batch_size: int, flip: bool = False) -> np.ndarray:
    """Class probabilities (N, classes); with `flip`, the mean over each image and its mirror."""
    probabilities = np.asarray(model.predict(images, batch_size=batch_size, verbose=0), dtype=np.float64)
    if flip:
        mirrored = np.asarray(model.predict(np.asarray(images)[:, :, ::-1], batch_size=batch_size, verbose=0),
                              dtype=np.float64)
        probabilities = (probabilities + mirrored) / 2
    if probabilities.shape[1] == 1:  # a binary model's single sigmoid unit: P(class 1)
        probabilities = np.hstack([1.0 - probabilities, probabilities])
    # float32 softmax rows sum to 1 only up to rounding; log_loss wants exact probabilities.
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def feature_maps(model, image: np.ndarray, num_layers: int) -> list[tuple[str, np.ndarray]]:
    """Activations (H, W, C) of the first `num_layers` convolutional layers for one image.

    A visualization model maps the classifier's input to those layers' outputs.
    """
    import keras

    conv_types = (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D)
    layers = [layer for layer in model.layers if isinstance(layer, conv_types)][:num_layers]
    if not layers:
        return []
    viewer = keras.Model(model.inputs, [layer.output for layer in layers])
    outputs = viewer.predict(np.asarray(image, dtype=np.float32)[np.newaxis], verbose=0)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    # Mixed-precision models compute in bfloat16/float16, which matplotlib cannot draw.
    return [(layer.name, np.asarray(output[0], dtype=np.float32)) for layer, output in zip(layers, outputs)]


def write_figures(params: EvaluateParams, model, test_x, test_y, probabilities, class_names,
                  matrix: pd.DataFrame, folder: Path, dpi: int) -> None:
    """Confusion matrix, most confident mistakes and feature maps, as PNGs in `folder`."""
    plots.confusion_matrix_figure(matrix.to_numpy(), class_names, folder / "confusion_matrix.png", dpi)
    mistakes = most_confident_mistakes(test_y, probabilities, params.misclassified_images)
    if len(mistakes):
        predicted = probabilities[mistakes].argmax(axis=1)
        plots.misclassified_grid(
            np.asarray(test_x[mistakes]), [class_names[i] for i in test_y[mistakes]],
            [class_names[i] for i in predicted], probabilities[mistakes, predicted],
            folder / "misclassified.png", dpi,
        )
    maps = feature_maps(model, test_x[0], params.feature_map_layers) if params.feature_map_layers else []
    if maps:
        plots.feature_maps_figure(np.asarray(test_x[0]), class_names[test_y[0]], maps,
                                  folder / "feature_maps.png", FEATURE_MAP_CHANNELS, dpi)


def write_gradcam_figures(model, test_x, test_y, probabilities, class_names, folder: Path, dpi: int) -> None:
    """Grad-CAM of the predicted class over the most confident mistakes and over one correctly
    classified image per class; nothing when the model has no convolutional layer."""
    predicted = probabilities.argmax(axis=1)
    for name, indices, title, frame in (
        ("gradcam_mistakes.png", most_confident_mistakes(test_y, probabilities, gradcam.MISTAKES),
         "Grad-CAM of the predicted class: the most confident mistakes", "tab:red"),
        ("gradcam_correct.png", gradcam.correct_examples(test_y, probabilities),
         "Grad-CAM of the predicted class: one correct image per class", "tab:green"),
    ):
        if not len(indices):
            continue
        images = np.asarray(test_x[indices])
        heat = gradcam.heat_maps(model, images, predicted[indices])
        if heat is None:
            return
        titles = [f"true: {class_names[test_y[i]]}\npredicted: {class_names[predicted[i]]}\n"
                  f"({probabilities[i, predicted[i]]:.0%})" for i in indices]
        plots.gradcam_grid(images, heat, titles, title, folder / name, dpi, frame=frame)


def write_calibration(test_y, probabilities, folder: Path) -> float:
    """calibration.csv and thresholds.csv in `folder`; returns the expected calibration error."""
    reliability = reliability_table(test_y, probabilities)
    reliability.to_csv(folder / "calibration.csv", index=False, float_format="%.4f")
    threshold_table(test_y, probabilities).to_csv(folder / "thresholds.csv", index=False, float_format="%.4f")
    return expected_calibration_error(reliability)


def evaluate(
    params: EvaluateParams, model_path: str | Path, prepared_dir: str | Path,
    metrics_path: str | Path, output_dir: str | Path, figure_dpi: int = 100,
) -> dict:
    """Run the stage; return the metrics written to metrics.json."""
    prepared_dir = Path(prepared_dir)
    meta = read_meta(prepared_dir / META_FILE)
    test_x, test_y = read_split(prepared_dir, "test", meta)
    model = read_model(model_path, meta)  # checked against meta.json's image shape and classes
    class_names = meta["class_names"]

    probabilities = predict_probabilities(model, test_x, params.batch_size, params.test_time_flip)
    predicted = probabilities.argmax(axis=1)
    metrics = classification_metrics(test_y, probabilities, class_names, params.top_k)
    matrix, rows = confusion_tables(test_y, predicted, class_names)
    per_class = per_class_table(test_y, predicted, class_names)

    roc, precision_recall = curves(test_y, probabilities)

    with atomic_dir(output_dir) as folder:
        per_class.to_csv(folder / "per_class.csv", index=False, float_format="%.4f")
        rows.to_csv(folder / "confusion.csv", index=False)
        roc.to_csv(folder / "roc.csv", index=False, float_format="%.4f")
        precision_recall.to_csv(folder / "precision_recall.csv", index=False, float_format="%.4f")
        if "roc_auc" in metrics:
            plots.binary_curves_figure(roc, precision_recall, metrics, class_names[1],
                                       folder / FIGURES_DIR / "roc_precision_recall.png", figure_dpi)
        write_figures(params, model, test_x, test_y, probabilities, class_names, matrix,
                      folder / FIGURES_DIR, figure_dpi)
        metrics["expected_calibration_error"] = write_calibration(test_y, probabilities, folder)
        write_gradcam_figures(model, test_x, test_y, probabilities, class_names, folder / FIGURES_DIR, figure_dpi)
    published = {name: rounded(value) if isinstance(value, float) else value for name, value in metrics.items()}
    write_json(metrics_path, published)
    return published
