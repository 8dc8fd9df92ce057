"""Artifacts the stages hand each other, damaged the way crashes, disks and careless users
damage them (emptied, truncated, swapped, rewritten with another structure): every stage that
reads one says so in one line naming the file and the stage to re-run, exit code 2, and
leaves every artifact byte-identical. A damaged resume state makes `train` start over with a
warning, and never publishes a broken model."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST_PARAMS, digests, error_line, prepared_folder, run_cnnlab, write_params

PREPARED = Path("data/prepared")
RERUN_PREPARE = "re-run the prepare stage (dvc repro prepare) to write it again"
RERUN_TRAIN = "re-run the train stage (dvc repro train) to write it again"


@pytest.fixture(scope="module")
def prepared_digits(tmp_path_factory) -> Path:
    """prepare and augment (mode off) on digits: no TensorFlow involved."""
    return prepared_folder(tmp_path_factory.mktemp("prepared_digits"), FAST_PARAMS)


def copy_project(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "project"))


def artifacts(project: Path) -> dict[str, str]:
    return digests(*(project / name for name in ("data", "models", "reports") if (project / name).exists()))


def refused(project: Path, *command: str) -> str:
    """Run the command, which must fail with one line and touch nothing; return the line."""
    before = artifacts(project)
    line = error_line(run_cnnlab(*command, cwd=project))
    assert artifacts(project) == before
    return line


# --- meta.json -----------------------------------------------------------------------------------
def rewrite_meta(project: Path, change) -> None:
    path = project / PREPARED / "meta.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


META_DAMAGE = {
    "lacks 'image_shape', 'splits'": lambda meta: [meta.pop("image_shape"), meta.pop("splits")],
    "'class_names' must list at least two class names": lambda meta: meta.update(class_names="0123456789"),
    "'num_classes' is 12 but 'class_names' lists 10": lambda meta: meta.update(num_classes=12),
    "'image_shape' must be [height, width, 1 or 3 channels], not [8, 8, 4]":
        lambda meta: meta.update(image_shape=[8, 8, 4]),
    "'normalization' must be an object whose method is one of unit, standardize":
        lambda meta: meta.update(normalization={"method": "zscore"}),
    "'normalization.std' must be positive":
        lambda meta: meta.update(normalization={"method": "standardize", "scale": 16.0, "mean": [0.3], "std": [0]}),
    "'health.near' must give a count for each of train, val, test, train-val, train-test, val-test":
        lambda meta: meta["health"].update(near={"train": -1}),
}


@pytest.mark.parametrize("problem", META_DAMAGE)
def test_meta_json_of_the_wrong_structure_is_named(prepared_digits, tmp_path, problem):
    project = copy_project(prepared_digits, tmp_path)
    rewrite_meta(project, META_DAMAGE[problem])
    assert refused(project, "train") == f"data/prepared/meta.json: {problem}; {RERUN_PREPARE}"


def test_every_stage_reads_meta_json_through_the_same_reader(prepared_digits, tmp_path):
    project = copy_project(prepared_digits, tmp_path)
    (project / PREPARED / "meta.json").write_text('["not", "an", "object"]')
    expected = f"data/prepared/meta.json: holds a JSON list, expected an object; {RERUN_PREPARE}"
    for command in (["augment"], ["train"], ["summary"], ["evaluate"], ["report"],
                    ["predict", "data/prepared/samples.png"], ["export"]):
        assert refused(project, *command) == expected, command


def test_truncated_meta_json_is_named(prepared_digits, tmp_path):
    project = copy_project(prepared_digits, tmp_path)
    path = project / PREPARED / "meta.json"
    path.write_bytes(path.read_bytes()[:40])
    assert refused(project, "augment").startswith("prepared metadata data/prepared/meta.json is not valid JSON")


# --- the arrays ----------------------------------------------------------------------------------
def resave(path: Path, change) -> None:
    array = np.load(path)
    np.save(path, change(array))


def test_labels_shorter_than_images_are_refused_before_training(prepared_digits, tmp_path):
    """The silent wrong result of old: training on half the images and publishing a model."""
    project = copy_project(prepared_digits, tmp_path)
    images = len(np.load(project / PREPARED / "train_x.npy", mmap_mode="r"))
    resave(project / PREPARED / "train_y.npy", lambda labels: labels[: images // 2])
    assert refused(project, "train") == (f"data/prepared/train_x.npy and train_y.npy: {images // 2} labels "
                                         f"for {images} images; {RERUN_PREPARE}")
    assert not (project / "models").exists()


@pytest.mark.parametrize(("split", "damage", "problem"), [
    ("val", lambda path: path.write_bytes(path.read_bytes()[:1000]),
     "data/prepared/val_x.npy: is not a complete .npy array (empty, truncated or another format)"),
    ("val", lambda path: path.write_bytes(b""),
     "data/prepared/val_x.npy: is not a complete .npy array (empty, truncated or another format)"),
    ("train", lambda path: np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True),
     "data/prepared/train_x.npy: holds Python objects (a pickle), which cnnlab never loads"),
    ("test", lambda path: resave(path, lambda images: images[:, :4, :4]),
     "data/prepared/test_x.npy and test_y.npy: images are float32 [270, 4, 4, 1], but meta.json "
     "records float32 [N, 8, 8, 1]"),
    ("test", lambda path: shutil.copyfile(path, path.with_name("test_y.npy")),
     "data/prepared/test_x.npy and test_y.npy: labels are float32 [270, 8, 8, 1], expected one whole "
     "number per image"),
    ("test", lambda path: resave(path.with_name("test_y.npy"), lambda labels: labels + 5),
     "data/prepared/test_x.npy and test_y.npy: labels range 5..14, outside the 10 classes of meta.json"),
    ("test", lambda path: resave(path, lambda images: images[:200]),
     "data/prepared/test_x.npy and test_y.npy: 270 labels for 200 images"),
])
def test_damaged_arrays_are_named_by_the_stage_that_reads_them(prepared_digits, tmp_path, split, damage, problem):
    project = copy_project(prepared_digits, tmp_path)
    damage(project / PREPARED / f"{split}_x.npy")
    command = "evaluate" if split == "test" else "train"
    assert refused(project, command) == f"{problem}; {RERUN_PREPARE}"


# --- the augmentation policy and impossible architectures ---------------------------------------
@pytest.mark.parametrize(("policy", "problem"), [
    ({"mode": "sideways", "materialized": False}, "'mode' must be one of off, online, offline"),
    ({"mode": "offline", "materialized": False}, "'materialized' must be true in offline mode and false otherwise"),
    ({"mode": "online", "materialized": False, "seed": 1, "transforms": {"rotation": "lots"}},
     "'transforms' must give exactly rotation, width_shift, height_shift, zoom, shear, horizontal_flip, "
     "vertical_flip, brightness, contrast, erasing, fill_mode, randaugment_ops, randaugment_magnitude, "
     "mixup_alpha, cutmix_alpha, mix_probability"),
])
def test_a_damaged_augmentation_policy_is_named(prepared_digits, tmp_path, policy, problem):
    project = copy_project(prepared_digits, tmp_path)
    (project / "data" / "augmented" / "policy.json").write_text(json.dumps(policy))
    assert refused(project, "train") == (f"data/augmented/policy.json: {problem}; re-run the augment stage "
                                         "(dvc repro augment) to write it again")


@pytest.mark.parametrize(("model", "expected"), [
    ({"kernel_size": 9, "padding": "valid"},
     "'model.kernel_size' must be at most 8 in conv block 1 of 2 (its input is 8x8 and model.padding is "
     "'valid'), or model.padding=same, or fewer conv blocks, got 9"),
    ({"conv_filters": [4, 4, 4, 4], "pool_padding": "valid"},
     "'model.pool_size' must be at most 1 in conv block 4 of 4 (its input is 1x1 after blocks 1-3 and "
     "model.pool_padding is 'valid'), or model.pool_padding=same, or fewer conv blocks, got 2"),
])
def test_convolutions_that_shrink_the_image_to_nothing_are_params_errors(prepared_digits, tmp_path, model, expected):
    project = copy_project(prepared_digits, tmp_path)
    write_params(project, {**FAST_PARAMS, "model": {**FAST_PARAMS["model"], **model}})
    key = expected.split("'")[1]
    for command in ("train", "summary"):
        assert refused(project, command) == (
            f"params.yaml: {expected}; fix it in params.yaml or pass -S {key}=<value> to dvc exp run")


# --- the model, before TensorFlow starts ------------------------------------------------------------
def write_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a model")


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda path: path.write_bytes(b""), "is empty (0 bytes)"),
    (lambda path: path.write_bytes(b"PK\x03\x04" + bytes(300)),
     "is not a complete .keras archive (truncated or another format)"),
    (write_zip, "is a zip file but not a Keras model archive (no config.json and model.weights.h5)"),
])
def test_a_damaged_model_file_is_named_by_evaluate_predict_and_export(prepared_digits, tmp_path, damage, problem):
    project = copy_project(prepared_digits, tmp_path)
    (project / "models").mkdir()
    damage(project / "models" / "model.keras")
    expected = f"models/model.keras: {problem}; {RERUN_TRAIN}"
    for command in (["evaluate"], ["predict", "data/prepared/samples.png"], ["export"]):
        assert refused(project, *command) == expected, command


# --- with a trained model (TensorFlow) --------------------------------------------------------------
@pytest.mark.tf
def test_a_truncated_model_and_a_lambda_layer_are_named(trained_digits, tmp_path):
    import keras

    project = copy_project(trained_digits, tmp_path)
    model = project / "models" / "model.keras"
    model.write_bytes(model.read_bytes()[:5000])
    assert refused(project, "evaluate") == (f"models/model.keras: is not a complete .keras archive (truncated "
                                            f"or another format); {RERUN_TRAIN}")

    inputs = keras.Input((8, 8, 1))
    doubled = keras.layers.Lambda(lambda x: x * 2)(inputs)
    keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(doubled))).save(model)
    assert refused(project, "evaluate") == (f"models/model.keras: holds Python code (a Lambda layer or a custom "
                                            f"object), which cnnlab never runs; {RERUN_TRAIN}")


@pytest.mark.tf
def test_evaluate_refuses_a_model_of_another_run(trained_digits, tmp_path):
    import keras

    project = copy_project(trained_digits, tmp_path)
    inputs = keras.Input((8, 8, 1))
    keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(keras.layers.Flatten()(inputs))).save(
        project / "models" / "model.keras")
    assert refused(project, "evaluate") == (
        "models/model.keras takes images of shape [8, 8, 1] and gives 5 outputs, but meta.json records "
        "[8, 8, 1] and 10 classes; the model and data/prepared come from different runs, re-run dvc repro")


def checkpoint_folder(project: Path) -> Path:
    return next(project.rglob("state.json")).parent


@pytest.mark.tf
@pytest.mark.parametrize("damaged", ["best_model", "checkpoint", "state"])
def test_a_damaged_resume_state_starts_over_and_never_publishes_a_broken_model(trained_digits, tmp_path, damaged):
    project = copy_project(trained_digits, tmp_path)
    folder = checkpoint_folder(project)
    state = json.loads((folder / "state.json").read_text())
    if damaged == "state":
        (folder / "state.json").write_text('{"fingerprint": "abc", "epochs_do')
        warning = f"{folder.relative_to(project)}/state.json is damaged or from an older cnnlab"
    else:
        (folder / state[damaged]).write_bytes(b"")  # what a crash before the data reached the disk leaves
        warning = (f"the resume state in {folder.relative_to(project)} is damaged "
                   f"({state[damaged]} is empty (0 bytes))")

    result = run_cnnlab("train", cwd=project)

    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == f"cnnlab: warning: {warning}; training starts over from epoch 1"
    summary = json.loads((project / "models" / "summary.json").read_text())
    assert summary["epochs_run"] == FAST_PARAMS["train"]["epochs"] and "resumed after epoch" not in result.stdout
    with zipfile.ZipFile(project / "models" / "model.keras") as archive:  # a complete model, published
        assert archive.testzip() is None and "model.weights.h5" in archive.namelist()
    if damaged == "checkpoint":  # the published model is one evaluate reads (once is enough)
        assert run_cnnlab("evaluate", cwd=project).returncode == 0
