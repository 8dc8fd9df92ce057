"""The evaluate stage with a real (tiny) Keras model: every artifact, for multi-class and binary tasks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages.config import EvaluateParams, ModelParams
from stages.io import save_array
from tests.training_data import meta_record

pytestmark = pytest.mark.tf


def write_prepared(folder, class_names, test_x, test_y):
    folder.mkdir(parents=True)
    save_array(folder / "test_x.npy", test_x.astype(np.float32))
    save_array(folder / "test_y.npy", test_y.astype(np.int64))
    (folder / "meta.json").write_text(json.dumps(meta_record(class_names, test_x.shape[1:], {"test": len(test_y)})))


def tiny_data(num_classes: int, seed: int = 0):
    """Images whose class is the brightest quadrant-ish stripe: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = np.arange(48) % num_classes
    images = rng.random((48, 8, 8, 1)).astype(np.float32) * 0.3
    for index, label in enumerate(labels):
        images[index, :, 2 * label: 2 * label + 2, 0] += 0.7
    return images, labels


def trained_cnn(path, num_classes: int, epochs: int = 3, precision: str = "float32"):
    import keras

    from stages.models import build_model

    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(precision)  # what train.precision sets while the model is built
    try:
        model = build_model(ModelParams(conv_filters=(4, 6), dense_units=(8,), dense_dropout=0.0), (8, 8, 1),
                            num_classes)
    finally:
        keras.config.set_dtype_policy("float32")
    binary = num_classes == 2  # build_model gives two classes one sigmoid unit
    model.compile(optimizer="adam", loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    images, labels = tiny_data(num_classes, seed=1)
    targets = labels.astype(np.float32)[:, np.newaxis] if binary else labels
    model.fit(images, targets, epochs=epochs, batch_size=16, verbose=0)
    model.save(path)
    return model


def run_evaluate(tmp_path, num_classes, params=EvaluateParams(batch_size=16, top_k=2, misclassified_images=6)):
    from stages.evaluate import evaluate

    class_names = [f"class {i}" for i in range(num_classes)]
    test_x, test_y = tiny_data(num_classes, seed=2)
    write_prepared(tmp_path / "prepared", class_names, test_x, test_y)
    model = trained_cnn(tmp_path / "model.keras", num_classes)
    metrics = evaluate(params, tmp_path / "model.keras", tmp_path / "prepared", tmp_path / "metrics.json",
                       tmp_path / "evaluation", figure_dpi=60)
    return metrics, model, test_x, test_y, class_names


def test_evaluate_writes_metrics_tables_and_figures(tmp_path):
    metrics, model, test_x, test_y, class_names = run_evaluate(tmp_path, num_classes=3)
    evaluation = tmp_path / "evaluation"

    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert list(metrics) == ["accuracy", "loss", "top_k_accuracy", "precision_macro", "recall_macro", "f1_macro",
                             "precision_weighted", "recall_weighted", "f1_weighted", "top_k", "test_images",
                             "expected_calibration_error"]
    predicted = model.predict(test_x, verbose=0).argmax(axis=1)
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == test_y), rel=1e-3)  # 4 significant digits
    assert metrics["test_images"] == 48 and metrics["top_k"] == 2

    rows = pd.read_csv(evaluation / "confusion.csv")
    assert rows.columns.tolist() == ["actual", "predicted"] and len(rows) == 48
    assert set(rows["actual"]) <= set(class_names)
    assert (rows["actual"] == rows["predicted"]).mean() == pytest.approx(metrics["accuracy"], abs=1e-4)
    assert rows["actual"].tolist() == [class_names[label] for label in test_y]  # test-set order (McNemar)

    per_class = pd.read_csv(evaluation / "per_class.csv")
    assert per_class.columns.tolist() == ["class", "precision", "recall", "f1", "support"]
    assert per_class["class"].tolist() == class_names and per_class["support"].tolist() == [16, 16, 16]
    assert per_class["f1"].mean() == pytest.approx(metrics["f1_macro"], abs=1e-4)

    # Calibration: the bins hold every test image, and their weighted gap is the published ECE.
    reliability = pd.read_csv(evaluation / "calibration.csv")
    assert reliability["images"].sum() == 48
    gap = (reliability["images"] / 48 * (reliability["accuracy"] - reliability["confidence"]).abs()).sum()
    assert metrics["expected_calibration_error"] == pytest.approx(gap, abs=1e-3)
    thresholds = pd.read_csv(evaluation / "thresholds.csv")
    assert thresholds["threshold"].tolist() == [0.5, 0.7, 0.9]
    assert thresholds["images"].is_monotonic_decreasing and thresholds["images"].iloc[0] <= 48

    figures = sorted(path.name for path in (evaluation / "figures").iterdir())
    wrong = metrics["accuracy"] < 1
    expected = ["confusion_matrix.png", "feature_maps.png", "gradcam_correct.png"] + (
        ["gradcam_mistakes.png", "misclassified.png"] if wrong else [])
    assert figures == sorted(expected)
    # Multi-class: micro-averaged curves (DVC plots), no ROC figure.
    roc = pd.read_csv(evaluation / "roc.csv")
    assert roc.columns.tolist() == ["fpr", "tpr"] and roc["tpr"].iloc[-1] == 1.0
    for name in figures:
        width, height = Image.open(evaluation / "figures" / name).size
        assert width > 200 and height > 100, name


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])  # train.precision: auto on bfloat16 CPUs
def test_grad_cam_highlights_where_the_class_evidence_is(tmp_path, precision):
    from stages.gradcam import feature_map_layer, heat_maps

    model = trained_cnn(tmp_path / "model.keras", num_classes=3, epochs=20, precision=precision)
    images, labels = tiny_data(3, seed=3)
    assert feature_map_layer(model).name == [layer.name for layer in model.layers if "conv" in layer.name][-1]
    heat = heat_maps(model, images[:12], labels[:12])
    assert heat.shape == (12, 8, 8) and heat.min() >= 0 and heat.max() <= 1 + 1e-6
    assert np.isclose(heat.reshape(12, -1).max(axis=1), 1).any()
    # The class is a bright vertical stripe (columns 2k, 2k+1): on average, the heat there exceeds the rest.
    inside = [heat[index][:, 2 * label: 2 * label + 2].mean() for index, label in enumerate(labels[:12])]
    outside = [np.delete(heat[index], [2 * label, 2 * label + 1], axis=1).mean()
               for index, label in enumerate(labels[:12])]
    assert np.mean(inside) > np.mean(outside)


def test_feature_maps_are_the_first_conv_layers_activations(tmp_path):
    from stages.evaluate import feature_maps

    model = trained_cnn(tmp_path / "model.keras", num_classes=3, epochs=1)
    image = tiny_data(3)[0][0]
    maps = feature_maps(model, image, num_layers=5)
    assert [activations.shape for _, activations in maps] == [(8, 8, 4), (4, 4, 6)]
    first_conv = next(layer for layer in model.layers if layer.name == maps[0][0])
    # The visualization model gives exactly what the layer computes on the image.
    expected = np.asarray(first_conv(image[np.newaxis]))[0]
    assert maps[0][1] == pytest.approx(expected, abs=1e-5)
    assert len(feature_maps(model, image, num_layers=1)) == 1


def test_binary_task_writes_roc_and_precision_recall(tmp_path):
    metrics, *_ = run_evaluate(tmp_path, num_classes=2)
    evaluation = tmp_path / "evaluation"

    assert 0 <= metrics["roc_auc"] <= 1 and 0 <= metrics["average_precision"] <= 1
    roc = pd.read_csv(evaluation / "roc.csv")
    assert roc.columns.tolist() == ["fpr", "tpr"]
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(metrics["roc_auc"], abs=1e-4)
    assert pd.read_csv(evaluation / "precision_recall.csv").columns.tolist() == ["recall", "precision"]
    assert (evaluation / "figures" / "roc_precision_recall.png").read_bytes().startswith(b"\x89PNG")


def test_model_without_conv_layers_and_no_grid_requested(tmp_path):
    import keras

    from stages.evaluate import evaluate

    test_x, test_y = tiny_data(3)
    write_prepared(tmp_path / "prepared", ["a", "b", "c"], test_x, test_y)
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))
    keras.Model(inputs, outputs).save(tmp_path / "mlp.keras")

    params = EvaluateParams(misclassified_images=0, feature_map_layers=3)
    evaluate(params, tmp_path / "mlp.keras", tmp_path / "prepared", tmp_path / "metrics.json", tmp_path / "out")
    assert sorted(path.name for path in (tmp_path / "out" / "figures").iterdir()) == ["confusion_matrix.png"]
    from stages.gradcam import heat_maps

    assert heat_maps(keras.saving.load_model(tmp_path / "mlp.keras"), test_x[:2], test_y[:2]) is None
