"""Published models are deterministic archives: identical weights, identical bytes (dvc.lock)."""

from __future__ import annotations

import hashlib
import re
import time
import zipfile

import numpy as np
import pytest

from stages.io import save_keras_model

pytestmark = pytest.mark.tf


def test_two_saves_of_one_model_give_identical_bytes_that_load_back(tmp_path):
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))
    model.save(tmp_path / "first.keras")
    time.sleep(1.1)  # Keras stamps the save time, to the second
    keras.config.set_dtype_policy("float32")  # a fresh policy object: another memory address in config.json
    model.save(tmp_path / "second.keras")
    assert (tmp_path / "first.keras").read_bytes() != (tmp_path / "second.keras").read_bytes()

    save_keras_model(model, tmp_path / "first.published.keras")
    time.sleep(1.1)
    keras.config.set_dtype_policy("float32")
    save_keras_model(model, tmp_path / "second.published.keras")
    assert sorted(path.name for path in tmp_path.iterdir()) == [  # no scratch files left behind
        "first.keras", "first.published.keras", "second.keras", "second.published.keras"]
    digests = {hashlib.md5((tmp_path / f"{name}.published.keras").read_bytes()).hexdigest()
               for name in ("first", "second")}
    assert len(digests) == 1
    # Memory addresses (which differ between processes) became numbers in order of appearance.
    config = zipfile.ZipFile(tmp_path / "first.published.keras").read("config.json").decode()
    ids = {int(value) for value in re.findall(r'"shared_object_id": (\d+)', config)}
    assert ids and ids == set(range(1, len(ids) + 1))

    loaded = keras.saving.load_model(tmp_path / "first.published.keras", safe_mode=True)
    sample = np.random.default_rng(0).random((5, 4)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(sample, verbose=0), model.predict(sample, verbose=0))
