"""Data health: exact and near duplicates within and across the train/val/test splits.

Two images are
    exact duplicates  when their pixel arrays are identical (a BLAKE2b digest of the bytes;
                      every image of a dataset has the same shape and dtype);
    near duplicates   when they are not exact copies, their 64-bit perceptual hashes differ
                      in at most `near_distance` bits, and their pixels differ by at most
                      `near_difference` on average (a fraction of the full range: the hash
                      finds candidates, the pixels confirm them; on 28x28 images the hash alone
                      also pairs distinct look-alikes). The hash is imagehash's pHash
                      (imagehash.phash: grayscale, Lanczos resize to 32x32 with Pillow, 2-D
                      DCT-II, the 8x8 lowest frequencies compared with their median), computed
                      for a whole chunk of images at once; tests check it is bit for bit
                      imagehash.phash.

The splits are taken in the order train, val, test, each in its written order. An image
"has an earlier duplicate" when a duplicate of it comes before it in that order: in the same
split (a within-split copy) or in an earlier split (a cross-split copy: leakage). Each count
in the record is a number of such images, i.e. the images `prepare.deduplicate` would drop:
    exact   drops every image that has an earlier exact duplicate: within-split copies from
            all three splits, and val/test images whose exact copy is in train (or, for test, val);
    near    also drops val/test images with an earlier near duplicate in another split
            (near duplicates within one split are counted, never dropped);
    none    drops nothing.
Pairs are found with multi-index hashing (the 64 bits cut into near_distance + 1 blocks: two
hashes within the distance agree exactly on at least one block), so the cost grows with
the number of candidate pairs, not with the square of the number of images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "val", "test")
HASH_SIDE = 8                     # pHash: 8x8 low frequencies = 64 bits
RESIZED_SIDE = HASH_SIDE * 4      # of a 32x32 image (imagehash's highfreq_factor 4)
CHUNK_IMAGES = 4096
EXAMPLE_PAIRS = 8
PHASH = ("imagehash.phash (64 bits): grayscale, Lanczos resize to 32x32, 2-D DCT-II, "
         "8x8 lowest frequencies > their median")


# --- hashes ------------------------------------------------------------------------------------------
def content_digests(images: np.ndarray) -> np.ndarray:
    """One 128-bit BLAKE2b digest of the pixel bytes per image, as an (N, 2) uint64 array."""
    digests = b"".join(hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()
                       for image in images)
    return np.frombuffer(digests, dtype=np.uint64).reshape(len(images), 2)


def to_gray_uint8(images: np.ndarray, max_value: float):
    """The images as Pillow images of mode L, as imagehash converts them (0..max_value -> 0..255)."""
    from PIL import Image

    if images.dtype != np.uint8 or max_value != 255:
        images = np.clip(np.rint(np.asarray(images, np.float64) * (255.0 / max_value)), 0, 255).astype(np.uint8)
    if images.shape[-1] == 1:
        return [Image.fromarray(image[..., 0], mode="L") for image in images]
    return [Image.fromarray(image, mode="RGB").convert("L") for image in images]


def low_frequency_dct_basis() -> np.ndarray:
    """The HASH_SIDE lowest rows of the unnormalized DCT-II of length RESIZED_SIDE (SciPy's
    `dct(x)`: X[k] = 2 * sum_n x[n] cos(pi k (2n + 1) / 2N)), as a matrix: the hash needs only
    those 8 of the 32 frequencies, and NumPy multiplies them without importing SciPy's FFT
    (0.3 s of every `cnnlab prepare`)."""
    frequencies = np.arange(HASH_SIDE)[:, np.newaxis]
    positions = np.arange(RESIZED_SIDE)[np.newaxis, :]
    return 2.0 * np.cos(np.pi * frequencies * (2 * positions + 1) / (2 * RESIZED_SIDE))


def perceptual_hashes(images: np.ndarray, max_value: float) -> np.ndarray:
    """imagehash.phash of each image as one uint64 (first bit = most significant), chunk by chunk:
    Pillow resizes each image, NumPy computes the 8x8 lowest DCT frequencies and the medians of
    a whole chunk."""
    from PIL import Image

    basis = low_frequency_dct_basis()
    hashes = np.empty(len(images), dtype=np.uint64)
    for start in range(0, len(images), CHUNK_IMAGES):
        pictures = to_gray_uint8(images[start:start + CHUNK_IMAGES], max_value)
        small = np.stack([np.asarray(picture.resize((RESIZED_SIDE, RESIZED_SIDE), Image.Resampling.LANCZOS))
                          for picture in pictures]).astype(np.float64)
        low = (basis @ small @ basis.T).reshape(len(small), HASH_SIDE * HASH_SIDE)  # rows: axis 1, columns: axis 2
        # A frequency that is zero exactly (every frequency but the first of a blank image, the
        # odd ones of a mirror-symmetric one: SciPy's FFT gives 0) comes out of the products as
        # rounding noise; as 0 it compares with the median as imagehash's does.
        low[np.abs(low) <= 1e-9 * np.abs(low[:, :1])] = 0.0
        bits = low > np.median(low, axis=1, keepdims=True)
        hashes[start:start + len(small)] = np.packbits(bits, axis=1).view(">u8")[:, 0]
    return hashes


# --- pairs -------------------------------------------------------------------------------------------
def same_key_pairs(keys: np.ndarray) -> np.ndarray:
    """Every pair (i, j), i < j, of positions whose keys are equal, as an (P, 2) int64 array."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    group_end = np.repeat(ends, ends - starts)             # end of each sorted position's group
    partners = group_end - 1 - np.arange(len(keys))        # later positions in the same group
    left = np.repeat(np.arange(len(keys)), partners)
    offsets = np.arange(len(left)) - np.repeat(np.cumsum(partners) - partners, partners)
    pairs = np.stack([order[left], order[left + 1 + offsets]], axis=1)
    return np.sort(pairs, axis=1)


def unique_pairs(pairs: np.ndarray, count: int) -> np.ndarray:
    """The distinct rows of (P, 2) pairs of positions below `count`, sorted."""
    codes = np.unique(pairs[:, 0] * count + pairs[:, 1])
    return np.stack([codes // count, codes % count], axis=1)


def near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) whose hashes differ in at most `max_distance` bits, and their distances."""
    bounds = np.linspace(0, 64, max_distance + 2).astype(int)
    candidates = []
    for low, high in zip(bounds, bounds[1:]):
        block = (hashes >> np.uint64(low)) & np.uint64((1 << (high - low)) - 1)
        candidates.append(same_key_pairs(block))
    pairs = unique_pairs(np.concatenate(candidates), len(hashes))
    distances = np.bitwise_count(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]).astype(np.int64)
    keep = distances <= max_distance
    return pairs[keep], distances[keep]


# --- the record --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Duplicates:
    """Exact and near duplicate pairs (i < j) over the concatenated splits."""
    split_of: np.ndarray          # split id (0 train, 1 val, 2 test) of each image
    labels: np.ndarray
    exact: np.ndarray             # (P, 2)
    near: np.ndarray              # (Q, 2), not exact copies
    near_distances: np.ndarray    # (Q,)

    def counts(self, pairs: np.ndarray) -> dict[str, int]:
        """Per split (within) and per split pair (across): the images with an earlier duplicate."""
        first, later = self.split_of[pairs[:, 0]], self.split_of[pairs[:, 1]]
        keys = [(name, index, index) for index, name in enumerate(SPLITS)] + [
            (f"{SPLITS[a]}-{SPLITS[b]}", a, b) for a, b in ((0, 1), (0, 2), (1, 2))]
        return {key: int(np.unique(pairs[(first == a) & (later == b), 1]).size) for key, a, b in keys}

    def conflicts(self, pairs: np.ndarray) -> int:
        """Pairs whose two images carry different labels."""
        return int(np.count_nonzero(self.labels[pairs[:, 0]] != self.labels[pairs[:, 1]]))

    def dropped(self, mode: str) -> np.ndarray:
        """Positions (over the concatenated splits) that `prepare.deduplicate: mode` removes."""
        if mode == "none":
            return np.zeros(0, dtype=np.int64)
        later = [self.exact[:, 1]]
        if mode == "near":
            across = self.split_of[self.near[:, 0]] != self.split_of[self.near[:, 1]]
            later.append(self.near[across, 1])
        return np.unique(np.concatenate(later))


def hash_images(images: np.ndarray, max_value: float, perceptual: bool = True) -> np.ndarray:
    """(N, 3) uint64: the two words of each image's content digest, then its perceptual hash
    (0 when `perceptual` is off: the near duplicate search is skipped)."""
    phashes = perceptual_hashes(images, max_value) if perceptual else np.zeros(len(images), np.uint64)
    return np.column_stack([content_digests(images), phashes])


def mean_differences(pairs: np.ndarray, images: Callable[[np.ndarray], np.ndarray],
                     max_value: float) -> np.ndarray:
    """The mean absolute pixel difference of each pair, as a fraction of the full range."""
    differences = np.empty(len(pairs))
    for start in range(0, len(pairs), CHUNK_IMAGES):
        chunk = pairs[start:start + CHUNK_IMAGES]
        first, second = (np.asarray(images(chunk[:, side]), np.float64) for side in (0, 1))
        differences[start:start + len(chunk)] = np.abs(first - second).reshape(len(chunk), -1).mean(axis=1)
    return differences / max_value


def find_duplicates(hashes: np.ndarray, split_of: np.ndarray, labels: np.ndarray, near_distance: int | None,
                    near_difference: float, images: Callable[[np.ndarray], np.ndarray],
                    max_value: float) -> Duplicates:
    """The duplicate pairs among images hashed by `hash_images`, the splits concatenated in order;
    `images(positions)` gives the raw images at those positions, to confirm near pairs; no near
    duplicates are searched when `near_distance` is None."""
    _, groups = np.unique(hashes[:, :2], axis=0, return_inverse=True)
    groups = groups.reshape(-1)
    exact = unique_pairs(same_key_pairs(groups), len(groups))
    if near_distance is None:
        return Duplicates(split_of, np.asarray(labels), exact, np.zeros((0, 2), np.int64), np.zeros(0, np.int64))
    near, distances = near_pairs(np.ascontiguousarray(hashes[:, 2]), near_distance)
    candidates = groups[near[:, 0]] != groups[near[:, 1]]
    near, distances = near[candidates], distances[candidates]
    close = mean_differences(near, images, max_value) <= near_difference
    return Duplicates(split_of, np.asarray(labels), exact, near[close], distances[close])


def example_pairs(duplicates: Duplicates, count: int = EXAMPLE_PAIRS) -> list[tuple[int, int, str, int]]:
    """Up to `count` pairs (i, j, kind, distance) to show: leakage across splits first (exact
    copies, then near ones closest first), then copies within a split."""
    exact = [(int(i), int(j), "exact", 0) for i, j in duplicates.exact]
    near = [(int(i), int(j), "near", int(d)) for (i, j), d in zip(duplicates.near, duplicates.near_distances)]
    near.sort(key=lambda pair: pair[3])
    split_of = duplicates.split_of
    across = [pair for pair in exact + near if split_of[pair[0]] != split_of[pair[1]]]
    within = [pair for pair in exact + near if split_of[pair[0]] == split_of[pair[1]]]
    return (across + within)[:count]


def health_record(duplicates: Duplicates, near_distance: int | None, near_difference: float, mode: str,
                  dropped: dict[str, int]) -> dict:
    """meta.json's `health`: the counts (images with an earlier duplicate, see the module doc)."""
    return {
        "exact": duplicates.counts(duplicates.exact),
        "near": duplicates.counts(duplicates.near),
        "label_conflicts": {"exact": duplicates.conflicts(duplicates.exact),
                            "near": duplicates.conflicts(duplicates.near)},
        "near_distance": near_distance,
        "near_difference": near_difference,
        "perceptual_hash": PHASH,
        "deduplicate": mode,
        "removed": dropped,
    }
