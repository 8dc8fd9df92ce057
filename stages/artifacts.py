"""The files the stages hand to each other, each read and checked in one place.

    data/prepared/meta.json         read_meta: class names, image shape, splits, normalization
    data/augmented/policy.json      read_policy: the augmentation mode and transforms
    {train,val,test}_{x,y}.npy      read_split, read_training_set: images and labels that agree
                                    with each other and with meta.json
    models/model.keras              read_model: a complete archive, no code, fitting meta.json
    resume state files              checkpoint_file_problem (stages/checkpoints.py reads state.json)

A file that is empty, truncated, of the wrong structure or from another run raises one
DataError naming the file, what is wrong and the stage to re-run, before any work starts;
no stage computes on a half-valid artifact.
"""

from __future__ import annotations

import dataclasses
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from stages.config import AUGMENT_MODES, AugmentParams
from stages.errors import DataError, environment_failure
from stages.io import read_json, require_file

META_FILE = "meta.json"
POLICY_FILE = "policy.json"
SPLITS = ("train", "val", "test")
NORMALIZATIONS = ("unit", "standardize")
# The augmentation policy's transforms: AugmentParams keys, checked with their constraints.
TRANSFORM_KEYS = ("rotation", "width_shift", "height_shift", "zoom", "shear", "horizontal_flip",
                  "vertical_flip", "brightness", "contrast", "erasing", "fill_mode", "randaugment_ops",
                  "randaugment_magnitude", "mixup_alpha", "cutmix_alpha", "mix_probability")


def damaged(path: str | Path, problem: str, stage: str) -> DataError:
    """The one message for a damaged artifact: which file, what is wrong, which stage writes it."""
    return DataError(f"{path}: {problem}; re-run the {stage} stage (dvc repro {stage}) to write it again")


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- meta.json and its normalization record ------------------------------------------------------
def normalization_problem(record: Any, channels: int) -> str | None:
    """Why `record` is not a normalization `images.normalize` can apply to `channels` channels."""
    if not isinstance(record, dict) or record.get("method") not in NORMALIZATIONS:
        return f"'normalization' must be an object whose method is one of {', '.join(NORMALIZATIONS)}"
    if not _is_number(record.get("scale")) or record["scale"] <= 0:
        return "'normalization.scale' must be a positive number"
    if record["method"] == "standardize":
        for key in ("mean", "std"):
            values = record.get(key)
            if not isinstance(values, list) or len(values) != channels or not all(map(_is_number, values)):
                return f"'normalization.{key}' must list {channels} number(s), one per channel"
        if min(record["std"]) <= 0:
            return "'normalization.std' must be positive"
    return None


HEALTH_COUNTS = ("train", "val", "test", "train-val", "train-test", "val-test")


def health_problem(record: Any, class_names: list[str]) -> str | None:
    """Why `record` is not the `health` record prepare writes (stages/health.py), or None."""
    if not isinstance(record, dict):
        return "'health' must be an object"
    for kind in ("exact", "near"):
        counts = record.get(kind)
        if not isinstance(counts, dict) or not all(_is_int(counts.get(key)) for key in HEALTH_COUNTS):
            return f"'health.{kind}' must give a count for each of {', '.join(HEALTH_COUNTS)}"
    removed, per_class = record.get("removed"), record.get("images_per_class")
    if not isinstance(removed, dict) or not all(_is_int(removed.get(name)) for name in SPLITS):
        return "'health.removed' must give the images removed from train, val and test"
    if not isinstance(per_class, dict) or not all(
            isinstance(per_class.get(name), dict) and all(_is_int(per_class[name].get(c)) for c in class_names)
            for name in SPLITS):
        return "'health.images_per_class' must count every class of train, val and test"
    return None


def meta_problem(meta: Any) -> str | None:
    """Why `meta` is not a meta.json that `prepare` wrote, or None."""
    if not isinstance(meta, dict):
        return f"holds a JSON {type(meta).__name__}, expected an object"
    missing = [key for key in ("dataset", "class_names", "num_classes", "image_shape", "normalization",
                               "splits") if key not in meta]
    if missing:
        return f"lacks {', '.join(repr(key) for key in missing)}"
    names, shape, splits = meta["class_names"], meta["image_shape"], meta["splits"]
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(name, str) for name in names):
        return "'class_names' must list at least two class names"
    if len(set(names)) != len(names):
        return "'class_names' lists a name twice"
    if meta["num_classes"] != len(names):
        return f"'num_classes' is {meta['num_classes']!r} but 'class_names' lists {len(names)}"
    if not isinstance(shape, list) or len(shape) != 3 or not all(_is_int(side, 1) for side in shape) \
            or shape[2] not in (1, 3):
        return f"'image_shape' must be [height, width, 1 or 3 channels], not {shape!r}"[:200]
    if not isinstance(splits, dict) or not all(_is_int(splits.get(name)) for name in SPLITS):
        return "'splits' must give the image count of train, val and test"
    if "health" in meta and (problem := health_problem(meta["health"], names)):  # older meta.json: none
        return problem
    return normalization_problem(meta["normalization"], shape[2])


def read_meta(path: str | Path) -> dict:
    """data/prepared/meta.json, checked: class names, image shape, split sizes, normalization."""
    meta = read_json(path, "prepared metadata")
    if problem := meta_problem(meta):
        raise damaged(path, problem, "prepare")
    return meta


# --- data/augmented/policy.json --------------------------------------------------------------------
def transforms_problem(transforms: Any) -> str | None:
    if not isinstance(transforms, dict) or set(transforms) != set(TRANSFORM_KEYS):
        return f"'transforms' must give exactly {', '.join(TRANSFORM_KEYS)}"
    fields = {spec.name: spec for spec in dataclasses.fields(AugmentParams)}
    for key in TRANSFORM_KEYS:
        constraint = fields[key].metadata["constraint"]
        try:
            constraint.convert(transforms[key])
        except (ValueError, TypeError):
            return f"transform {key} must be {constraint.describe()}"
    return None


def policy_problem(policy: Any) -> str | None:
    """Why `policy` is not a policy.json that `augment` wrote, or None."""
    if not isinstance(policy, dict) or policy.get("mode") not in AUGMENT_MODES:
        return f"'mode' must be one of {', '.join(AUGMENT_MODES)}"
    if policy.get("materialized") is not (policy["mode"] == "offline"):
        return "'materialized' must be true in offline mode and false otherwise"
    if policy["mode"] == "off":
        return None
    if not _is_int(policy.get("seed")):
        return "'seed' must be a whole number"
    if problem := transforms_problem(policy.get("transforms")):
        return problem
    if not isinstance(policy.get("mixes_labels", False), bool):
        return "'mixes_labels' must be true or false"
    limits = policy.get("value_range")
    if not isinstance(limits, dict) or not all(
            isinstance(limits.get(end), list) and limits[end] and all(map(_is_number, limits[end]))
            for end in ("low", "high")):
        return "'value_range' must give per-channel 'low' and 'high' values"
    if policy["mode"] == "offline" and not (_is_int(policy.get("copies"), 1) and _is_int(policy.get("train_images"))):
        return "offline mode needs whole numbers 'copies' and 'train_images'"
    return None


def read_policy(augmented_dir: str | Path) -> dict:
    """data/augmented/policy.json, checked: mode, seed, transforms, value range."""
    path = Path(augmented_dir) / POLICY_FILE
    policy = read_json(path, "augmentation policy")
    if problem := policy_problem(policy):
        raise damaged(path, problem, "augment")
    return policy


# --- the arrays ------------------------------------------------------------------------------------
def read_array(path: Path, stage: str, mmap: bool = True) -> np.ndarray:
    """One .npy file (memory-mapped by default); never a pickle."""
    require_file(path, "array")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        if environment_failure(error) is not None:
            raise
        pickled = "pickle" in str(error) or "Python objects" in str(error)  # np.load without, with mmap
        problem = ("holds Python objects (a pickle), which cnnlab never loads" if pickled
                   else "is not a complete .npy array (empty, truncated or another format)")
        raise damaged(path, problem, stage) from None


def split_problem(images: np.ndarray, labels: np.ndarray, meta: dict, count: int) -> str | None:
    """Why a split's images and labels disagree with each other or with meta.json, or None."""
    shape = tuple(meta["image_shape"])
    if images.dtype != np.float32 or images.ndim != 4 or images.shape[1:] != shape:
        return (f"images are {images.dtype} {list(images.shape)}, but meta.json records float32 "
                f"[N, {', '.join(map(str, shape))}]")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        return f"labels are {labels.dtype} {list(labels.shape)}, expected one whole number per image"
    if len(labels) != len(images):
        return f"{len(labels)} labels for {len(images)} images"
    if len(images) != count:
        return f"{len(images)} images, but {count} recorded when it was written"
    if len(labels) and (labels.min() < 0 or labels.max() >= meta["num_classes"]):
        return (f"labels range {labels.min()}..{labels.max()}, outside the {meta['num_classes']} "
                "classes of meta.json")
    return None


def read_split(folder: str | Path, split: str, meta: dict, stage: str = "prepare",
               count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """{split}_x.npy (memory-mapped) and {split}_y.npy of `folder`, checked against each other
    and against meta.json (`count`: the number of images expected, default meta's split size)."""
    folder = Path(folder)
    images = read_array(folder / f"{split}_x.npy", stage)
    labels = read_array(folder / f"{split}_y.npy", stage, mmap=False)
    count = meta["splits"][split] if count is None else count
    if problem := split_problem(images, labels, meta, count):
        raise damaged(folder / f"{split}_x.npy and {split}_y.npy", problem, stage)
    return images, labels


def read_training_set(prepared_dir: str | Path, augmented_dir: str | Path, meta: dict | None = None,
                      policy: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The training images and labels the augment stage chose (memory-mapped); `meta` and
    `policy` are read from the two folders unless given."""
    meta = meta or read_meta(Path(prepared_dir) / META_FILE)
    policy = policy or read_policy(augmented_dir)
    if policy["materialized"]:
        return read_split(augmented_dir, "train", meta, "augment", policy["train_images"])
    return read_split(prepared_dir, "train", meta)


# --- the model and the resume state ------------------------------------------------------------------
def zip_problem(path: Path, members: set[str], kind: str, contents: str) -> str | None:
    """Why `path` is not a complete zip file of `kind` (.keras, .npz) holding `members`, or None."""
    if path.stat().st_size == 0:
        return "is empty (0 bytes)"
    try:
        with zipfile.ZipFile(path) as archive:
            if not members <= set(archive.namelist()):
                return f"is a zip file but not {contents} (no {' and '.join(sorted(members))})"
            if archive.testzip() is not None:
                return f"is a damaged {kind} archive (a member fails its checksum)"
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        if environment_failure(error) is not None:
            raise
        return f"is not a complete {kind} archive (truncated or another format)"
    return None


def keras_archive_problem(path: Path) -> str | None:
    """Why `path` is not a complete .keras archive (a zip of config and weights), or None."""
    return zip_problem(path, {"config.json", "model.weights.h5"}, ".keras", "a Keras model archive")


def checkpoint_file_problem(path: Path) -> str | None:
    """Why a resume-state file (a .npz of NumPy arrays, see stages/checkpoints.py) cannot be
    used, or None."""
    if not path.is_file():
        return "is missing"
    return zip_problem(path, {"phase.npy"}, ".npz", "a cnnlab resume state")


def model_load_problem(error: Exception) -> str:
    text = str(error)
    if "safe_mode" in text or "Lambda" in text:
        return "holds Python code (a Lambda layer or a custom object), which cnnlab never runs"
    first = text.strip().splitlines()[0][:200] if text.strip() else ""
    return f"cannot be loaded as a Keras model ({type(error).__name__}: {first})"


def check_model_fits(model, meta: dict, path: Path) -> None:
    """The model takes meta.json's image shape and gives one output per class (one for two)."""
    expected, outputs = tuple(model.input_shape[1:]), model.output_shape[-1]
    num_classes = meta["num_classes"]
    if expected != tuple(meta["image_shape"]) or outputs not in (num_classes, 1 if num_classes == 2 else None):
        raise DataError(
            f"{path} takes images of shape {list(expected)} and gives {outputs} outputs, but "
            f"meta.json records {meta['image_shape']} and {num_classes} classes; the model and "
            "data/prepared come from different runs, re-run dvc repro"
        )


def read_model(path: str | Path, meta: dict | None = None):
    """A trained .keras model, loaded in Keras's safe mode (no code runs), checked against meta.json."""
    path = require_file(path, "trained model")
    if problem := keras_archive_problem(path):  # before the seconds-long TensorFlow import
        raise damaged(path, problem, "train")
    from stages.runtime import import_tensorflow

    import_tensorflow()
    import keras

    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as error:  # Keras reports bad archives with many exception types
        raise damaged(path, model_load_problem(error), "train") from None
    if meta is not None:
        check_model_fits(model, meta, path)
    return model
