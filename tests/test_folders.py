"""The `folder` source: class sub-folders of real image files, through the prepare stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cnnlab, write_params
from dataset_writers import COLORS, image_tree, write_image, write_truncated_png

from stages.config import PrepareParams
from stages.errors import DataError
from stages.prepare import prepare

CLASSES = {"zebra": "red", "ant": "green", "moth": "blue"}   # sorted: ant, moth, zebra


def folder_params(root: Path, **overrides) -> PrepareParams:
    values = {"dataset": "folder", "data_dir": str(root), "image_size": (8, 6),
              "val_split": 0.2, "test_split": 0.2}
    return PrepareParams(**{**values, **overrides})


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Three classes of 10 images, plus a truncated PNG, a text file, hidden files and folders."""
    root = image_tree(tmp_path / "images", CLASSES, per_class=10)
    write_truncated_png(root / "ant" / "broken.png")
    (root / "ant" / "notes.txt").write_text("not an image")
    (root / "moth" / ".DS_Store").write_bytes(b"\x00\x01binary junk")
    write_image(root / "moth" / ".hidden.png", (0, 0, 0))          # a valid image, but hidden
    write_image(root / "moth" / ".thumbs" / "t.png", (0, 0, 0))    # inside a hidden folder
    write_image(root / "zebra" / "nested" / "deeper.png", COLORS["red"], seed=7)
    write_image(root / ".trash" / "x.png", (0, 0, 0))              # a hidden class folder
    (root / "README.txt").write_text("top-level files are not classes")
    return root


def load_split(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    return (np.load(folder / f"{name}_x.npy", allow_pickle=False),
            np.load(folder / f"{name}_y.npy", allow_pickle=False))


def test_folder_tree_becomes_labelled_arrays(tree: Path, tmp_path: Path):
    output = tmp_path / "prepared"
    meta = prepare(folder_params(tree), seed=1, output_dir=output)

    assert meta["class_names"] == ["ant", "moth", "zebra"] and meta["num_classes"] == 3
    assert meta["image_shape"] == [8, 6, 3] and meta["color_mode"] == "rgb"
    assert meta["task"] == "multiclass" and meta["found_at"] == str(tree)
    # 31 readable images (10 + 10 + 11 with the nested one); the truncated PNG is skipped.
    assert sum(meta["splits"].values()) == 31
    assert meta["splits"] == {"train": 19, "val": 5, "test": 7}
    assert [entry["path"] for entry in meta["skipped_files"]] == [str(tree / "ant" / "broken.png")]
    assert "truncated" in meta["skipped_files"][0]["reason"]
    assert meta["ignored_files"] == 3      # notes.txt, .DS_Store, .hidden.png
    assert json.loads((output / "meta.json").read_text()) == meta
    assert (output / "samples.png").stat().st_size > 0

    # Labels follow the folders: each class's images have its colour, whatever their format.
    images = np.concatenate([load_split(output, name)[0] for name in ("train", "val", "test")])
    labels = np.concatenate([load_split(output, name)[1] for name in ("train", "val", "test")])
    assert images.dtype == np.float32 and 0 <= images.min() and images.max() <= 1
    for class_id, name in enumerate(meta["class_names"]):
        mean_colour = images[labels == class_id].mean(axis=(0, 1, 2))
        assert mean_colour.argmax() == int(np.argmax(COLORS[CLASSES[name]]))


def test_grayscale_mode_converts_mixed_inputs_to_one_channel(tree: Path, tmp_path: Path):
    meta = prepare(folder_params(tree, color_mode="grayscale", image_size=(5, 7)), 0, tmp_path / "p")
    train_x, _ = load_split(tmp_path / "p", "train")
    assert meta["image_shape"] == [5, 7, 1] and train_x.shape[1:] == (5, 7, 1)
    assert meta["color_mode"] == "grayscale"


def test_separate_test_folder_is_the_test_split(tree: Path, tmp_path: Path):
    test_root = image_tree(tmp_path / "holdout", CLASSES, per_class=2)
    meta = prepare(folder_params(tree, test_dir=str(test_root)), 0, tmp_path / "p")
    assert meta["splits"]["test"] == 6
    assert meta["splits"]["train"] + meta["splits"]["val"] == 31
    _, test_y = load_split(tmp_path / "p", "test")
    assert np.bincount(test_y).tolist() == [2, 2, 2]


def test_limit_caps_images_per_class_before_decoding(tree: Path, tmp_path: Path):
    meta = prepare(folder_params(tree, limit=5, val_split=3, test_split=3), 0, tmp_path / "p")
    assert sum(meta["splits"].values()) <= 15 and meta["limit"] == 5
    labels = np.concatenate([load_split(tmp_path / "p", name)[1] for name in ("train", "val", "test")])
    assert np.bincount(labels).max() <= 5


def test_two_classes_make_a_binary_task(tmp_path: Path):
    root = image_tree(tmp_path / "pair", {"no": "red", "yes": "blue"}, per_class=6)
    meta = prepare(folder_params(root), 0, tmp_path / "p")
    assert meta["class_names"] == ["no", "yes"] and meta["task"] == "binary"


def test_same_tree_same_seed_gives_identical_files(tree: Path, tmp_path: Path):
    prepare(folder_params(tree), 3, tmp_path / "a")
    prepare(folder_params(tree), 3, tmp_path / "b")
    for name in ("train_x.npy", "train_y.npy", "val_y.npy", "test_x.npy", "meta.json", "samples.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert not list(tmp_path.glob(".*scratch*")), "the decoding scratch files are removed"


# --- errors: one clear line naming the folder ---------------------------------------------------
def one_class(root: Path) -> str:
    image_tree(root, {"only": "red"}, per_class=3)
    return "found 1 class sub-folder(s) (only); a folder dataset needs at least two"


def empty_class(root: Path) -> str:
    image_tree(root, {"a": "red"}, per_class=3)
    (root / "b").mkdir()
    (root / "b" / "notes.txt").write_text("no images here")
    return f"{root / 'b'}: class folder holds no images"


def unreadable_class(root: Path) -> str:
    image_tree(root, {"a": "red"}, per_class=3)
    write_truncated_png(root / "b" / "1.png")
    (root / "b" / "2.jpg").write_text("text pretending to be a JPEG")
    return f"{root / 'b'}: none of its 2 image file(s) can be decoded"


def missing_folder(root: Path) -> str:
    return f"prepare.data_dir={root}: does not exist"


@pytest.mark.parametrize("make", [one_class, empty_class, unreadable_class, missing_folder])
def test_bad_folders_are_one_clear_error(tmp_path: Path, make):
    root = tmp_path / "images"
    expected = make(root)
    with pytest.raises(DataError) as caught:
        prepare(folder_params(root), 0, tmp_path / "p")
    assert expected in str(caught.value)
    assert not (tmp_path / "p").exists()

    write_params(tmp_path, {"prepare": {"dataset": "folder", "data_dir": str(root), "image_size": [8, 8]}})
    result = run_cnnlab("prepare", "--output", str(tmp_path / "p"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and expected in result.stderr
    assert "Traceback" not in result.stderr


def test_test_folder_with_other_classes_is_refused(tree: Path, tmp_path: Path):
    other = image_tree(tmp_path / "holdout", {"ant": "green", "bee": "red"}, per_class=2)
    with pytest.raises(DataError, match=r"class folders \(ant, bee\) differ from prepare.data_dir's"):
        prepare(folder_params(tree, test_dir=str(other)), 0, tmp_path / "p")


def test_cli_warns_about_skipped_files(tree: Path, tmp_path: Path):
    write_params(tmp_path, {"prepare": {"dataset": "folder", "data_dir": str(tree), "image_size": [8, 8]}})
    result = run_cnnlab("prepare", "--output", "prepared", cwd=tmp_path, check=True)
    assert "cnnlab: warning: skipped 1 unreadable image file(s)" in result.stderr
    assert "broken.png" in result.stderr
    assert f"prepared folder ({tree}): " in result.stdout
