"""augment: decide which training set `train` reads, and how it is augmented.

Writes into data/augmented (replaced atomically):
    policy.json          the resolved policy: mode, seed, transforms, value range
    preview.png          originals beside augmented variants (online and offline modes)
    train_{x,y}.npy      offline mode only: the originals followed by `copies` augmented copies

`off` uses the prepared training set as it is. `online` writes only the policy: `train`
maps `online_augmentation` (stages/transforms.py) over its training batches, so every epoch sees a
fresh random transform of every image and the data on disk never change. `offline`
materializes seeded copies once, a fixed training set that DVC versions. Both modes run
the same transform code (stages/transforms.py). Validation and test data are never
augmented: this stage reads only the training arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stages import plots
from stages.artifacts import META_FILE, POLICY_FILE, TRANSFORM_KEYS, read_meta, read_split
from stages.config import AugmentParams
from stages.io import atomic_dir, open_array, save_array, write_json
from stages.progress import track
from stages.runtime import import_tensorflow

PREVIEW_FILE = "preview.png"
# Mirrored digits are other symbols (or other digits): flips teach such a model wrong labels.
DIGIT_DATASETS = ("digits", "mnist")
OFFLINE_CHUNK = 256  # images per transform call; fixed so that the output never depends on memory
PREVIEW_CLASSES, PREVIEW_VARIANTS = 5, 6

logger = logging.getLogger(__name__)


def value_range(meta: dict) -> dict[str, list[float]]:
    """Per-channel values of a black and a full-intensity pixel in the prepared arrays."""
    channels = int(meta["image_shape"][-1])
    normalization = meta["normalization"]  # checked by read_meta: unit or standardize
    if normalization["method"] == "unit":
        return {"low": [0.0] * channels, "high": [1.0] * channels}
    mean = np.broadcast_to(np.asarray(normalization["mean"], dtype=np.float64), (channels,))
    std = np.broadcast_to(np.asarray(normalization["std"], dtype=np.float64), (channels,))
    return {"low": (-mean / std).tolist(), "high": ((1.0 - mean) / std).tolist()}


def flip_warnings(params: AugmentParams, dataset: str) -> list[str]:
    """One line per flip that turns this dataset's images into wrongly labelled ones."""
    if dataset not in DIGIT_DATASETS:
        return []
    return [
        f"augment.{name} is true but dataset '{dataset}' holds digits: a mirrored 2, 3, 4, 5 or 7 "
        f"is not that digit, so the model learns wrong labels; set augment.{name}=false"
        for name in ("horizontal_flip", "vertical_flip") if getattr(params, name)
    ]


def resolve_policy(params: AugmentParams, seed: int, meta: dict) -> dict:
    """What `train` applies: only the keys that matter for the chosen mode."""
    if params.mode == "off":
        return {"mode": "off", "materialized": False}
    policy = {
        "mode": params.mode,
        "seed": seed if params.seed is None else params.seed,
        "materialized": params.mode == "offline",
        "dataset": meta["dataset"],
        "transforms": {key: getattr(params, key) for key in TRANSFORM_KEYS},
        "value_range": value_range(meta),
        "mixes_labels": params.mixes_labels(),
        "warnings": flip_warnings(params, meta["dataset"]),
    }
    if params.mode == "offline":
        policy["copies"] = params.copies
        policy["train_images"] = (params.copies + 1) * int(meta["splits"]["train"])
    return policy


def write_copies(augment_batch: Callable, images: np.ndarray, labels: np.ndarray,
                 copies: int, seed: int, folder: Path) -> None:
    """train_x.npy: the originals, then copy 1 of every image, copy 2, ...; labels to match.

    Streams chunk by chunk into a memory-mapped .npy, so the set never needs to fit in memory.
    """
    tf = import_tensorflow()
    count = len(labels)
    output = open_array(folder / "train_x.npy", np.float32, ((copies + 1) * count, *images.shape[1:]))
    output[:count] = images
    augment = tf.function(augment_batch, reduce_retracing=True)
    chunks = [(copy, start) for copy in range(1, copies + 1) for start in range(0, count, OFFLINE_CHUNK)]
    for copy, start in track(chunks, f"writing {copies} augmented cop{'y' if copies == 1 else 'ies'}"):
        chunk_seed = tf.constant([seed, (copy << 32) + start // OFFLINE_CHUNK], dtype=tf.int64)
        augmented = augment(np.asarray(images[start:start + OFFLINE_CHUNK], np.float32), chunk_seed)
        output[copy * count + start:copy * count + start + len(augmented)] = augmented.numpy()
    output.flush()
    del output  # close the memory map before the folder is moved into place
    save_array(folder / "train_y.npy", np.tile(np.asarray(labels), copies + 1))


def write_preview(augment_batch: Callable, images: np.ndarray, labels: np.ndarray,
                  meta: dict, policy: dict, path: Path) -> None:
    """The first training image of a few classes spread over the class list, beside variants."""
    class_ids = np.unique(np.linspace(0, meta["num_classes"] - 1, PREVIEW_CLASSES).round().astype(int))
    rows = [(class_id, np.flatnonzero(labels == class_id)) for class_id in class_ids]
    rows = [(class_id, found[0]) for class_id, found in rows if len(found)]
    originals = np.stack([np.asarray(images[index], np.float32) for _, index in rows])
    variants = np.stack([
        augment_batch(np.repeat(original[np.newaxis], PREVIEW_VARIANTS, axis=0),
                      np.array([policy["seed"], row], dtype=np.int64)).numpy()
        for row, original in enumerate(originals)
    ])
    names = [meta["class_names"][class_id] for class_id, _ in rows]
    mixed = mixed_examples(policy, originals, [class_id for class_id, _ in rows], meta)
    plots.augmentation_preview(originals, variants, names, policy["value_range"], path, mixed=mixed)


def mixed_examples(policy: dict, originals: np.ndarray, class_ids: list[int], meta: dict) -> dict | None:
    """MixUp / CutMix applied to the preview's originals (each mixed, with a partner from the
    others): the mixed images and, per image, its label as 'share class + share class'."""
    from stages.transforms import policy_mixer

    mix = policy_mixer({**policy, "transforms": {**policy["transforms"], "mix_probability": 1.0}})
    if mix is None or len(originals) < 2:
        return None
    one_hot = np.eye(meta["num_classes"], dtype=np.float32)[class_ids]
    images, labels = mix(originals, one_hot, np.array([policy["seed"], len(originals)], dtype=np.int64))
    captions = []
    for label in np.asarray(labels):
        shares = sorted(((share, meta["class_names"][index]) for index, share in enumerate(label) if share > 0.005),
                        reverse=True)
        captions.append(" + ".join(f"{share:.2f} {name}" for share, name in shares))
    return {"images": np.asarray(images), "captions": captions}


def augment(params: AugmentParams, seed: int, prepared_dir: str | Path, output_dir: str | Path) -> dict:
    """Run the stage; return the policy written to policy.json."""
    prepared_dir = Path(prepared_dir)
    meta = read_meta(prepared_dir / META_FILE)  # fail early if prepare never ran (or its files are damaged)
    policy = resolve_policy(params, seed, meta)
    for warning in policy.get("warnings", []):
        logger.warning(warning)
    with atomic_dir(output_dir) as folder:
        if policy["mode"] != "off":
            images, labels = read_split(prepared_dir, "train", meta)
            from stages.transforms import policy_augmenter  # TensorFlow: only where a mode transforms

            augment_batch = policy_augmenter(policy)
            if policy["materialized"]:
                write_copies(augment_batch, images, labels, policy["copies"], policy["seed"], folder)
            write_preview(augment_batch, images, labels, meta, policy, folder / PREVIEW_FILE)
        write_json(folder / POLICY_FILE, policy)
    return policy
