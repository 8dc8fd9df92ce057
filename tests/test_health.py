"""Data health: exact and near duplicates within and across splits, found by prepare and
dropped by prepare.deduplicate (no TensorFlow)."""

from __future__ import annotations

import io
from pathlib import Path

import imagehash
import numpy as np
import pytest
from dataset_writers import write_mnist_idx
from PIL import Image

from stages import health
from stages.config import PrepareParams
from stages.prepare import prepare


def smooth_images(count: int, size: int = 28, seed: int = 0) -> np.ndarray:
    """Distinct smooth uint8 pictures (random 8x8 patterns enlarged), as photos and drawings are:
    a JPEG re-encode keeps them recognizable."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (count, 8, 8), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
                     for image in coarse])


def jpeg_round_trip(image: np.ndarray, quality: int = 90) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())))


def brighter(image: np.ndarray) -> np.ndarray:
    return np.clip(image.astype(np.int16) + 1, 0, 255).astype(np.uint8)


def test_the_perceptual_hash_is_imagehash_phash_bit_for_bit():
    gray = smooth_images(40, size=28, seed=1)
    rgb = np.stack([smooth_images(12, 20, seed) for seed in (2, 3, 4)], axis=-1)
    # Blank and mirror-symmetric images have frequencies that are exactly zero.
    blank = np.stack([np.full((28, 28), value, np.uint8) for value in (0, 7, 255)])
    mirrored = np.concatenate([gray[:6, :, :14], gray[:6, :, :14][:, :, ::-1]], axis=2)
    both_ways = np.concatenate([mirrored[:, :14], mirrored[:, :14][:, ::-1]], axis=1)
    for images in (gray[..., np.newaxis], rgb, blank[..., np.newaxis], mirrored[..., np.newaxis],
                   both_ways[..., np.newaxis]):
        ours = health.perceptual_hashes(images, 255)
        expected = [int(str(imagehash.phash(Image.fromarray(image.squeeze()))), 16) for image in images]
        assert ours.tolist() == expected


def test_digits_pixels_0_to_16_hash_as_their_8_bit_picture():
    pixels = np.random.default_rng(0).integers(0, 17, (6, 8, 8, 1)).astype(np.uint8)
    as_8_bit = np.rint(pixels * (255 / 16)).astype(np.uint8)
    assert np.array_equal(health.perceptual_hashes(pixels, 16), health.perceptual_hashes(as_8_bit, 255))


def brute_force_pairs(hashes: np.ndarray, max_distance: int) -> set[tuple[int, int]]:
    return {(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
            if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= max_distance}


@pytest.mark.parametrize("max_distance", [0, 1, 2, 4])
def test_multi_index_search_finds_exactly_the_pairs_within_the_distance(max_distance):
    rng = np.random.default_rng(max_distance)
    base = rng.integers(0, 2**63, 30, dtype=np.uint64)
    flips = [np.uint64(sum(1 << int(bit) for bit in rng.choice(64, count, replace=False)))
             for count in rng.integers(0, 6, 30)]
    hashes = np.concatenate([base, base ^ np.array(flips, dtype=np.uint64), base[:5]])
    pairs, distances = health.near_pairs(hashes, max_distance)
    assert {tuple(pair) for pair in pairs.tolist()} == brute_force_pairs(hashes, max_distance)
    assert np.all(distances <= max_distance) and len(brute_force_pairs(hashes, max_distance)) > 5


def test_counts_name_the_later_image_of_each_pair_by_split():
    images = smooth_images(8)
    # train: 0 1 2 0(copy) | val: 3 1(copy) | test: 4 2(copy) 3(JPEG)
    rows = [images[0], images[1], images[2], images[0], images[3], images[1], images[4], images[2],
            jpeg_round_trip(images[3])]
    stack = np.stack(rows)[..., np.newaxis]
    split_of = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    duplicates = health.find_duplicates(health.hash_images(stack, 255), split_of, np.zeros(9, int), 4, 0.025,
                                        lambda positions: stack[positions], 255)
    assert duplicates.counts(duplicates.exact) == {"train": 1, "val": 0, "test": 0, "train-val": 1,
                                                   "train-test": 1, "val-test": 0}
    assert duplicates.counts(duplicates.near) == {"train": 0, "val": 0, "test": 0, "train-val": 0,
                                                  "train-test": 0, "val-test": 1}
    assert duplicates.dropped("exact").tolist() == [3, 5, 7]
    assert duplicates.dropped("near").tolist() == [3, 5, 7, 8]
    assert duplicates.dropped("none").tolist() == []


# --- through the prepare stage, on IDX files the test writes ------------------------------------------
@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """A dataset in MNIST's IDX files: 50 distinct train images, one of them twice (the copy with
    another label), and a test part that holds an exact copy, a brightness +1 copy and a JPEG
    re-encode of train images among 10 new ones."""
    images = smooth_images(60, seed=5)
    train = np.concatenate([images[:50], images[7:8]])
    test = np.stack([images[3], brighter(images[4]), jpeg_round_trip(images[5]), *images[50:60]])
    parts = {"train_images": train, "train_labels": np.arange(len(train)) % 10,
             "test_images": test, "test_labels": np.r_[3, 4, 5, np.arange(10)]}
    return write_mnist_idx(tmp_path_factory.mktemp("planted") / "mnist", parts)


def prepare_planted(folder: Path, output: Path, **options) -> dict:
    params = PrepareParams(dataset="mnist", data_dir=str(folder), val_split=10, **{"near_distance": 2, **options})
    return prepare(params, 0, output)


@pytest.fixture(scope="module")
def prepared(planted: Path, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """prepare run once per deduplicate mode: {mode: (folder, meta)}."""
    runs = {}
    for mode in ("none", "exact", "near"):
        folder = tmp_path_factory.mktemp(f"prepared-{mode}")
        runs[mode] = folder, prepare_planted(planted, folder, deduplicate=mode)
    return runs


def total(counts: dict, across: bool) -> int:
    return sum(count for key, count in counts.items() if ("-" in key) == across)


def test_prepare_finds_the_planted_duplicates_within_and_across_splits(prepared):
    folder, meta = prepared["none"]
    record = meta["health"]
    # The repeated train image lands in train or val: within a split or across train-val.
    assert total(record["exact"], across=False) + record["exact"]["train-val"] == 1
    assert record["exact"]["train-test"] + record["exact"]["val-test"] == 1
    assert record["near"]["train-test"] + record["near"]["val-test"] == 2
    assert record["near"]["train"] == record["near"]["val"] == record["near"]["test"] == 0
    assert record["removed"] == {"train": 0, "val": 0, "test": 0}
    assert record["images_per_class"]["test"] == {str(c): 2 if c in (3, 4, 5) else 1 for c in range(10)}
    assert record["label_conflicts"] == {"exact": 1, "near": 0}
    assert len(record["examples"]) == 4 and record["examples"][0]["kind"] == "exact"
    assert (folder / "duplicates.png").stat().st_size > 1000


@pytest.mark.parametrize("mode, removed", [("exact", 2), ("near", 4)])
def test_deduplicate_removes_what_it_says_and_meta_counts_agree(prepared, mode, removed):
    before = prepared["none"][1]
    folder, meta = prepared[mode]
    assert sum(meta["health"]["removed"].values()) == removed
    assert meta["health"]["exact"] == before["health"]["exact"]  # counted before removal
    for split in ("train", "val", "test"):
        assert meta["splits"][split] == before["splits"][split] - meta["health"]["removed"][split]
        assert len(np.load(folder / f"{split}_y.npy")) == meta["splits"][split]
        assert sum(meta["health"]["images_per_class"][split].values()) == meta["splits"][split]
    # What is left: no image equals another one any more.
    images = np.concatenate([np.load(folder / f"{split}_x.npy") for split in ("train", "val", "test")])
    assert len({image.tobytes() for image in images}) == len(images)


def test_near_distance_null_finds_exact_copies_only(planted: Path, tmp_path: Path):
    meta = prepare_planted(planted, tmp_path / "prepared", near_distance=None, deduplicate="near")
    assert total(meta["health"]["exact"], True) + total(meta["health"]["exact"], False) == 2
    assert set(meta["health"]["near"].values()) == {0} and meta["health"]["near_distance"] is None
    assert sum(meta["health"]["removed"].values()) == 2


def test_a_folder_without_duplicates_draws_no_duplicates_figure(tmp_path: Path):
    images = smooth_images(40, seed=9)
    parts = {"train_images": images[:30], "train_labels": np.arange(30) % 10,
             "test_images": images[30:], "test_labels": np.arange(10)}
    meta = prepare_planted(write_mnist_idx(tmp_path / "mnist", parts), tmp_path / "prepared")
    assert total(meta["health"]["exact"], True) + total(meta["health"]["near"], True) == 0
    assert meta["health"]["examples"] == [] and not (tmp_path / "prepared" / "duplicates.png").exists()
