"""Files users hand cnnlab, clumsy or hostile: params.yaml, dataset files, image folders, CLI
paths. Each is refused (or skipped, and said so) with one line and exit code 2, through the
real `cnnlab` command, and nothing written before is touched."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from conftest import digests, error_line, run_cnnlab, write_params
from dataset_writers import image_tree, mnist_like, write_mnist_idx

from stages.errors import DataError
from stages.formats import read_idx


@pytest.fixture(scope="module")
def prepared_digits(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("digits")
    write_params(folder, {})
    run_cnnlab("prepare", cwd=folder, check=True)
    return folder


@pytest.fixture
def project(prepared_digits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose data/prepared holds a finished digits run (to be left untouched), with
    no dataset downloads and an empty Keras cache."""
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    shutil.copytree(prepared_digits, tmp_path / "project")
    return tmp_path / "project"


def use_dataset(project: Path, **prepare) -> None:
    write_params(project, {"prepare": prepare})


# --- params.yaml ---------------------------------------------------------------------------------
def alias_bomb(key: str, levels: int = 9, width: int = 9) -> str:
    """'Billion laughs' YAML: anchors inside report.title's list (so that no unknown key is met
    first), and `key` holding a list that expands to width**levels strings."""
    anchors = "  - &a0 [" + ", ".join(["lol"] * width) + "]\n"
    anchors += "".join(f"  - &a{n} [" + ", ".join([f"*a{n - 1}"] * width) + "]\n" for n in range(1, levels - 1))
    return f"report:\n  title:\n{anchors}{key}: [" + ", ".join([f"*a{levels - 2}"] * width) + "]\n"


@pytest.mark.parametrize(("write", "expected"), [
    (lambda path: path.mkdir(),
     "params.yaml: is a folder, not a params file; pass --params with the path of a params.yaml file"),
    (lambda path: path.write_bytes(b"seed: 4\xff2\n"),
     "params.yaml: not UTF-8 text (byte 0xff at offset 7); save it as UTF-8"),
    (lambda path: path.write_text(""),
     "params.yaml: holds nothing (it is empty or all comments), not a mapping of settings such as "
     "'seed: 42'; restore it (git checkout params.yaml)"),
    (lambda path: path.write_text("# seed: 42\n"),
     "params.yaml: holds nothing (it is empty or all comments), not a mapping of settings such as "
     "'seed: 42'; restore it (git checkout params.yaml)"),
    (lambda path: path.write_text("- seed\n- 42\n"),
     "params.yaml: holds a list, not a mapping of settings such as 'seed: 42'; restore it "
     "(git checkout params.yaml)"),
    (lambda path: path.write_text("seed: 1\nseed: 2\n"),
     'params.yaml: not valid YAML at line 2 (found duplicate key "seed" with value "2" (original '
     'value: "1")); fix the syntax'),
    (lambda path: path.write_text("seed: " + "[" * 50_000 + "]" * 50_000 + "\n"),
     "params.yaml: nested too deeply to be params; fix the brackets or the indentation"),
    (lambda path: path.write_text("seed:\n  " + "- " * 3_000 + "1\n"),  # block sequences in sequences
     "params.yaml: nested too deeply to be params; fix the brackets or the indentation"),
])
def test_unreadable_params_files_give_one_line(project: Path, write, expected: str):
    before = digests(project / "data")
    (project / "params.yaml").unlink()
    write(project / "params.yaml")
    for command in ("check", "prepare"):
        assert error_line(run_cnnlab(command, cwd=project)) == expected
    assert digests(project / "data") == before


def test_a_yaml_alias_bomb_is_refused_without_expanding_it(project: Path):
    (project / "params.yaml").write_text(alias_bomb("seed"))  # seed: 9**9 = 387 million strings
    line = error_line(run_cnnlab("check", cwd=project))
    assert line.startswith("params.yaml: 'seed' must be an integer in [0, 2147483647], got [[[[...], [...], ")
    assert line.endswith("...; fix it in params.yaml or pass -S seed=<value> to dvc exp run")
    assert len(line) < 250


# --- dataset files -----------------------------------------------------------------------------
def write_gzip_stream(path: Path, head: bytes, zeros: int) -> None:
    """A gzip file of `head` followed by `zeros` zero bytes, compressed as it is written."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as file:
        file.write(packer.compress(head))
        block = bytes(2**20)
        for start in range(0, zeros, len(block)):
            file.write(packer.compress(block[:min(len(block), zeros - start)]))
        file.write(packer.flush())


def test_an_idx_gzip_bomb_is_refused_after_its_header(project: Path):
    folder = write_mnist_idx(project / "raw" / "mnist", mnist_like())
    labels = folder / "train-labels-idx1-ubyte.gz"
    # 40 labels announced, then 256 MiB of zeros: 256 KB on disk.
    write_gzip_stream(labels, bytes([0, 0, 8, 1]) + struct.pack(">I", 40) + bytes(range(10)) * 4, 2**28)
    assert labels.stat().st_size < 2**19
    use_dataset(project, dataset="mnist", data_dir="raw/mnist")
    before = digests(project / "data")

    line = error_line(run_cnnlab("prepare", cwd=project))

    assert line == (f"raw/mnist/train-labels-idx1-ubyte.gz: header announces shape (40,) (40 bytes) but the "
                    "file holds more data after them; the file is damaged or not this dataset's; replace it "
                    "with a fresh copy of the dataset's file")
    assert digests(project / "data") == before


def test_an_idx_header_announcing_more_than_the_file_can_hold_is_refused_before_reading(tmp_path: Path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", 10**8, 28, 28) + bytes(1000)))
    with pytest.raises(DataError, match=r"\(78,400,000,000 bytes\) but the file cannot hold that many"):
        read_idx(path)


@pytest.mark.parametrize(("dataset", "name", "content", "expected"), [
    ("mnist", "mnist.npz", b"x_train,y_train\n1,2\n",
     "raw/mnist.npz: not a .npz archive (a .npz file is a zip archive of .npy arrays, this file is not "
     "one); replace it with a fresh copy of the dataset's file"),
    ("cifar10", "cifar-10-python.tar.gz", b"<html>404 Not Found</html>\n" * 40,
     "raw/cifar-10-python.tar.gz: not a readable tar archive (gzip, bzip2, xz or plain) of CIFAR python "
     "batches (ReadError); replace it with a fresh copy of the dataset's file"),
])
def test_dataset_files_of_the_wrong_format_give_one_line(project: Path, dataset, name, content, expected):
    (project / "raw").mkdir()
    (project / "raw" / name).write_bytes(content)
    use_dataset(project, dataset=dataset, data_dir=f"raw/{name}")
    before = digests(project / "data")
    line = error_line(run_cnnlab("prepare", cwd=project))
    assert line == expected and "allow_pickle" not in line
    assert digests(project / "data") == before


# --- image folders -------------------------------------------------------------------------------
def test_links_to_folders_are_not_followed_and_are_named(project: Path):
    root = image_tree(project / "images", {"cat": "red", "dog": "blue"}, per_class=8)
    os.symlink(root, root / "loop")                     # back to the data folder: would be a class
    os.symlink(root, root / "cat" / "again")            # a loop inside a class
    os.symlink(project / "raw-elsewhere", root / "dog" / "outside", target_is_directory=True)
    image_tree(project / "raw-elsewhere", {"x": "green"}, per_class=3)
    use_dataset(project, dataset="folder", data_dir="images", image_size=[8, 8])

    result = run_cnnlab("prepare", cwd=project)

    assert result.returncode == 0, result.stderr
    meta = json.loads((project / "data" / "prepared" / "meta.json").read_text())
    assert meta["class_names"] == ["cat", "dog"] and sum(meta["splits"].values()) == 16
    links = ["images/loop", "images/cat/again", "images/dog/outside"]
    assert meta["skipped_links"] == links
    assert result.stderr.strip() == (
        f"cnnlab: warning: did not follow 3 link(s) to folders: {'; '.join(links)} (a link could lead "
        "back into the data folder or out of it; move or copy the images into the class folders instead)")


def test_a_folder_whose_only_other_class_is_a_link_names_the_link(project: Path):
    root = image_tree(project / "images", {"cat": "red"}, per_class=4)
    os.symlink(root / "cat", root / "dog")
    use_dataset(project, dataset="folder", data_dir="images", image_size=[8, 8])
    assert error_line(run_cnnlab("prepare", cwd=project)) == (
        "prepare.data_dir=images: found 1 class sub-folder(s) (cat), not following the folder link(s) "
        "images/dog; a folder dataset needs at least two, one per class: add a sub-folder holding each "
        "class's images")


# --- command-line paths --------------------------------------------------------------------------
def test_predict_output_naming_a_folder_is_refused_before_anything_runs(project: Path):
    (project / "out").mkdir()
    line = error_line(run_cnnlab("predict", "images", "--output", "out", cwd=project))
    assert line == "--output out is a folder; give the name of the CSV file to write, such as out/predictions.csv"
    assert list((project / "out").iterdir()) == []


@pytest.mark.parametrize(("output", "expected"), [
    ("params.yaml", "params.yaml: is a file, where this command writes a folder; pass another output path, "
                    "or move the file away first (nothing was changed)"),
    ("params.yaml/prepared", "params.yaml/prepared: cannot be written, because params.yaml is a file, not a "
                             "folder; pass another output path"),
])
def test_an_output_that_would_replace_or_go_through_a_file_is_refused(project: Path, output: str, expected: str):
    before = digests(project)
    assert error_line(run_cnnlab("prepare", "--output", output, cwd=project)) == expected
    assert digests(project) == before  # params.yaml and data/prepared untouched


@pytest.mark.tf
def test_predict_writes_file_names_that_are_not_utf8_as_readable_text(trained_digits: Path, tmp_path: Path,
                                                                      cnnlab_in_process):
    folder = tmp_path / "pictures"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes, as old cameras and zip files leave them
    shutil.copyfile(trained_digits / "data" / "prepared" / "samples.png", folder / name)
    output = tmp_path / "predictions.csv"

    # wide enough that the temporary folder's long path never wraps in the table
    result = cnnlab_in_process("predict", str(folder), "--output", str(output), cwd=trained_digits, columns=300)

    shown = f"{folder}/caf\\xe9.png"
    assert "caf\\xe9.png" in result.stdout  # the table, printable on any terminal
    assert output.read_text(encoding="utf-8").splitlines()[1].startswith(f"{shown},")
