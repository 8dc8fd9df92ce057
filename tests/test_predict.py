"""cnnlab predict: new image files converted as prepare did, classified as evaluate does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import run_cnnlab
from stages.errors import DataError
from stages.images import load_image, normalize
from stages.predict import (
    PARTIAL_FAILURE_EXIT_CODE, ImageSettings, class_probabilities, find_images, load_batch, top_k_table,
)

DIGITS_META = {"dataset": "digits", "image_shape": [8, 8, 1], "normalization": {"method": "unit", "scale": 16.0},
               "class_names": [str(digit) for digit in range(10)], "num_classes": 10,
               "splits": {"train": 1255, "val": 271, "test": 271}}


def write_digit_pngs(prepared: Path, folder: Path, split: str = "test") -> list[Path]:
    """The prepared split back as 8-bit PNGs of the raw digits values (0..16), in order."""
    folder.mkdir(parents=True, exist_ok=True)
    images = np.load(prepared / f"{split}_x.npy")
    raw = np.rint(images[..., 0] * 16).astype(np.uint8)
    assert np.array_equal(raw / np.float32(16), images[..., 0])  # the PNGs hold exactly the data
    paths = [folder / f"{index:04d}.png" for index in range(len(raw))]
    for path, pixels in zip(paths, raw):
        Image.fromarray(pixels, mode="L").save(path)
    return paths


# --- conversion and bookkeeping (no TensorFlow) -------------------------------------------------
def test_settings_come_from_meta_image_shape():
    assert ImageSettings.from_meta(DIGITS_META).image_size == (8, 8)
    assert ImageSettings.from_meta(DIGITS_META).color_mode == "grayscale"
    rgb = ImageSettings.from_meta({**DIGITS_META, "image_shape": [32, 24, 3]})
    assert (rgb.image_size, rgb.color_mode, rgb.input_shape) == ((32, 24), "rgb", (32, 24, 3))
    with pytest.raises(DataError, match="4 channels"):
        ImageSettings.from_meta({**DIGITS_META, "image_shape": [8, 8, 4]})


def test_find_images_walks_folders_and_rejects_missing_paths(tmp_path):
    for name in ("b/2.png", "a/1.JPG", "a/deep/3.bmp", "a/.hidden.png", "a/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    explicit = tmp_path / "a" / "notes.txt"
    found = find_images([tmp_path / "a", tmp_path / "b", explicit, tmp_path / "b" / "2.png"])
    assert [path.relative_to(tmp_path).as_posix() for path in found] == [
        "a/1.JPG", "a/deep/3.bmp", "b/2.png", "a/notes.txt"]
    with pytest.raises(DataError, match="no such file or folder"):
        find_images([tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files found"):
        find_images([tmp_path / "empty"])


def test_load_batch_converts_any_picture_and_reports_corrupt_files(tmp_path):
    settings = ImageSettings.from_meta({**DIGITS_META, "normalization": {"method": "unit", "scale": 255.0}})
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(tmp_path / "colour.png")
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "grey.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    files = [tmp_path / "colour.png", tmp_path / "corrupt.png", tmp_path / "grey.png"]

    inputs, loaded, failures = load_batch(files, settings)

    assert loaded == [files[0], files[2]]
    assert [path for path, _ in failures] == [files[1]] and "corrupt.png" in failures[0][1]
    assert inputs.shape == (2, 8, 8, 1) and inputs.dtype == np.float32
    expected = normalize(np.stack([load_image(path, (8, 8), "grayscale") for path in loaded]),
                         settings.normalization)
    assert np.array_equal(inputs, expected)
    assert load_batch([files[1]], settings)[0] is None


def test_top_k_table_ranks_classes_and_breaks_ties_like_argmax():
    probabilities = np.array([[0.1, 0.6, 0.3], [0.4, 0.2, 0.4]])
    table = top_k_table([Path("a.png"), Path("b.png")], probabilities, ["cat", "dog", "eel"], top_k=5)
    assert list(table.columns) == ["file", "predicted", "confidence", "top_2", "top_2_confidence",
                                   "top_3", "top_3_confidence"]
    assert table["predicted"].tolist() == ["dog", "cat"]  # the tie goes to the lower class id
    assert table["top_2"].tolist() == ["eel", "eel"]
    assert table["confidence"].tolist() == [0.6, 0.4]
    assert table["top_3_confidence"].tolist() == [0.1, 0.2]


def test_a_binary_models_single_unit_becomes_two_class_probabilities():
    sigmoid = np.array([[0.9], [0.2]], dtype=np.float32)
    assert np.allclose(class_probabilities(sigmoid, 2), [[0.1, 0.9], [0.8, 0.2]])
    softmax = np.array([[0.1, 0.7, 0.2]])
    assert np.array_equal(class_probabilities(softmax, 3), softmax)


# --- the command, on a real trained model -------------------------------------------------------
@pytest.mark.tf
def test_predictions_on_png_files_equal_the_evaluate_stage(trained_digits, tmp_path, cnnlab_in_process):
    paths = write_digit_pngs(trained_digits / "data" / "prepared", tmp_path / "pngs")
    output = tmp_path / "predictions.csv"

    result = cnnlab_in_process("predict", str(tmp_path / "pngs"), "--output", str(output), "--batch-size", "64",
                               "--top-k", "3", cwd=trained_digits)

    predictions = pd.read_csv(output, dtype={"predicted": str, "top_2": str, "top_3": str})
    evaluated = pd.read_csv(trained_digits / "reports" / "evaluation" / "confusion.csv", dtype=str)
    assert predictions["file"].tolist() == [str(path) for path in paths]
    assert predictions["predicted"].tolist() == evaluated["predicted"].tolist()
    assert (predictions["confidence"] >= predictions["top_2_confidence"]).all()
    assert (predictions["top_2_confidence"] >= predictions["top_3_confidence"]).all()
    assert "0000.png" in result.stdout and "predicted" in result.stdout  # the terminal table


@pytest.mark.tf
def test_a_corrupt_file_is_skipped_reported_and_sets_the_exit_code(trained_digits, tmp_path):
    written = write_digit_pngs(trained_digits / "data" / "prepared", tmp_path / "pngs")
    paths = written[:5]
    for path in written[5:]:
        path.unlink()
    corrupt = tmp_path / "pngs" / "0002_truncated.png"
    corrupt.write_bytes(paths[0].read_bytes()[:40])  # a PNG cut off mid-file
    output = tmp_path / "predictions.csv"

    result = run_cnnlab("predict", str(tmp_path / "pngs"), "--output", str(output), cwd=trained_digits)

    assert result.returncode == PARTIAL_FAILURE_EXIT_CODE == 1
    assert f"skipped unreadable file {corrupt}" in result.stderr
    assert "1 of 6 files could not be read" in result.stderr
    assert "Traceback" not in result.stderr
    assert pd.read_csv(output)["file"].tolist() == [str(path) for path in paths]


def test_user_errors_exit_2_with_one_line(tmp_path):
    """Checked before TensorFlow is imported: a typo costs a second, not a model load."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "meta.json").write_text(json.dumps(DIGITS_META))
    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(image)
    meta = ["--meta", str(tmp_path / "meta.json")]
    cases = {
        "no image files found": ["predict", str(tmp_path / "empty"), *meta],
        "no such file or folder": ["predict", str(tmp_path / "nope.png"), *meta],
        "trained model not found": ["predict", str(image), *meta, "--model", str(tmp_path / "no.keras")],
        "prepared metadata not found": ["predict", str(image), "--meta", str(tmp_path / "no.json")],
    }
    for message, args in cases.items():
        result = run_cnnlab(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.tf
def test_a_model_from_another_run_is_rejected(trained_digits, tmp_path):
    meta = json.loads((trained_digits / "data" / "prepared" / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "image_shape": [28, 28, 1]}))
    image = write_digit_pngs(trained_digits / "data" / "prepared", tmp_path / "pngs")[0]

    result = run_cnnlab("predict", str(image), "--meta", str(tmp_path / "meta.json"), cwd=trained_digits)

    assert result.returncode == 2
    assert "takes images of shape [8, 8, 1] and gives 10 outputs" in result.stderr
