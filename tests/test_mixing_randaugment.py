"""MixUp, CutMix and RandAugment (real TensorFlow ops): mixed labels, exact ops, seeding per
batch, and a resumed run that mixes exactly as an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stages.artifacts import TRANSFORM_KEYS
from stages.config import AugmentParams

pytestmark = pytest.mark.tf

tf = pytest.importorskip("tensorflow")
transforms = pytest.importorskip("stages.transforms")

SEED = np.array([3, 4], dtype=np.int64)
MIXES = {"mixup": {"mixup_alpha": 0.4}, "cutmix": {"cutmix_alpha": 1.0},
         "both": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}}


def policy_transforms(**changes) -> dict:
    params = AugmentParams(mode="online", **changes)
    return {key: getattr(params, key) for key in TRANSFORM_KEYS}


def flat_images(count: int, size: int = 8) -> np.ndarray:
    """Image i is the constant (i + 1) / count: every pixel says which image it came from."""
    return np.repeat(((np.arange(count) + 1) / count)[:, None, None, None], size * size, axis=1).reshape(
        count, size, size, 1).astype(np.float32)


@pytest.mark.parametrize("mix", MIXES)
def test_mixed_labels_sum_to_one_and_match_the_mixed_pixels(mix):
    count, classes = 32, 5
    images, labels = flat_images(count), np.eye(classes, dtype=np.float32)[np.arange(count) % classes]
    mixed_images, mixed_labels = transforms.build_mixer(policy_transforms(**MIXES[mix]))(images, labels, SEED)
    mixed_images, mixed_labels = mixed_images.numpy(), mixed_labels.numpy()
    np.testing.assert_allclose(mixed_labels.sum(axis=1), 1.0, atol=1e-6)
    partner = transforms.partners(count, tf.random.split(
        tf.random.experimental.stateless_fold_in(SEED, transforms.MIX_STREAM), 7)[0]).numpy()
    assert not np.any(partner == np.arange(count))  # nobody is mixed with itself
    own, other = images[:, 0, 0, 0], images[partner, 0, 0, 0]
    # The own share of each label is the own share of the pixels (CutMix: area; MixUp: blend).
    pixel_share = (mixed_images[..., 0] - other[:, None, None]) / (own - other)[:, None, None]
    label_share = mixed_labels[np.arange(count), np.arange(count) % classes]
    same_class = (np.arange(count) % classes) == (partner % classes)
    np.testing.assert_allclose(pixel_share.mean(axis=(1, 2))[~same_class], label_share[~same_class], atol=1e-5)
    assert (label_share < 0.999).sum() >= count // 2  # most images are really mixed
    if mix == "cutmix":  # pasted pixels are the partner's exactly: no blending
        assert np.all(np.isclose(pixel_share, 0.0, atol=1e-6) | np.isclose(pixel_share, 1.0, atol=1e-6))


def test_mix_probability_leaves_the_other_images_and_labels_alone():
    count = 64
    images, labels = flat_images(count), np.eye(4, dtype=np.float32)[np.arange(count) % 4]
    mixer = transforms.build_mixer(policy_transforms(mixup_alpha=1.0, mix_probability=0.25))
    mixed_images, mixed_labels = (value.numpy() for value in mixer(images, labels, SEED))
    untouched = np.all(mixed_images == images, axis=(1, 2, 3))
    np.testing.assert_array_equal(mixed_labels[untouched], labels[untouched])
    assert 4 <= (~untouched).sum() <= 30  # about a quarter of 64 mixed


def test_same_seed_and_batch_give_the_same_augmentation_and_mix():
    from stages.transforms import build_online_augmenter

    images = np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 1)).astype(np.float32)
    labels = np.eye(4, dtype=np.float32)[np.arange(16) % 4]
    policy = {"seed": 5, "mixes_labels": True, "value_range": {"low": [0.0], "high": [1.0]},
              "transforms": policy_transforms(randaugment_ops=2, mixup_alpha=0.4, cutmix_alpha=1.0)}
    augment_dataset = build_online_augmenter(policy)

    def batch(step: int):
        dataset = tf.data.Dataset.from_tensors((images, labels))
        return [value.numpy() for value in next(iter(augment_dataset(dataset, first_step=step)))]

    first, again, other = batch(7), batch(7), batch(8)
    for left, right in zip(first, again, strict=True):
        np.testing.assert_array_equal(left, right)
    assert not np.allclose(first[0], other[0]) and not np.allclose(first[1], other[1])


def randaugment_round(images, op: str, magnitude: int, sign=1.0):
    chosen = {"op": tf.fill([len(images)], transforms.RANDAUGMENT_OPS.index(op)),
              "sign": tf.fill([len(images)], sign)}
    strength = magnitude / transforms.RANDAUGMENT_MAX_MAGNITUDE
    return transforms.apply_randaugment_round(tf.constant(images), chosen, strength, "constant",
                                              tf.constant([0.0]), tf.constant([1.0])).numpy()


def test_randaugment_ops_on_exact_values():
    images = np.random.default_rng(2).uniform(0.2, 0.6, (4, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(randaugment_round(images, "identity", 30), images, atol=1e-6)
    np.testing.assert_allclose(randaugment_round(images, "solarize", 30), 1.0 - images, atol=1e-6)  # all inverted
    stretched = randaugment_round(images, "autocontrast", 0)
    np.testing.assert_allclose(stretched.min(axis=(1, 2, 3)), 0.0, atol=1e-6)
    np.testing.assert_allclose(stretched.max(axis=(1, 2, 3)), 1.0, atol=1e-6)
    posterized = randaugment_round(images, "posterize", 30)  # 4 bits: 16 levels
    np.testing.assert_allclose(posterized * 15, np.round(posterized * 15), atol=1e-5)
    shifted = randaugment_round(images, "translate_x", 10)  # 0.15 x 8 = 1.2 pixels to the right
    assert np.all(shifted[:, :, 0] == 0.0) and not np.allclose(shifted, images)
    brighter = randaugment_round(images, "brightness", 10, sign=1.0)
    np.testing.assert_allclose(brighter, images * 1.3, atol=1e-5)


def test_mixed_examples_in_the_preview(tmp_path):
    from stages.augment import augment
    from stages.config import PrepareParams
    from stages.prepare import prepare

    prepared = tmp_path / "prepared"
    prepare(PrepareParams(limit=8), 42, prepared)
    policy = augment(AugmentParams(mode="online", rotation=0, width_shift=0, height_shift=0, zoom=0,
                                   cutmix_alpha=1.0), 42, prepared, tmp_path / "augmented")
    assert policy["mixes_labels"] and (tmp_path / "augmented" / "preview.png").stat().st_size > 0
    from stages.augment import mixed_examples

    meta = json.loads((prepared / "meta.json").read_text())
    originals = np.load(prepared / "train_x.npy")[:3]
    shown = mixed_examples(policy, originals, [0, 1, 2], meta)
    assert len(shown["images"]) == 3 and all(" + " in caption for caption in shown["captions"])


# --- a resumed run mixes, averages and weighs exactly as an uninterrupted one -------------------
class Interrupted(Exception):
    pass


def interrupt_after(epochs: int):
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):  # after the checkpointer committed the epoch
            if epoch + 1 == epochs:
                raise Interrupted

    return Interrupt()


def test_a_resumed_run_with_mixup_cutmix_randaugment_and_ema_is_bit_identical(tmp_path):
    from stages.augment import augment
    from stages.config import parse_params
    from stages.train import train
    from tests.training_data import write_prepared

    params = {"seed": 4, "augment": {"mode": "online", "rotation": 0, "width_shift": 0, "height_shift": 0,
                                     "zoom": 0, "randaugment_ops": 2, "mixup_alpha": 0.4, "cutmix_alpha": 1.0,
                                     "mix_probability": 0.8},
              "model": {"conv_filters": [4], "dense_units": [8], "dense_dropout": 0.1},
              "train": {"epochs": 4, "batch_size": 16, "ema": 0.9, "class_weight": {"class1": 2.0}}}
    config = parse_params(params)
    runs = {}
    for name in ("uninterrupted", "resumed"):
        folder = tmp_path / name
        prepared = write_prepared(folder)
        augment(config.augment, config.seed, prepared, folder / "augmented")
        paths = (prepared, folder / "augmented", folder / "model.keras", folder / "summary.json",
                 folder / "live", folder / "checkpoints")
        if name == "resumed":
            with pytest.raises(Interrupted):
                train(config, *paths, callbacks=(interrupt_after(2),))
            assert not (folder / "model.keras").exists()
        runs[name] = train(config, *paths)
    assert runs["resumed"]["resumed_from_epoch"] == 2 and runs["uninterrupted"]["resumed_from_epoch"] == 0
    histories = [json.loads((tmp_path / name / "checkpoints" / "state.json").read_text())["history"]
                 for name in runs]
    assert histories[0] == histories[1]
    import keras

    weights = [keras.saving.load_model(tmp_path / name / "model.keras").get_weights() for name in runs]
    for left, right in zip(*weights, strict=True):
        np.testing.assert_array_equal(left, right)


def test_mixing_needs_online_mode_and_a_loss_that_takes_probabilities():
    from stages.config import ConfigError, parse_params

    with pytest.raises(ConfigError, match=r"'augment.cutmix_alpha' must be 0 unless augment.mode is 'online'"):
        parse_params({"augment": {"mode": "offline", "cutmix_alpha": 1.0}})
    with pytest.raises(ConfigError, match=r"'train.loss' must be 'categorical' or 'auto'"):
        parse_params({"augment": {"mode": "online", "mixup_alpha": 0.2}, "train": {"loss": "sparse_categorical"}})
    assert not AugmentParams(mode="online", mixup_alpha=0.2, rotation=0, width_shift=0, height_shift=0,
                             zoom=0).is_identity()


def test_mixing_on_a_two_class_dataset_is_one_line_before_training(tmp_path):
    from stages.augment import augment
    from stages.config import ConfigError, parse_params
    from stages.train import train
    from tests.training_data import write_prepared

    prepared = write_prepared(tmp_path, num_classes=2)
    config = parse_params({"augment": {"mode": "online", "cutmix_alpha": 1.0}})
    augment(config.augment, config.seed, prepared, tmp_path / "augmented")
    with pytest.raises(ConfigError, match=r"'augment.cutmix_alpha' must be 0 for a two-class dataset"):
        train(config, prepared, tmp_path / "augmented", tmp_path / "model.keras", tmp_path / "summary.json",
              tmp_path / "live", tmp_path / "checkpoints")
    assert not (tmp_path / "model.keras").exists() and not (tmp_path / "checkpoints").exists()
