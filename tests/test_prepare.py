"""The prepare stage on the standard sources: splits, normalization, limits, errors (no TensorFlow)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, run_cnnlab, write_params
from dataset_writers import (
    RunsACommand,
    cifar_like,
    mnist_like,
    write_cifar10,
    write_mnist_idx,
)

from stages.config import PrepareParams, parse_params
from stages.errors import ConfigError
from stages.images import normalize
from stages.prepare import prepare


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    return tmp_path


@pytest.fixture
def mnist_dir(offline: Path) -> Path:
    return write_mnist_idx(offline / "mnist-files", mnist_like(train_per_class=10, test_per_class=3))


def arrays(folder: Path) -> dict[str, np.ndarray]:
    return {path.stem: np.load(path, allow_pickle=False) for path in sorted(folder.glob("*.npy"))}


def test_val_is_held_out_from_train_and_test_is_the_source_test_split(mnist_dir: Path, offline: Path):
    meta = prepare(PrepareParams(dataset="mnist", data_dir=str(mnist_dir), val_split=20), 0, "prepared")
    out = arrays(offline / "prepared")
    assert meta["splits"] == {"train": 80, "val": 20, "test": 30}
    assert out["train_x"].shape == (80, 28, 28, 1) and out["train_x"].dtype == np.float32
    assert out["train_y"].dtype == np.int64
    assert np.bincount(out["val_y"]).tolist() == [2] * 10            # stratified
    parts = mnist_like(train_per_class=10, test_per_class=3)
    np.testing.assert_array_equal(out["test_y"], parts["test_labels"])  # in the source's order
    np.testing.assert_allclose(out["test_x"][..., 0], parts["test_images"] / np.float32(255))
    assert meta["normalization"] == {"method": "unit", "scale": 255.0}
    assert meta["found_at"] == str(mnist_dir) and meta["image_shape"] == [28, 28, 1]
    # Train and val are disjoint and together are the source's training images.
    rows = {image.tobytes() for image in np.concatenate([out["train_x"], out["val_x"]])}
    assert len(rows) == 100


def test_same_params_same_bytes_and_the_seed_changes_the_split(mnist_dir: Path, offline: Path):
    params = PrepareParams(dataset="mnist", data_dir=str(mnist_dir))
    prepare(params, 7, "a")
    prepare(params, 7, "b")
    prepare(params, 8, "c")
    for name in ("train_x.npy", "val_y.npy", "test_x.npy", "meta.json", "samples.png"):
        assert (offline / "a" / name).read_bytes() == (offline / "b" / name).read_bytes(), name
    assert (offline / "a" / "val_y.npy").read_bytes() != (offline / "c" / "val_y.npy").read_bytes()


def test_standardize_uses_train_statistics_for_every_split(offline: Path):
    parts = cifar_like(10, train_per_class=6, test_per_class=2)
    folder = write_cifar10(offline / "cifar-10-batches-py", parts)
    params = PrepareParams(dataset="cifar10", data_dir=str(folder), val_split=10,
                           normalization="standardize")
    meta = prepare(params, 0, "prepared")
    norm = meta["normalization"]
    assert norm["method"] == "standardize" and norm["scale"] == 255.0
    assert len(norm["mean"]) == len(norm["std"]) == 3
    out = arrays(offline / "prepared")
    np.testing.assert_allclose(out["train_x"].mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(out["train_x"].std(axis=(0, 1, 2)), 1, atol=1e-4)
    # The test split is normalized with the train statistics, exactly as predict will do.
    np.testing.assert_allclose(out["test_x"], normalize(parts["test_images"], norm), atol=1e-6)
    assert json.loads((offline / "prepared" / "meta.json").read_text())["normalization"] == norm


def test_limit_applies_per_class_to_train_and_test(mnist_dir: Path, offline: Path):
    meta = prepare(PrepareParams(dataset="mnist", data_dir=str(mnist_dir), limit=4, val_split=10),
                   0, "prepared")
    assert meta["splits"] == {"train": 30, "val": 10, "test": 30}
    out = arrays(offline / "prepared")
    assert np.bincount(np.concatenate([out["train_y"], out["val_y"]])).tolist() == [4] * 10


def test_digits_without_a_test_split_is_split_three_ways(offline: Path):
    meta = prepare(PrepareParams(val_split=100, test_split=0.2), 0, "prepared")
    assert meta["splits"]["test"] == 360 and meta["splits"]["val"] == 100
    assert sum(meta["splits"].values()) == 1797
    assert meta["normalization"]["scale"] == 16.0


def test_prepare_does_not_import_tensorflow(mnist_dir: Path, offline: Path):
    code = (
        "import sys; from stages.config import PrepareParams; from stages.prepare import prepare; "
        f"prepare(PrepareParams(dataset='mnist', data_dir={str(mnist_dir)!r}), 0, 'out'); "
        "heavy = [name for name in ('tensorflow', 'keras') if name in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=offline, check=True)


# --- configuration --------------------------------------------------------------------------------
@pytest.mark.parametrize("prepare_params, key", [
    ({"dataset": "imagenet"}, "prepare.dataset"),
    ({"dataset": "folder"}, "prepare.data_dir"),
    ({"test_dir": "holdout"}, "prepare.test_dir"),
    ({"val_split": 0}, "prepare.val_split"),
    ({"val_split": 1.5}, "prepare.val_split"),
    ({"test_split": True}, "prepare.test_split"),
    ({"image_size": [32]}, "prepare.image_size"),
    ({"color_mode": "cmyk"}, "prepare.color_mode"),
    ({"normalization": "zscore"}, "prepare.normalization"),
    ({"limit": 0}, "prepare.limit"),
])
def test_bad_prepare_params_name_the_key(prepare_params: dict, key: str):
    with pytest.raises(ConfigError, match=f"'{key}' must be"):
        parse_params({"prepare": prepare_params})


def test_val_split_takes_a_fraction_or_a_count():
    assert parse_params({"prepare": {"val_split": 5000}}).prepare.val_split == 5000
    assert parse_params({"prepare": {"val_split": 0.1}}).prepare.val_split == 0.1
    assert parse_params({"prepare": {"val_split": 5000, "test_split": 0.8}}).prepare.test_split == 0.8


def test_params_yaml_declares_every_prepare_key():
    import yaml

    declared = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["prepare"]
    assert set(declared) == set(PrepareParams.__dataclass_fields__)
    assert parse_params(yaml.safe_load((REPO_ROOT / "params.yaml").read_text())).prepare == PrepareParams()


# --- the command line: one clear line and exit code 2 for every user error --------------------------
def crafted_cifar(root: Path) -> tuple[dict, str]:
    folder = write_cifar10(root / "cifar-10-batches-py", cifar_like(10, 1, 1))
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"data": RunsACommand(f"touch {root / 'pwned'}")}, protocol=2))
    return {"dataset": "cifar10", "data_dir": str(folder)}, "refused to load 'posix.system'"


def missing_mnist(root: Path) -> tuple[dict, str]:
    return {"dataset": "mnist"}, "mnist: no complete copy found"


def damaged_idx(root: Path) -> tuple[dict, str]:
    folder = write_mnist_idx(root / "mnist", mnist_like())
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    return {"dataset": "mnist", "data_dir": str(folder)}, "train-labels-idx1-ubyte.gz: cannot read it"


def too_big_val_count(root: Path) -> tuple[dict, str]:
    folder = write_mnist_idx(root / "mnist", mnist_like())
    expected = "prepare.val_split=5000: holds out 5000 of 40 images"
    return {"dataset": "mnist", "data_dir": str(folder), "val_split": 5000}, expected


def folder_without_data_dir(root: Path) -> tuple[dict, str]:
    return {"dataset": "folder"}, "'prepare.data_dir' must be a folder of class sub-folders"


@pytest.mark.parametrize("make", [crafted_cifar, missing_mnist, damaged_idx, too_big_val_count,
                                  folder_without_data_dir])
def test_prepare_errors_are_one_line_with_exit_code_2(offline: Path, make):
    overrides, expected = make(offline)
    write_params(offline, {"prepare": overrides})
    result = run_cnnlab("prepare", cwd=offline)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("cnnlab: error: ") and result.stderr.count("\n") == 1
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (offline / "pwned").exists()
    assert not (offline / "data" / "prepared").exists()


def test_datasets_command_lists_sources_and_where_they_are(offline: Path):
    write_cifar10(offline / "data" / "raw" / "cifar-10-batches-py", cifar_like(10, 1, 1))
    mnist = write_mnist_idx(offline / "elsewhere", mnist_like())
    write_params(offline, {"prepare": {"dataset": "mnist", "data_dir": str(mnist)}})
    result = run_cnnlab("datasets", cwd=offline, check=True)
    rows: dict[str, list[str]] = {}  # source -> [mark, offline, where / how (unwrapped, no spaces)]
    for line in result.stdout.splitlines():
        if line.startswith("│"):
            mark, name, state, where = (cell.strip() for cell in line.split("│")[1:-1])
            if name:
                rows[name] = [mark, state, ""]
            rows[list(rows)[-1]][2] += where.replace(" ", "")
    assert set(rows) == {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "folder"}
    assert rows["mnist"][:2] == ["*", "yes"] and rows["mnist"][2] == f"{mnist}|IDXfiles".replace(" ", "")
    assert rows["cifar10"][1] == "yes" and rows["cifar10"][2].startswith("data/raw/cifar-10-batches-py|")
    assert rows["cifar100"][1] == "no" and not rows["cifar100"][0]
