"""evaluate: test-set predictions, metrics, the per-class table and the confusion matrix.

Writes:
    reports/metrics.json                   accuracy, loss, macro precision/recall/F1, images
    reports/evaluation/per_class.csv       class, precision, recall, f1, support (scikit-learn)
    reports/evaluation/confusion_matrix.csv  counts, rows = actual class, columns = predicted
    reports/evaluation/confusion.csv       one `actual,predicted` row per test image (dvc plots)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
)

from stages.config import EvaluateParams
from stages.io import atomic_dir, load_array, read_json, require_file, write_json
from stages.runtime import import_tensorflow


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict:
    """Headline metrics from true labels and predicted class probabilities."""
    class_ids = list(range(len(class_names)))
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, labels=class_ids, average="macro", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "loss": float(log_loss(labels, probabilities, labels=class_ids)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
        "test_images": int(len(labels)),
    }


def per_class_table(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=list(range(len(class_names))), zero_division=0
    )
    return pd.DataFrame({"class": class_names, "precision": precision, "recall": recall,
                         "f1": f1, "support": support})


def confusion_tables(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]):
    """The counts matrix (class names on both axes) and one actual/predicted row per image."""
    counts = confusion_matrix(labels, predicted, labels=list(range(len(class_names))))
    matrix = pd.DataFrame(counts, index=pd.Index(class_names, name="actual"), columns=class_names)
    names = np.asarray(class_names, dtype=object)
    rows = pd.DataFrame({"actual": names[labels], "predicted": names[predicted]})
    return matrix, rows


def predict_probabilities(model_path: str | Path, images: np.ndarray, batch_size: int) -> np.ndarray:
    import_tensorflow()
    import keras

    model = keras.saving.load_model(model_path, safe_mode=True)
    probabilities = np.asarray(model.predict(images, batch_size=batch_size, verbose=0), dtype=np.float64)
    if probabilities.shape[1] == 1:  # a binary model's single sigmoid unit: P(class 1)
        probabilities = np.hstack([1.0 - probabilities, probabilities])
    # float32 softmax rows sum to 1 only up to rounding; log_loss wants exact probabilities.
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def evaluate(
    params: EvaluateParams, model_path: str | Path, prepared_dir: str | Path,
    metrics_path: str | Path, output_dir: str | Path,
) -> dict:
    """Run the stage; return the metrics written to metrics.json."""
    prepared_dir = Path(prepared_dir)
    meta = read_json(prepared_dir / "meta.json", "prepared metadata")
    require_file(model_path, "trained model")
    test_x, test_y = load_array(prepared_dir / "test_x.npy"), load_array(prepared_dir / "test_y.npy", mmap=False)
    class_names = meta["class_names"]

    probabilities = predict_probabilities(model_path, test_x, params.batch_size)
    predicted = probabilities.argmax(axis=1)
    metrics = classification_metrics(test_y, probabilities, class_names)
    matrix, rows = confusion_tables(test_y, predicted, class_names)

    with atomic_dir(output_dir) as folder:
        per_class_table(test_y, predicted, class_names).to_csv(
            folder / "per_class.csv", index=False, float_format="%.4f")
        matrix.to_csv(folder / "confusion_matrix.csv")
        rows.to_csv(folder / "confusion.csv", index=False)
    write_json(metrics_path, metrics)
    return metrics
