"""The augment stage on real prepared digits: offline copies, online batches, preview, training."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from conftest import write_params
from stages.artifacts import read_training_set
from stages.augment import PREVIEW_FILE, TRANSFORM_KEYS, augment
from stages.config import AugmentParams, PrepareParams
from stages.prepare import prepare

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "prepared"
    prepare(PrepareParams(), 42, folder)
    return folder


def digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("copies", [1, 3])
def test_offline_writes_copies_plus_one_times_n_images_with_matching_labels(prepared, tmp_path, copies):
    before = digests(prepared)
    policy = augment(AugmentParams(mode="offline", copies=copies), 42, prepared, tmp_path / "augmented")
    images, labels = read_training_set(prepared, tmp_path / "augmented")
    original_x, original_y = np.load(prepared / "train_x.npy"), np.load(prepared / "train_y.npy")
    count = len(original_y)
    assert images.shape == ((copies + 1) * count, *original_x.shape[1:]) and images.dtype == np.float32
    assert policy["train_images"] == len(labels) == (copies + 1) * count
    np.testing.assert_array_equal(labels, np.tile(original_y, copies + 1))
    np.testing.assert_array_equal(images[:count], original_x)  # the originals come first, unchanged
    for copy in range(1, copies + 1):
        block = images[copy * count:(copy + 1) * count]
        assert np.mean(np.any(block != original_x, axis=(1, 2, 3))) > 0.9
    assert images.min() >= 0.0 and images.max() <= 1.0
    # Validation and test data are never augmented, and the prepared data are never edited.
    written = {path.name for path in (tmp_path / "augmented").iterdir()}
    assert written == {PREVIEW_FILE, "policy.json", "train_x.npy", "train_y.npy"}
    assert digests(prepared) == before


def test_offline_output_is_reproducible_from_the_seed(prepared, tmp_path):
    params = AugmentParams(mode="offline", rotation=15, erasing=0.5, brightness=0.1)
    augment(params, 42, prepared, tmp_path / "first")
    augment(params, 42, prepared, tmp_path / "second")
    augment(AugmentParams(mode="offline", rotation=15, erasing=0.5, brightness=0.1, seed=7), 42, prepared,
            tmp_path / "other")
    first = digests(tmp_path / "first")
    assert first == digests(tmp_path / "second")  # arrays, policy and preview, byte for byte
    assert first["train_x.npy"] != digests(tmp_path / "other")["train_x.npy"]


def test_online_writes_the_policy_and_no_arrays(prepared, tmp_path):
    policy = augment(AugmentParams(mode="online", rotation=12), 5, prepared, tmp_path / "augmented")
    assert {path.name for path in (tmp_path / "augmented").iterdir()} == {PREVIEW_FILE, "policy.json"}
    assert json.loads((tmp_path / "augmented" / "policy.json").read_text()) == policy
    assert policy["materialized"] is False and policy["transforms"]["rotation"] == 12.0
    images, labels = read_training_set(prepared, tmp_path / "augmented")
    np.testing.assert_array_equal(images, np.load(prepared / "train_x.npy"))
    assert (tmp_path / "augmented" / PREVIEW_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def epoch_batches(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(images.numpy(), labels.numpy()) for images, labels in dataset]


def test_online_gives_different_batches_in_different_epochs_and_repeats_from_the_seed(prepared):
    import tensorflow as tf

    from stages.transforms import build_online_augmenter

    images, labels = np.load(prepared / "train_x.npy")[:96], np.load(prepared / "train_y.npy")[:96]
    policy = {"seed": 9, "transforms": {key: getattr(AugmentParams(), key) for key in TRANSFORM_KEYS}, "value_range": {"low": [0.0], "high": [1.0]}}

    def pipeline(epoch: int):  # one epoch's batches in order, numbered as train numbers them
        batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(32)
        return build_online_augmenter(policy)(batches, first_step=epoch * 3)

    first, second = epoch_batches(pipeline(0)), epoch_batches(pipeline(1))
    for (first_x, first_y), (second_x, second_y), start in zip(first, second, range(0, 96, 32)):
        np.testing.assert_array_equal(first_y, labels[start:start + 32])  # labels travel with their images
        np.testing.assert_array_equal(second_y, first_y)
        assert first_x.shape == second_x.shape == (32, 8, 8, 1)
        assert not np.allclose(first_x, second_x)  # a fresh transform every epoch
        assert not np.allclose(first_x, images[start:start + 32])
    rebuilt = epoch_batches(pipeline(0))  # e.g. a resumed run rebuilding epoch 0
    for (first_x, _), (again_x, _) in zip(first, rebuilt):
        np.testing.assert_array_equal(first_x, again_x)  # same seed, same augmentation


def test_horizontal_flip_on_digits_is_logged_and_recorded(prepared, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="stages.augment"):
        policy = augment(AugmentParams(mode="online", horizontal_flip=True), 42, prepared, tmp_path / "augmented")
    assert len(policy["warnings"]) == 1 and "augment.horizontal_flip=false" in policy["warnings"][0]
    assert policy["warnings"][0] in caplog.text


def test_training_on_online_augmentation_through_the_cli(prepared, tmp_path, cnnlab_in_process):
    write_params(tmp_path, {"augment": {"mode": "online", "rotation": 10},
                            "train": {"epochs": 2, "batch_size": 64},
                            "model": {"conv_filters": [8], "dense_units": [16]}})
    cnnlab_in_process("augment", "--prepared", str(prepared), "--output", "augmented", cwd=tmp_path)
    result = cnnlab_in_process("train", "--prepared", str(prepared), "--augmented", "augmented",
                               "--model", "model.keras", "--summary", "summary.json", "--live-dir", "live", cwd=tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["params"]["augment"]["mode"] == "online"
    assert summary["train_images"] == len(np.load(prepared / "train_y.npy"))
    assert "best epoch" in result.stdout


def test_a_resumed_run_augments_its_epochs_exactly_as_an_uninterrupted_run(prepared):
    from stages.optimization import LossChoice
    from stages.train import batch_reader, training_dataset
    from stages.transforms import build_online_augmenter

    images, labels = np.load(prepared / "train_x.npy")[:96], np.load(prepared / "train_y.npy")[:96]
    policy = {"seed": 5, "transforms": {key: getattr(AugmentParams(), key) for key in TRANSFORM_KEYS},
              "value_range": {"low": [0.0], "high": [1.0]}}
    read = batch_reader(images, labels, LossChoice("sparse_categorical", "integer"), 10)

    def batches(epochs: range):
        dataset = training_dataset(images, labels, 32, 7, epochs, read, build_online_augmenter(policy))
        return [images_batch.numpy() for images_batch, _ in dataset]

    uninterrupted, resumed = batches(range(0, 3)), batches(range(2, 3))  # 3 batches per epoch
    assert len(uninterrupted) == 9 and len(resumed) == 3
    for left, right in zip(uninterrupted[6:], resumed, strict=True):
        np.testing.assert_array_equal(left, right)
    assert not np.allclose(uninterrupted[0], uninterrupted[3])  # epochs differ
