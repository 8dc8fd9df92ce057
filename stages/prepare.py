"""prepare: load a dataset, scale it, split it, and write the arrays the other stages read.

Writes into one folder (replaced atomically):
    {train,val,test}_x.npy   float32, NHWC, values in [0, 1]
    {train,val,test}_y.npy   int64 class ids
    meta.json                class names, shapes, split sizes, source, normalization
    samples.png              the first images of each class
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from stages import plots
from stages.config import PrepareParams
from stages.datasets import RawDataset, load_dataset
from stages.images import normalize
from stages.io import atomic_dir, save_array, write_json

SPLITS = ("train", "val", "test")


def split_dataset(raw: RawDataset, params: PrepareParams, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stratified, seeded train/val/test split; the source's own test split is kept if it has one."""
    images, labels = raw.train_images, raw.train_labels
    if raw.test_images is None:
        images, test_images, labels, test_labels = train_test_split(
            images, labels, test_size=params.test_split, stratify=labels, random_state=seed
        )
    else:
        test_images, test_labels = raw.test_images, raw.test_labels
    train_images, val_images, train_labels, val_labels = train_test_split(
        images, labels, test_size=params.val_split, stratify=labels, random_state=seed
    )
    return {
        "train": (train_images, train_labels),
        "val": (val_images, val_labels),
        "test": (test_images, test_labels),
    }


def prepare(params: PrepareParams, seed: int, output_dir: str | Path) -> dict:
    """Run the stage; return the metadata written to meta.json."""
    raw = load_dataset(params.dataset)
    splits = split_dataset(raw, params, seed)
    normalization = {"method": "unit", "scale": float(raw.max_value)}
    meta = {
        "dataset": params.dataset,
        "source": raw.description,
        "class_names": list(raw.class_names),
        "num_classes": len(raw.class_names),
        "image_shape": list(raw.train_images.shape[1:]),
        "splits": {name: int(len(labels)) for name, (_, labels) in splits.items()},
        "normalization": normalization,
        "seed": seed,
    }
    with atomic_dir(output_dir) as folder:
        for name, (images, labels) in splits.items():
            save_array(folder / f"{name}_x.npy", normalize(images, normalization))
            save_array(folder / f"{name}_y.npy", np.asarray(labels, dtype=np.int64))
        train_x = normalize(splits["train"][0], normalization)
        plots.sample_grid(train_x, splits["train"][1], raw.class_names, folder / "samples.png")
        write_json(folder / "meta.json", meta)
    return meta
