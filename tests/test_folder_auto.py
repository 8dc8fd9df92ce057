"""`prepare.image_size: auto` and `prepare.color_mode: auto` (the defaults) on real image folders:
the median size of data_dir's images (scaled down to at most AUTO_MAX_SIDE) and grayscale when
every one is grayscale, chosen before the splits (test_dir follows) and recorded in meta.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cnnlab, write_params
from dataset_writers import COLORS, write_image

from stages.config import AUTO_MAX_SIDE, ConfigError, PrepareParams, parse_params
from stages.prepare import prepare


def folder_of(root: Path, sizes_and_modes: list[tuple[tuple[int, int], str]], classes=("bag", "shoe")) -> Path:
    """root/<class>/NNN.png, one image per (width, height), Pillow mode) for each class."""
    for class_index, name in enumerate(classes):
        color = list(COLORS.values())[class_index]
        for number, (size, mode) in enumerate(sizes_and_modes):
            write_image(root / name / f"{number:03d}.png", color, size, mode, seed=class_index * 50 + number)
    return root


def auto_params(root: Path, **overrides) -> PrepareParams:
    return PrepareParams(**{"dataset": "folder", "data_dir": str(root), "val_split": 0.2,
                            "test_split": 0.2, **overrides})


def test_a_tree_of_28x28_grayscale_pngs_gets_28x28x1_by_default(tmp_path: Path):
    root = folder_of(tmp_path / "fashion", [((28, 28), "L")] * 10)
    write_params(tmp_path, {"prepare": {"dataset": "folder", "data_dir": str(root)}})  # image_size, color_mode: defaults

    output = run_cnnlab("prepare", cwd=tmp_path, check=True).stdout

    meta = json.loads((tmp_path / "data" / "prepared" / "meta.json").read_text())
    assert meta["image_shape"] == [28, 28, 1] and meta["color_mode"] == "grayscale"
    assert "image_size auto: the median of 20 images" in meta["source"]
    assert "color_mode auto: all 20 images grayscale" in meta["source"]
    train_x = np.load(tmp_path / "data" / "prepared" / "train_x.npy", allow_pickle=False)
    assert train_x.shape[1:] == (28, 28, 1)
    assert "28x28x1 images" in output


def test_mixed_sizes_give_the_median_and_one_colour_image_gives_rgb(tmp_path: Path):
    # (width, height): medians 30 wide, 24 high; one RGB image among grayscale ones.
    sizes = [((30, 20), "L"), ((30, 24), "L"), ((50, 40), "L"), ((26, 24), "RGB"), ((34, 30), "L")]
    root = folder_of(tmp_path / "images", sizes)
    meta = prepare(auto_params(root, val_split=2, test_split=2), seed=0, output_dir=tmp_path / "p")
    assert meta["image_shape"] == [24, 30, 3] and meta["color_mode"] == "rgb"
    assert "in colour" in meta["source"]


def test_auto_size_is_scaled_down_to_the_cap_keeping_the_aspect(tmp_path: Path):
    root = folder_of(tmp_path / "photos", [((AUTO_MAX_SIDE * 3, AUTO_MAX_SIDE * 3 // 2), "RGB")] * 3)
    meta = prepare(auto_params(root, val_split=2, test_split=2), seed=0, output_dir=tmp_path / "p")
    assert meta["image_shape"] == [AUTO_MAX_SIDE // 2, AUTO_MAX_SIDE, 3]
    assert f"scaled down to at most {AUTO_MAX_SIDE} per side" in meta["source"]


def test_given_values_win_over_auto_and_the_test_folder_follows_the_train_folder(tmp_path: Path):
    root = folder_of(tmp_path / "train", [((28, 28), "L")] * 4)
    holdout = folder_of(tmp_path / "test", [((40, 40), "RGB")] * 2)
    meta = prepare(auto_params(root, test_dir=str(holdout), val_split=2), seed=0, output_dir=tmp_path / "a")
    assert meta["image_shape"] == [28, 28, 1]  # chosen on data_dir's images
    test_x = np.load(tmp_path / "a" / "test_x.npy", allow_pickle=False)
    assert test_x.shape == (4, 28, 28, 1)

    meta = prepare(auto_params(root, image_size=(16, 12), color_mode="rgb"), seed=0, output_dir=tmp_path / "b")
    assert meta["image_shape"] == [16, 12, 3] and "auto" not in meta["source"]


@pytest.mark.parametrize("key, value", [("image_size", "big"), ("image_size", [28]), ("color_mode", "gray")])
def test_a_bad_value_names_auto_among_the_choices(key, value):
    with pytest.raises(ConfigError, match=f"'prepare.{key}' must be .*'auto'"):
        parse_params({"prepare": {key: value}})


def test_auto_is_the_default_and_is_accepted():
    assert PrepareParams().image_size == "auto" and PrepareParams().color_mode == "auto"
    assert parse_params({"prepare": {"image_size": "auto", "color_mode": "auto"}}).prepare.image_size == "auto"
