"""prepare on the embedded digits: shapes, ranges, stratified seeded splits (no TensorFlow)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from conftest import REPO_ROOT

from stages.config import PrepareParams
from stages.datasets import load_digits
from stages.io import load_array, read_json
from stages.prepare import SPLITS, prepare


def test_digits_are_scaled_split_and_described(tmp_path):
    meta = prepare(PrepareParams(), seed=0, output_dir=tmp_path / "prepared")
    folder = tmp_path / "prepared"
    assert read_json(folder / "meta.json") == meta
    assert meta["class_names"] == [str(digit) for digit in range(10)]
    assert meta["image_shape"] == [8, 8, 1]
    assert sum(meta["splits"].values()) == 1797
    # scikit-learn rounds held-out sizes up: ceil(1797 * 0.15) = 270, ceil(1527 * 0.15) = 230
    assert meta["splits"] == {"train": 1297, "val": 230, "test": 270}
    for split in SPLITS:
        images, labels = load_array(folder / f"{split}_x.npy"), load_array(folder / f"{split}_y.npy")
        assert images.dtype == np.float32 and labels.dtype == np.int64
        assert images.shape == (meta["splits"][split], 8, 8, 1)
        assert 0.0 <= images.min() and images.max() == 1.0
        # stratified: every class in every split, in about the same proportion
        counts = np.bincount(labels, minlength=10)
        assert counts.min() >= 0.8 * counts.max()
    assert (folder / "samples.png").stat().st_size > 1000


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        prepare(PrepareParams(), seed=seed, output_dir=tmp_path / name)
    first, same, other = (load_array(tmp_path / name / "test_x.npy") for name in "abc")
    np.testing.assert_array_equal(first, same)
    assert not np.array_equal(first, other)


def test_splits_do_not_overlap(tmp_path):
    prepare(PrepareParams(), seed=1, output_dir=tmp_path / "p")
    rows = {
        split: {row.tobytes() for row in load_array(tmp_path / "p" / f"{split}_x.npy")} for split in SPLITS
    }
    # digits has a few duplicate images; the splits share almost none of them.
    assert len(rows["train"] & rows["test"]) <= 3
    assert len(rows["train"] & rows["val"]) <= 3


def test_digits_are_scikit_learns_digits():
    from sklearn.datasets import load_digits as sklearn_digits

    raw, bunch = load_digits(), sklearn_digits()
    np.testing.assert_array_equal(raw.train_images[..., 0], bunch.images)
    np.testing.assert_array_equal(raw.train_labels, bunch.target)
    assert raw.train_images.dtype == np.uint8 and raw.train_labels.dtype == np.int64
    assert raw.class_names == tuple(str(name) for name in bunch.target_names)


def test_a_scikit_learn_without_its_digits_file_is_one_line(tmp_path):
    (tmp_path / "sklearn").mkdir()   # a damaged install: the package, not its data files
    (tmp_path / "sklearn" / "__init__.py").write_text("")
    script = ("from stages.datasets import load_digits\nfrom stages.errors import CnnlabError\n"
              "try:\n    load_digits()\nexcept CnnlabError as error:\n    print(error)\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)]), "PATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("digits: scikit-learn's bundled file sklearn/datasets/data/digits.csv.gz"
                                    " is missing") and "make install" in result.stdout
