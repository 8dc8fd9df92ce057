"""Each augmentation transform, on exact parameters and on random draws (real TensorFlow ops)."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytestmark = pytest.mark.tf

tf = pytest.importorskip("tensorflow")
transforms = pytest.importorskip("stages.transforms")

NO_TRANSFORM = {"rotation": 0.0, "width_shift": 0.0, "height_shift": 0.0, "zoom": 0.0, "shear": 0.0,
                "horizontal_flip": False, "vertical_flip": False, "brightness": 0.0, "contrast": 0.0,
                "erasing": 0.0, "fill_mode": "constant", "randaugment_ops": 0, "randaugment_magnitude": 9,
                "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "mix_probability": 1.0}
SEED = np.array([3, 4], dtype=np.int64)


def geometry(batch_size=1, angle=0.0, shear=0.0, scale=1.0, shift_x=0.0, shift_y=0.0) -> dict:
    def column(value):
        return tf.fill([batch_size], float(value))

    return {"angle": column(math.radians(angle)), "shear": column(math.radians(shear)),
            "scale": column(scale), "shift_x": column(shift_x), "shift_y": column(shift_y)}


def random_images(count=16, size=12, channels=1, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (count, size, size, channels)).astype(np.float32)


def warp(images, fill_mode="constant", low=0.0, **parameters) -> np.ndarray:
    low = tf.constant([low], tf.float32)
    return transforms.apply_geometry(tf.constant(images), geometry(len(images), **parameters), fill_mode, low).numpy()


def test_zero_geometry_is_the_identity():
    images = random_images()
    np.testing.assert_allclose(warp(images), images, atol=1e-6)


def test_rotation_by_90_degrees_turns_the_image_clockwise():
    images = random_images(count=2, size=7)
    np.testing.assert_allclose(warp(images, angle=90), np.rot90(images, k=-1, axes=(1, 2)), atol=1e-5)


def test_shift_moves_the_image_and_fills_the_gap_with_black():
    images = random_images(count=2, size=6)
    shifted = warp(images, shift_x=2, shift_y=-1)
    np.testing.assert_allclose(shifted[:, :-1, 2:], images[:, 1:, :-2], atol=1e-6)
    assert np.all(shifted[:, :, :2] == 0) and np.all(shifted[:, -1:, :] == 0)


@pytest.mark.parametrize("fill_mode", ["nearest", "reflect", "wrap"])
def test_other_fill_modes_take_pixels_from_the_image(fill_mode):
    images = random_images(count=2, size=6) + 0.1
    shifted = warp(images, fill_mode=fill_mode, shift_x=2)
    assert np.all(shifted[:, :, :2] > 0)
    if fill_mode == "wrap":
        np.testing.assert_allclose(shifted, np.roll(images, 2, axis=2), atol=1e-6)


def test_constant_fill_is_black_in_standardized_data():
    images = np.full((1, 5, 5, 1), 0.7, np.float32)
    shifted = warp(images, low=-2.5, shift_x=1)
    assert np.all(shifted[:, :, 0] == -2.5) and np.allclose(shifted[:, :, 1:], 0.7)


def test_zoom_above_one_magnifies_about_the_center():
    image = np.zeros((1, 9, 9, 1), np.float32)
    image[0, 3:6, 3:6] = 1.0  # a 3x3 square in the middle
    zoomed = warp(image, scale=3.0)
    assert np.all(zoomed[0, 1:8, 1:8] > 0.5) and zoomed.sum() > 5 * image.sum()
    shrunk = warp(image, scale=0.5)
    assert shrunk.sum() < image.sum() and shrunk[0, 4, 4] > 0.5


def test_shear_slants_a_vertical_line():
    image = np.zeros((1, 9, 9, 1), np.float32)
    image[0, :, 4] = 1.0
    sheared = warp(image, shear=45)
    # x' = x + tan(45 deg) * (y - center): the line runs from the top-left to the bottom-right.
    assert [int(np.argmax(sheared[0, row, :, 0])) for row in range(9)] == list(range(9))


def test_flips_mirror_only_the_chosen_images():
    images = random_images(count=3)
    flips = {"horizontal_flip": tf.constant([True, False, True]), "vertical_flip": tf.constant([False, False, True])}
    flipped = transforms.apply_flips(tf.constant(images), flips).numpy()
    np.testing.assert_array_equal(flipped[0], images[0, :, ::-1])
    np.testing.assert_array_equal(flipped[1], images[1])
    np.testing.assert_array_equal(flipped[2], images[2, ::-1, ::-1])


def test_brightness_adds_a_fraction_of_the_value_range_and_clips():
    images = np.full((2, 4, 4, 1), 0.5, np.float32)
    images[:, 0, 0] = 0.95
    intensity = {"brightness": tf.constant([0.2, -0.2]), "contrast": tf.constant([1.0, 1.0])}
    out = transforms.apply_intensity(tf.constant(images), intensity, tf.constant([0.0]), tf.constant([1.0])).numpy()
    np.testing.assert_allclose(out[0, 1:, 1:], 0.7, atol=1e-6)
    np.testing.assert_allclose(out[1, 1:, 1:], 0.3, atol=1e-6)
    assert out[0, 0, 0, 0] == 1.0  # clipped to the top of the range


def test_contrast_scales_the_deviation_from_the_image_mean():
    images = np.zeros((1, 2, 2, 1), np.float32)
    images[0, :, :, 0] = [[0.4, 0.6], [0.4, 0.6]]
    intensity = {"brightness": tf.constant([0.0]), "contrast": tf.constant([2.0])}
    out = transforms.apply_intensity(tf.constant(images), intensity, tf.constant([0.0]), tf.constant([1.0])).numpy()
    np.testing.assert_allclose(out[0, :, :, 0], [[0.3, 0.7], [0.3, 0.7]], atol=1e-6)


def test_erasing_blackens_exactly_the_chosen_rectangle():
    images = random_images(count=2, size=6) + 0.5
    erasing = {"erase": tf.constant([True, False]), "top": tf.constant([1.0, 1.0]),
               "bottom": tf.constant([3.0, 3.0]), "left": tf.constant([2.0, 2.0]), "right": tf.constant([5.0, 5.0])}
    out = transforms.apply_erasing(tf.constant(images), erasing, tf.constant([0.0])).numpy()
    assert np.all(out[0, 1:3, 2:5] == 0)
    mask = np.ones(out.shape[1:], bool)
    mask[1:3, 2:5] = False
    np.testing.assert_array_equal(out[0][mask], images[0][mask])
    np.testing.assert_array_equal(out[1], images[1])


def test_sampled_geometry_stays_within_the_configured_ranges():
    policy = {**NO_TRANSFORM, "rotation": 10.0, "shear": 20.0, "zoom": 0.2, "width_shift": 0.25, "height_shift": 0.5}
    drawn = {name: value.numpy() for name, value in transforms.sample_geometry(policy, 500, 8, 16, SEED).items()}
    for name, bound in (("angle", math.radians(10)), ("shear", math.radians(20)), ("shift_x", 4.0), ("shift_y", 4.0)):
        assert np.all(np.abs(drawn[name]) <= bound) and drawn[name].std() > bound / 4, name
    assert np.all((drawn["scale"] >= 0.8) & (drawn["scale"] <= 1.2)) and drawn["scale"].std() > 0.05


def test_sampled_flips_are_fair_coins_and_disabled_flips_never_happen():
    flips = transforms.sample_flips({"horizontal_flip": True, "vertical_flip": False}, 1000, SEED)
    assert 400 < int(tf.reduce_sum(tf.cast(flips["horizontal_flip"], tf.int32))) < 600
    assert not bool(tf.reduce_any(flips["vertical_flip"]))


def test_sampled_erasing_rectangles_cover_2_to_40_percent_inside_the_image():
    drawn = {name: value.numpy() for name, value in transforms.sample_erasing(0.5, 1000, 28, 28, SEED).items()}
    area = (drawn["bottom"] - drawn["top"]) * (drawn["right"] - drawn["left"]) / 28**2
    assert np.all(drawn["top"] >= 0) and np.all(drawn["bottom"] <= 28)
    assert np.all(drawn["left"] >= 0) and np.all(drawn["right"] <= 28)
    assert area.min() > 0.01 and area.max() < 0.5
    assert 400 < drawn["erase"].sum() < 600


ONE_AT_A_TIME = [("rotation", 30.0), ("width_shift", 0.3), ("height_shift", 0.3), ("zoom", 0.3),
                 ("shear", 30.0), ("horizontal_flip", True), ("vertical_flip", True), ("brightness", 0.3),
                 ("contrast", 0.5), ("erasing", 1.0), ("randaugment_ops", 2)]


@pytest.mark.parametrize(("key", "value"), ONE_AT_A_TIME)
@pytest.mark.parametrize("channels", [1, 3])
def test_each_transform_changes_images_and_keeps_shape_dtype_and_range(key, value, channels):
    images = random_images(count=32, size=10, channels=channels)
    augment = transforms.build_augmenter({**NO_TRANSFORM, key: value}, [0.0] * channels, [1.0] * channels)
    out = augment(images, SEED)
    assert out.shape == images.shape and out.dtype == tf.float32
    out = out.numpy()
    assert out.min() >= 0.0 and out.max() <= 1.0
    changed = np.any(np.abs(out - images) > 1e-4, axis=(1, 2, 3))
    assert changed.sum() >= 8, f"{key} changed only {changed.sum()} of 32 images"


def test_same_seed_same_images_different_seed_different_images():
    images = random_images(count=8)
    policy = {**NO_TRANSFORM, "rotation": 20.0, "zoom": 0.1, "horizontal_flip": True, "brightness": 0.2, "erasing": 0.5}
    augment = transforms.build_augmenter(policy, [0.0], [1.0])
    first, again = augment(images, SEED).numpy(), augment(images, SEED).numpy()
    other = augment(images, np.array([3, 5], np.int64)).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_standardized_value_range_is_kept():
    low, high = [-0.4, -2.0, -1.0], [1.6, 2.0, 3.0]
    images = np.random.default_rng(1).uniform(low, high, (16, 8, 8, 3)).astype(np.float32)
    policy = {**NO_TRANSFORM, "rotation": 45.0, "brightness": 0.5, "contrast": 0.9, "erasing": 1.0,
              "randaugment_ops": 3, "randaugment_magnitude": 20}
    out = transforms.build_augmenter(policy, low, high)(images, SEED).numpy()
    assert np.all(out >= np.array(low, np.float32)) and np.all(out <= np.array(high, np.float32))
    assert np.any(np.isclose(out, np.array(low, np.float32)).all(axis=-1))  # erased and filled pixels are black
