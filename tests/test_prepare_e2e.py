"""The whole pipeline on the user's own folder of PNG images, driven by the real dvc binary.

A two-class folder (a binary task) runs through `cnnlab init --data` in test_init.py."""

from __future__ import annotations

import json

import pytest
from conftest import FAST_PARAMS, write_params
from dataset_writers import image_tree, write_image

pytestmark = [pytest.mark.e2e, pytest.mark.tf]


def run_folder_pipeline(dvc_project, classes: dict[str, str]) -> tuple[dict, dict]:
    project = dvc_project.path
    image_tree(project / "data" / "raw" / "shapes", classes, per_class=12)
    write_params(project, {**FAST_PARAMS, "prepare": {
        "dataset": "folder", "data_dir": "data/raw/shapes", "image_size": [8, 8], "val_split": 0.2,
        "test_split": 0.25}})
    dvc_project("git", "add", "-A")
    dvc_project("git", "commit", "-q", "-m", "images")
    dvc_project("dvc", "repro")
    meta = json.loads((project / "data" / "prepared" / "meta.json").read_text())
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    return meta, metrics


def test_folder_of_images_runs_the_whole_pipeline(dvc_project):
    meta, metrics = run_folder_pipeline(dvc_project, {"red": "red", "green": "green", "blue": "blue"})
    project = dvc_project.path
    assert meta["class_names"] == ["blue", "green", "red"] and meta["image_shape"] == [8, 8, 3]
    assert metrics["test_images"] == meta["splits"]["test"] == 9
    report = (project / "reports" / "report.md").read_text()
    assert "blue, green, red" in report and "figures/samples.png" in report
    assert (project / "reports" / "figures" / "samples.png").is_file()

    # The images are prepare's dependency: a new image makes DVC re-run it.
    assert "prepare" not in dvc_project("dvc", "status").stdout
    write_image(project / "data" / "raw" / "shapes" / "red" / "new.png", (200, 0, 0))
    assert "prepare" in dvc_project("dvc", "status").stdout

