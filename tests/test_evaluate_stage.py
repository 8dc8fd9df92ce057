"""The evaluate stage with a real (tiny) Keras model: every artifact, for multi-class and binary tasks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

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


def trained_cnn(path, num_classes: int, epochs: int = 3):
    import keras

    from stages.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(ModelParams(conv_filters=(4, 6), dense_units=(8,), dense_dropout=0.0), (8, 8, 1), num_classes)
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
                             "precision_weighted", "recall_weighted", "f1_weighted", "top_k", "test_images"]
    predicted = model.predict(test_x, verbose=0).argmax(axis=1)
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == test_y))
    assert metrics["test_images"] == 48 and metrics["top_k"] == 2

    matrix = pd.read_csv(evaluation / "confusion_matrix.csv", index_col="actual")
    assert matrix.columns.tolist() == class_names and matrix.index.tolist() == class_names
    assert matrix.to_numpy().sum() == 48
    assert np.trace(matrix.to_numpy()) / 48 == pytest.approx(metrics["accuracy"])
    rows = pd.read_csv(evaluation / "confusion.csv")
    assert rows.columns.tolist() == ["actual", "predicted"] and len(rows) == 48
    assert set(rows["actual"]) <= set(class_names)

    per_class = pd.read_csv(evaluation / "per_class.csv")
    assert per_class.columns.tolist() == ["class", "precision", "recall", "f1", "support"]
    per_class_json = json.loads((evaluation / "per_class.json").read_text())
    assert list(per_class_json) == class_names
    assert per_class_json["class 0"]["support"] == 16
    assert per_class["f1"].mean() == pytest.approx(metrics["f1_macro"], abs=1e-4)

    figures = sorted(path.name for path in (evaluation / "figures").iterdir())
    expected = ["confusion_matrix.png", "feature_maps.png"] + (["misclassified.png"] if metrics["accuracy"] < 1 else [])
    assert figures == sorted(expected)
    assert not (evaluation / "roc.csv").exists()


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
