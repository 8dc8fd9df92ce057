"""Tiny, learnable prepared datasets written in the real format (`prepare`'s arrays and
meta.json, then the real `augment` stage), for model and training tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stages.augment import augment
from stages.config import AugmentParams

SPLITS = {"train": 4, "val": 2, "test": 2}  # images per class, times `scale`


def class_images(labels: np.ndarray, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Noise plus one bright horizontal band whose row depends on the class."""
    height, width, channels = shape
    images = rng.uniform(0.0, 0.3, size=(len(labels), height, width, channels)).astype(np.float32)
    bands = max(height // (labels.max() + 1), 1)
    for index, label in enumerate(labels):
        images[index, label * bands:(label + 1) * bands, :, :] += 0.6
    return images.clip(0.0, 1.0)


def meta_record(class_names: list[str], image_shape, splits: dict | None = None, scale: float = 255.0) -> dict:
    """A meta.json with every field that `prepare` writes and stages.artifacts.read_meta checks."""
    return {"dataset": "synthetic", "source": "tests", "class_names": list(class_names),
            "num_classes": len(class_names), "image_shape": list(image_shape),
            "splits": {"train": 0, "val": 0, "test": 0, **(splits or {})},
            "normalization": {"method": "unit", "scale": scale}}


def write_prepared(folder: Path, num_classes: int = 3, shape=(8, 8, 1), scale: int = 8, seed: int = 0) -> Path:
    """folder/prepared (arrays + meta.json) and folder/augmented (augment stage, mode off)."""
    rng = np.random.default_rng(seed)
    prepared = folder / "prepared"
    prepared.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split, per_class in SPLITS.items():
        labels = rng.permutation(np.repeat(np.arange(num_classes), per_class * scale)).astype(np.int64)
        np.save(prepared / f"{split}_x.npy", class_images(labels, shape, rng))
        np.save(prepared / f"{split}_y.npy", labels)
        sizes[split] = int(len(labels))
    meta = {**meta_record([f"class{index}" for index in range(num_classes)], shape, sizes), "seed": seed}
    (prepared / "meta.json").write_text(json.dumps(meta))
    augment(AugmentParams(), seed, prepared, folder / "augmented")
    return prepared


def train_on_tiny_data(folder: Path, params: dict, num_classes: int = 3, shape=(8, 8, 1), scale: int = 8,
                       strategy=None) -> tuple[dict, dict]:
    """The train stage (in this process) on a fresh tiny dataset in `folder`; (summary, state)."""
    from stages.config import parse_params
    from stages.train import train

    prepared = write_prepared(folder, num_classes=num_classes, shape=shape, scale=scale)
    summary = train(parse_params(params), prepared, folder / "augmented", folder / "model.keras",
                    folder / "summary.json", folder / "live", folder / "checkpoints", strategy=strategy)
    return summary, json.loads((folder / "checkpoints" / "state.json").read_text())
