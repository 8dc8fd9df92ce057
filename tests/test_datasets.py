"""The standard dataset sources on tiny files in their real formats (no TensorFlow)."""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from dataset_writers import (
    CIFAR10_NAMES,
    RunsACommand,
    cifar_like,
    idx_bytes,
    mnist_like,
    python2_pickle,
    write_cifar10,
    write_cifar100,
    write_idx,
    write_mnist_idx,
    write_mnist_npz,
    write_tar_gz,
)

from stages import formats
from stages.config import PrepareParams
from stages.datasets import FASHION_CLASSES, load_dataset, survey, survey_table
from stages.errors import DataError


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with no data/raw, an empty Keras cache and no downloads."""
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    return project


def load(dataset: str, data_dir: Path | str | None = None, tmp: Path | None = None):
    params = PrepareParams(dataset=dataset, data_dir=None if data_dir is None else str(data_dir))
    return load_dataset(params, seed=0, scratch_dir=tmp or Path("."))


def assert_matches(raw, parts: dict) -> None:
    assert raw.train_images.shape == (*parts["train_images"].shape[:3], 1)
    assert raw.train_images.dtype == np.uint8 and raw.train_labels.dtype == np.int64
    np.testing.assert_array_equal(raw.train_images[..., 0], parts["train_images"])
    np.testing.assert_array_equal(raw.train_labels, parts["train_labels"])
    np.testing.assert_array_equal(raw.test_images[..., 0], parts["test_images"])
    np.testing.assert_array_equal(raw.test_labels, parts["test_labels"])


# --- IDX ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("gzipped", [True, False], ids=["gz", "raw"])
def test_mnist_reads_idx_files_gzipped_or_not(isolated: Path, gzipped: bool):
    parts = mnist_like()
    folder = write_mnist_idx(isolated / "downloads", parts, gzipped=gzipped)
    raw = load("mnist", folder)
    assert_matches(raw, parts)
    assert raw.class_names == tuple("0123456789")
    assert raw.max_value == 255 and raw.found_at == str(folder)
    assert raw.description.startswith("MNIST (IDX files, 28x28x1")


def test_gzip_is_detected_by_content_not_by_name(tmp_path: Path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    plain = write_idx(tmp_path / "looks-compressed.gz", array, gzipped=False)
    np.testing.assert_array_equal(formats.read_idx(plain), array)


@pytest.mark.parametrize("damage, message", [
    (lambda data: b"\x08\x03" + data[2:], "bad magic number"),
    (lambda data: data[:-7], "truncated or damaged"),
    (lambda data: data[:6], "header is cut short"),
])
def test_damaged_idx_files_are_reported_with_their_name(tmp_path: Path, damage, message: str):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(idx_bytes(np.zeros((3, 4, 4), np.uint8))))
    with pytest.raises(DataError, match=message) as caught:
        formats.read_idx(path)
    assert str(path) in str(caught.value)


def test_truncated_gzip_is_reported(tmp_path: Path):
    path = write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(2000, dtype=np.uint8) % 10)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="damaged or incomplete"):
        formats.read_idx(path)


def test_images_and_labels_of_different_lengths_are_refused(isolated: Path):
    parts = mnist_like()
    parts["train_labels"] = parts["train_labels"][:-1]
    folder = write_mnist_idx(isolated / "mixed", parts)
    with pytest.raises(DataError, match="do not belong together"):
        load("mnist", folder)


# --- Keras's .npz --------------------------------------------------------------------------------
def test_mnist_reads_keras_npz_given_as_file_or_folder(isolated: Path):
    parts = mnist_like(seed=3)
    path = write_mnist_npz(isolated / "cache" / "mnist.npz", parts)
    assert_matches(load("mnist", path), parts)
    assert_matches(load("mnist", path.parent), parts)
    assert "Keras .npz" in load("mnist", path).description


def test_npz_with_pickled_objects_is_refused(isolated: Path):
    path = isolated / "mnist.npz"
    objects = np.array([{"not": "data"}], dtype=object)
    np.savez(path, x_train=objects, y_train=objects, x_test=objects, y_test=objects)
    with pytest.raises(DataError, match="holds Python objects") as caught:
        load("mnist", path)
    assert "allow_pickle" not in str(caught.value)


def test_npz_without_keras_keys_names_them(isolated: Path):
    path = isolated / "mnist.npz"
    np.savez(path, images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="missing arrays x_train, y_train, x_test, y_test"):
        load("mnist", path)


# --- where the files are found ----------------------------------------------------------------------
def test_known_places_are_searched_in_order(isolated: Path, tmp_path: Path):
    """Keras's cache ($KERAS_HOME/datasets) before the project's data/raw/."""
    write_mnist_idx(isolated / "data" / "raw" / "mnist", mnist_like(seed=1))
    assert load("mnist").found_at == str(Path("data/raw/mnist"))
    cached = write_mnist_npz(tmp_path / "keras-home" / "datasets" / "mnist.npz", mnist_like(seed=2))
    assert load("mnist").found_at == str(cached)


def test_fashion_mnist_has_its_class_names(isolated: Path):
    folder = write_mnist_idx(isolated / "data" / "raw" / "fashion-mnist", mnist_like(seed=1))
    raw = load("fashion_mnist", folder)
    assert raw.class_names == FASHION_CLASSES and raw.found_at == str(folder)


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_debian_fashion_mnist_is_found_and_read(isolated: Path):
    raw = load("fashion_mnist")
    assert raw.found_at == str(DEBIAN_FASHION)
    assert raw.train_images.shape == (60000, 28, 28, 1) and raw.test_images.shape == (10000, 28, 28, 1)
    assert np.bincount(raw.train_labels).tolist() == [6000] * 10


def test_data_dir_comes_first_then_the_known_places(isolated: Path):
    write_mnist_npz(isolated / "data" / "raw" / "mnist.npz", mnist_like(seed=1))
    mine = write_mnist_idx(isolated / "mine", mnist_like(seed=2))
    assert load("mnist", mine).found_at == str(mine)
    # A data_dir without this dataset's files falls through to the known copies.
    assert load("mnist", isolated / "elsewhere").found_at == str(Path("data/raw/mnist.npz"))


def test_nothing_found_offline_says_which_files_to_put_where(isolated: Path):
    partial = write_mnist_idx(isolated / "data" / "raw" / "mnist", mnist_like())
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as caught:
        load("mnist")
    message = str(caught.value)
    assert "\n" not in message
    for expected in ("mnist: no complete copy found and no network", "mnist.npz",
                     "train-images-idx3-ubyte.gz", "data/raw/", "prepare.data_dir",
                     f"{Path('data/raw/mnist')} lacks t10k-labels-idx1-ubyte.gz", "digits always works"):
        assert expected in message


def test_survey_lists_every_source_and_where_it_lies(isolated: Path):
    cifar = write_cifar10(isolated / "data" / "raw" / "cifar-10-batches-py", cifar_like(10, 1, 1))
    rows = {row.name: row for row in survey(PrepareParams())}
    assert list(rows) == ["digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "folder"]
    assert rows["digits"].available is True
    assert rows["cifar10"].available is True
    assert rows["cifar10"].location == str(Path("data/raw") / cifar.name)
    assert rows["cifar100"].available is False and "cifar-100-python.tar.gz" in rows["cifar100"].note
    assert rows["mnist"].available is False
    assert rows["folder"].available is None
    console = Console(file=io.StringIO(), width=100)
    console.print(survey_table(list(rows.values()), "cifar10"))
    assert re.search(r"│ \* │ cifar10 +│ yes ", console.file.getvalue())


# --- CIFAR ------------------------------------------------------------------------------------------
def test_cifar10_batch_folder_and_tar_gz_give_the_same_arrays(isolated: Path):
    parts = cifar_like(10, train_per_class=3, test_per_class=2)
    folder = write_cifar10(isolated / "extracted" / "cifar-10-batches-py", parts)
    archive = write_tar_gz(isolated / "cifar-10-python.tar.gz", folder)
    from_folder, from_archive = load("cifar10", folder), load("cifar10", archive)
    for raw in (from_folder, from_archive):
        assert raw.train_images.shape == (30, 32, 32, 3) and raw.test_images.shape == (20, 32, 32, 3)
        np.testing.assert_array_equal(raw.train_images, parts["train_images"])  # channel order kept
        np.testing.assert_array_equal(raw.train_labels, parts["train_labels"])
        np.testing.assert_array_equal(raw.test_images, parts["test_images"])
        assert raw.class_names == tuple(CIFAR10_NAMES)
    assert "tar archive" in from_archive.description and "extracted folder" in from_folder.description
    # The parent folder works too: the extracted folder is found by its standard name.
    assert load("cifar10", folder.parent).found_at == str(folder)


def test_cifar10_pixel_layout_is_red_green_blue_planes(tmp_path: Path):
    row = np.zeros(3072, np.uint8)
    row[0], row[1024 + 1], row[2048 + 32] = 10, 20, 30   # R at (0,0), G at (0,1), B at (1,0)
    images, labels = formats.cifar_images_labels({"data": row[None], "labels": [7]}, "labels", "batch")
    assert images.shape == (1, 32, 32, 3) and labels.tolist() == [7]
    assert images[0, 0, 0, 0] == 10 and images[0, 0, 1, 1] == 20 and images[0, 1, 0, 2] == 30


def test_cifar100_uses_fine_labels_and_names(isolated: Path):
    names = [f"class_{index}" for index in range(100)]
    parts = cifar_like(100, train_per_class=1, test_per_class=1, seed=5)
    folder = write_cifar100(isolated / "cifar-100-python", parts, names)
    raw = load("cifar100", folder)
    assert raw.class_names == tuple(names)
    np.testing.assert_array_equal(raw.train_labels, parts["train_labels"])
    np.testing.assert_array_equal(raw.test_images, parts["test_images"])


def test_incomplete_cifar_archive_names_the_missing_batches(isolated: Path):
    folder = write_cifar10(isolated / "cifar-10-batches-py", cifar_like(10, 1, 1))
    (folder / "data_batch_4").unlink()
    archive = write_tar_gz(isolated / "cifar-10-python.tar.gz", folder)
    with pytest.raises(DataError, match="archive lacks data_batch_4"):
        load("cifar10", archive)


def test_crafted_cifar_pickle_is_refused_and_runs_nothing(isolated: Path):
    folder = write_cifar10(isolated / "cifar-10-batches-py", cifar_like(10, 1, 1))
    marker = isolated / "pwned"
    (folder / "data_batch_2").write_bytes(
        pickle.dumps({b"data": RunsACommand(f"touch {marker}"), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError) as caught:
        load("cifar10", folder)
    assert not marker.exists()
    message = str(caught.value)
    assert "data_batch_2" in message and "refused to load 'posix.system'" in message
    assert "damaged or crafted" in message


@pytest.mark.parametrize("payload", [
    pickle.dumps(eval, protocol=2),                                  # builtins.eval
    b"cos\nsystem\n(S'true'\ntR.",                                  # protocol 0 GLOBAL + REDUCE
    b"(cos\nsystem\nS'true'\no.",                                   # OBJ opcode
    python2_pickle({b"set": {1, 2}}),                               # even harmless classes
])
def test_restricted_unpickler_refuses_every_other_global(payload: bytes):
    with pytest.raises(DataError, match="refused to load"):
        formats.unpickle_batch(payload, "batch")


def test_restricted_unpickler_accepts_plain_data_and_arrays():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol_bytes in (python2_pickle({b"data": array, b"n": 1.5}),
                           pickle.dumps({"data": array, "n": 1.5}, protocol=2),   # _codecs.encode
                           pickle.dumps({"data": array, "n": 1.5}, protocol=5)):
        value = formats.unpickle_batch(protocol_bytes, "batch")
        np.testing.assert_array_equal(value["data"], array)
        assert value["n"] == 1.5
