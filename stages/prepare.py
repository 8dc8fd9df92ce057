"""prepare: load a dataset, split it, normalize it, and write the arrays the other stages read.

Writes into one folder (replaced atomically):
    {train,val,test}_x.npy   float32, NHWC, normalized (meta.json says how)
    {train,val,test}_y.npy   int64 class ids
    meta.json                class names, shapes, split sizes, source, normalization, skipped files,
                             data health (duplicates, images per class; stages/health.py)
    samples.png              the first images of each class
    duplicates.png           examples of duplicate pairs, when there are any

Splits are chosen as index arrays and the images are written chunk by chunk into
memory-mapped .npy files, so prepare never holds the decoded dataset and its normalized
float32 copy at once, and `train` can memory-map the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages import health, plots
from stages.artifacts import META_FILE
from stages.config import PrepareParams
from stages.datasets import RawDataset, load_dataset
from stages.images import normalize
from stages.io import atomic_dir, open_array, save_array, scratch_dir, write_json
from stages.progress import track
from stages.splits import limit_per_class, stratified_holdout

SPLITS = ("train", "val", "test")
CHUNK_BYTES = 64 * 2**20          # float32 images normalized and written per step
SAMPLES_PER_CLASS = 5


@dataclass(frozen=True)
class Split:
    images: np.ndarray            # the source array the split's rows come from
    indices: np.ndarray           # which rows, in the order they are written
    labels: np.ndarray            # their class ids

    def chunks(self, description: str):
        """Successive (start, images) pieces of the split, each about CHUNK_BYTES as float32."""
        rows = max(1, CHUNK_BYTES // (4 * math.prod(self.images.shape[1:])))
        for start in track(range(0, len(self.indices), rows), description):
            yield start, self.images[self.indices[start:start + rows]]


def split_dataset(raw: RawDataset, params: PrepareParams, seed: int) -> dict[str, Split]:
    """Stratified, seeded train/val/test split; the source's own test split is kept if it has one."""
    names = raw.class_names
    pool = limit_per_class(raw.train_labels, params.limit, seed)
    if raw.test_images is None:
        pool, test_rows = stratified_holdout(pool, raw.train_labels, params.test_split, seed,
                                             "prepare.test_split", names)
        test = Split(raw.train_images, test_rows, raw.train_labels[test_rows])
    else:
        test_rows = limit_per_class(raw.test_labels, params.limit, seed)
        test = Split(raw.test_images, test_rows, raw.test_labels[test_rows])
    train_rows, val_rows = stratified_holdout(pool, raw.train_labels, params.val_split, seed,
                                              "prepare.val_split", names)
    return {
        "train": Split(raw.train_images, train_rows, raw.train_labels[train_rows]),
        "val": Split(raw.train_images, val_rows, raw.train_labels[val_rows]),
        "test": test,
    }


def hash_split(split: Split, max_value: float, name: str, perceptual: bool) -> np.ndarray:
    """health.hash_images over the split, chunk by chunk."""
    parts = [health.hash_images(images, max_value, perceptual)
             for _, images in split.chunks(f"hashing {name} images")]
    return np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.uint64)


def position(splits: dict[str, Split], index: int) -> tuple[str, int]:
    """The split and the position in it of `index` over the concatenated splits."""
    for name in SPLITS:
        if index < len(splits[name].indices):
            return name, index
        index -= len(splits[name].indices)
    raise IndexError(index)


def draw_duplicates(splits: dict[str, Split], pairs: list, raw: RawDataset, path: Path) -> list[dict]:
    """duplicates.png of the example pairs; their description for meta.json."""
    examples, images, titles = [], ([], []), []
    for first, second, kind, distance in pairs:
        sides = []
        for side, index in enumerate((first, second)):
            name, place = position(splits, index)
            split = splits[name]
            row = int(split.indices[place])
            images[side].append(np.asarray(split.images[row], dtype=np.float32) / np.float32(raw.max_value))
            source = "test" if split.images is raw.test_images else "train"
            sides.append({"split": name, "source_split": source, "source_row": row,
                          "label": raw.class_names[int(split.labels[place])]})
        examples.append({"kind": kind, "distance": distance, "first": sides[0], "second": sides[1]})
        titles.append(tuple(f"{side['split']} #{side['source_row']}\n{side['label']}" for side in sides))
    if examples:
        captions = ["exact copy" if kind == "exact" else f"near, distance {distance}"
                    for _, _, kind, distance in pairs]
        plots.duplicate_pairs(np.stack(images[0]), np.stack(images[1]), titles, captions, path)
    return examples


def gather(splits: dict[str, Split]):
    """A function giving the raw images at positions over the concatenated splits."""
    sources = [splits[name] for name in SPLITS]
    split_of = np.repeat(np.arange(len(SPLITS)), [len(split.indices) for split in sources])
    rows = np.concatenate([split.indices for split in sources])

    def images(positions: np.ndarray) -> np.ndarray:
        return np.stack([sources[split_of[position]].images[rows[position]] for position in positions])

    return images


def drop_rows(splits: dict[str, Split], drop: np.ndarray) -> tuple[dict[str, Split], dict[str, int]]:
    """The splits without the positions `drop` names (over the concatenated splits), and how many
    each lost."""
    kept, removed, start = {}, {}, 0
    for name in SPLITS:
        split = splits[name]
        keep = ~np.isin(np.arange(start, start + len(split.indices)), drop)
        kept[name] = Split(split.images, split.indices[keep], split.labels[keep])
        removed[name] = int(len(keep) - keep.sum())
        start += len(keep)
    return kept, removed


def check_health(splits: dict[str, Split], raw: RawDataset, params: PrepareParams,
                 folder: Path) -> tuple[dict[str, Split], dict]:
    """Find duplicates within and across the splits, drop those `prepare.deduplicate` names,
    draw examples; return the kept splits and meta.json's `health` record."""
    perceptual = params.near_distance is not None
    hashes = np.concatenate([hash_split(splits[name], raw.max_value, name, perceptual) for name in SPLITS])
    split_of = np.repeat(np.arange(len(SPLITS)), [len(splits[name].indices) for name in SPLITS])
    labels = np.concatenate([splits[name].labels for name in SPLITS])
    duplicates = health.find_duplicates(hashes, split_of, labels, params.near_distance, params.near_difference,
                                        gather(splits), raw.max_value)
    kept, removed = drop_rows(splits, duplicates.dropped(params.deduplicate))
    record = health.health_record(duplicates, params.near_distance, params.near_difference,
                                  params.deduplicate, removed)
    record["examples"] = draw_duplicates(splits, health.example_pairs(duplicates), raw, folder / "duplicates.png")
    record["images_per_class"] = {
        name: dict(zip(raw.class_names, np.bincount(kept[name].labels, minlength=len(raw.class_names)).tolist()))
        for name in SPLITS}
    return kept, record


def channel_statistics(train: Split, scale: float) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the scaled training pixels, accumulated chunk by chunk."""
    channels = train.images.shape[-1]
    total, squares, count = np.zeros(channels), np.zeros(channels), 0
    for _, images in train.chunks("measuring train statistics"):
        values = images.astype(np.float64) / scale
        total += values.sum(axis=(0, 1, 2))
        squares += np.square(values).sum(axis=(0, 1, 2))
        count += values[..., 0].size
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    std[std < 1e-8] = 1.0  # a constant channel carries no information: leave it centred, unscaled
    return mean.tolist(), std.tolist()


def normalization_record(method: str, train: Split, scale: float) -> dict:
    """meta.json's `normalization`: what `images.normalize` (and predict) apply to raw pixels."""
    if method == "unit":
        return {"method": "unit", "scale": float(scale)}
    mean, std = channel_statistics(train, scale)
    return {"method": "standardize", "scale": float(scale), "mean": mean, "std": std}


def write_images(path: Path, split: Split, normalization: dict, name: str) -> None:
    """Normalize the split's images into a memory-mapped float32 .npy, chunk by chunk."""
    shape = (len(split.indices), *split.images.shape[1:])
    output = open_array(path, np.float32, shape)
    for start, images in split.chunks(f"writing {name} images"):
        output[start:start + len(images)] = normalize(images, normalization)
    output.flush()
    del output


def write_samples(split: Split, class_names: tuple[str, ...], scale: float, path: Path) -> None:
    """The first training images of each class, scaled to [0, 1] whatever the normalization."""
    rows = [split.indices[split.labels == class_id][:SAMPLES_PER_CLASS]
            for class_id in range(len(class_names))]
    labels = np.concatenate([np.full(len(chosen), class_id) for class_id, chosen in enumerate(rows)])
    images = np.asarray(split.images[np.concatenate(rows)], dtype=np.float32) / np.float32(scale)
    plots.sample_grid(images, labels, class_names, path, per_class=SAMPLES_PER_CLASS)


def build_meta(params: PrepareParams, seed: int, raw: RawDataset, splits: dict[str, Split],
               normalization: dict, health_record: dict) -> dict:
    image_shape = list(raw.train_images.shape[1:])
    return {
        "dataset": params.dataset,
        "source": raw.description,
        "class_names": list(raw.class_names),
        "num_classes": len(raw.class_names),
        "task": "binary" if len(raw.class_names) == 2 else "multiclass",
        "image_shape": image_shape,
        "color_mode": "grayscale" if image_shape[-1] == 1 else "rgb",
        "splits": {name: int(len(split.indices)) for name, split in splits.items()},
        "normalization": normalization,
        "seed": seed,
        "found_at": raw.found_at,
        "limit": params.limit,
        "skipped_files": list(raw.skipped),
        "ignored_files": raw.ignored_files,
        "skipped_links": list(raw.links),
        "health": health_record,
    }


def prepare(params: PrepareParams, seed: int, output_dir: str | Path) -> dict:
    """Run the stage; return the metadata written to meta.json."""
    output_dir = Path(output_dir)
    # Decoded folders go to scratch files beside the output (same disk), deleted at the end.
    with atomic_dir(output_dir) as folder, scratch_dir(output_dir) as scratch:
        raw = load_dataset(params, seed, Path(scratch))
        splits, health_record = check_health(split_dataset(raw, params, seed), raw, params, folder)
        normalization = normalization_record(params.normalization, splits["train"], raw.max_value)
        for name, split in splits.items():
            write_images(folder / f"{name}_x.npy", split, normalization, name)
            save_array(folder / f"{name}_y.npy", np.asarray(split.labels, dtype=np.int64))
        write_samples(splits["train"], raw.class_names, raw.max_value, folder / "samples.png")
        meta = build_meta(params, seed, raw, splits, normalization, health_record)
        write_json(folder / META_FILE, meta)
    return meta


def listed(items: list[str], shown: int = 5) -> str:
    more = f"; and {len(items) - shown} more" if len(items) > shown else ""
    return "; ".join(items[:shown]) + more


def skipped_warnings(meta: dict) -> list[str]:
    """One line naming the unreadable files prepare skipped, one naming the links to folders it
    did not follow (all of them are in meta.json)."""
    warnings = []
    if skipped := meta.get("skipped_files"):
        files = listed([f"{entry['path']} ({entry['reason']})" for entry in skipped])
        warnings.append(f"skipped {len(skipped)} unreadable image file(s): {files} "
                        "(all listed under skipped_files in meta.json)")
    if links := meta.get("skipped_links"):
        warnings.append(f"did not follow {len(links)} link(s) to folders: {listed(links)} (a link "
                        "could lead back into the data folder or out of it; move or copy the images "
                        "into the class folders instead)")
    return warnings


def health_summary(meta: dict) -> str:
    """One line: the duplicates prepare found (and removed), counted as in meta.json's `health`."""
    record = meta["health"]
    parts = []
    for kind in ("exact", "near"):
        counts = record[kind]
        within = sum(counts[name] for name in SPLITS)
        across = sum(count for key, count in counts.items() if "-" in key)
        parts.append(f"{kind} {within} within splits, {across} across splits")
    removed = sum(record["removed"].values())
    dropped = f"; removed {removed} (deduplicate: {record['deduplicate']})" if removed else ""
    return f"duplicates: {'; '.join(parts)}{dropped} (meta.json health)"
