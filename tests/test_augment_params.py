"""The `augment` params group and the TensorFlow-free parts of the stage (no TF imported here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, run_cnnlab, write_params
from stages.augment import flip_warnings, resolve_policy, value_range
from stages.config import AugmentParams, parse_params
from stages.errors import ConfigError

DIGITS_META = {
    "dataset": "digits", "image_shape": [8, 8, 1], "num_classes": 10, "class_names": list("0123456789"),
    "splits": {"train": 100, "val": 20, "test": 20}, "normalization": {"method": "unit", "scale": 16.0},
}


def augment_params(**values) -> AugmentParams:
    return parse_params({"augment": values}).augment


def test_defaults_leave_augmentation_off_and_flips_off():
    params = AugmentParams()
    assert params.mode == "off"
    assert params.horizontal_flip is False and params.vertical_flip is False
    assert augment_params() == params  # the declared defaults parse as themselves


def test_params_yaml_declares_every_augment_key_with_its_default():
    import yaml

    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["augment"]
    assert set(raw) == set(AugmentParams.__dataclass_fields__)
    assert parse_params({"augment": raw}).augment == AugmentParams()


@pytest.mark.parametrize("spelling", ["off", False])
def test_yaml_false_is_read_as_off(spelling):
    # dvc exp run -S augment.mode=off writes a bare off, which YAML 1.1 reads as false.
    assert augment_params(mode=spelling).mode == "off"


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_augmenting_modes_are_accepted(mode):
    assert augment_params(mode=mode, rotation=15).mode == mode


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("mode", "sometimes", "one of 'off', 'online', 'offline'"),
        ("mode", True, "one of 'off', 'online', 'offline'"),
        ("rotation", 181, "a number in [0, 180]"),
        ("rotation", -5, "a number in [0, 180]"),
        ("width_shift", 1.0, "a number in [0, 1)"),
        ("height_shift", -0.1, "a number in [0, 1)"),
        ("zoom", 1, "a number in [0, 1)"),
        ("shear", 90, "a number in [0, 90)"),
        ("brightness", 1.5, "a number in [0, 1]"),
        ("contrast", "high", "a number in [0, 1]"),
        ("erasing", 2, "a number in [0, 1]"),
        ("horizontal_flip", "yes", "true or false"),
        ("fill_mode", "mirror", "one of 'constant', 'nearest', 'reflect', 'wrap'"),
        ("copies", 0, "an integer in [1, 100]"),
        ("copies", 2.5, "an integer in [1, 100]"),
        ("seed", -1, "null or an integer in [0, 2147483647]"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_expected_range(key, value, expected):
    with pytest.raises(ConfigError) as error:
        augment_params(**{key: value})
    message = str(error.value)
    assert f"'augment.{key}' must be {expected}, got {value!r}" in message
    assert "\n" not in message


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_augmenting_with_every_transform_off_is_refused(mode):
    nothing = dict(rotation=0, width_shift=0, height_shift=0, zoom=0, shear=0, brightness=0,
                   contrast=0, erasing=0, horizontal_flip=False, vertical_flip=False)
    assert augment_params(mode="off", **nothing).is_identity()
    with pytest.raises(ConfigError, match=r"'augment.mode' must be 'off' when every transform is 0"):
        augment_params(mode=mode, **nothing)
    assert augment_params(mode=mode, **{**nothing, "vertical_flip": True}).mode == mode


def test_check_command_reports_a_bad_augment_value_in_one_line(tmp_path):
    write_params(tmp_path, {"augment": {"mode": "online", "rotation": 400}})
    result = run_cnnlab("check", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'augment.rotation' must be a number in [0, 180], got 400" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("dataset", ["digits", "mnist"])
def test_flips_on_digit_datasets_are_flagged(dataset):
    assert flip_warnings(AugmentParams(), dataset) == []
    flagged = flip_warnings(AugmentParams(horizontal_flip=True, vertical_flip=True), dataset)
    assert len(flagged) == 2
    assert "augment.horizontal_flip is true" in flagged[0] and "augment.horizontal_flip=false" in flagged[0]
    assert "augment.vertical_flip" in flagged[1]


def test_flips_on_other_datasets_are_fine():
    assert flip_warnings(AugmentParams(horizontal_flip=True), "fashion_mnist") == []


def test_value_range_follows_the_prepared_normalization():
    assert value_range(DIGITS_META) == {"low": [0.0], "high": [1.0]}
    meta = {"image_shape": [4, 4, 3],
            "normalization": {"method": "standardize", "scale": 255, "mean": [0.5, 0.25, 0.0], "std": [0.5, 0.25, 1.0]}}
    assert value_range(meta) == {"low": [-1.0, -1.0, 0.0], "high": [1.0, 3.0, 1.0]}


def test_policy_holds_only_what_the_mode_uses():
    assert resolve_policy(augment_params(rotation=30), 7, DIGITS_META) == {"mode": "off", "materialized": False}
    online = resolve_policy(augment_params(mode="online", rotation=30), 7, DIGITS_META)
    assert online["seed"] == 7 and online["materialized"] is False and "copies" not in online
    assert online["transforms"]["rotation"] == 30.0
    offline = resolve_policy(augment_params(mode="offline", copies=3, seed=11), 7, DIGITS_META)
    assert offline["seed"] == 11 and offline["materialized"] is True
    assert offline["copies"] == 3 and offline["train_images"] == 400


def test_off_mode_writes_only_the_policy_and_never_imports_tensorflow(tmp_path):
    prepared, augmented = tmp_path / "prepared", tmp_path / "augmented"
    prepared.mkdir()
    (prepared / "meta.json").write_text(json.dumps(DIGITS_META))
    script = (
        "import sys\n"
        "from stages.augment import augment\n"
        "from stages.config import AugmentParams\n"
        f"augment(AugmentParams(), 42, {str(prepared)!r}, {str(augmented)!r})\n"
        "assert 'tensorflow' not in sys.modules, 'off mode imported TensorFlow'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO_ROOT)
    assert sorted(path.name for path in augmented.iterdir()) == ["policy.json"]
    assert json.loads((augmented / "policy.json").read_text()) == {"mode": "off", "materialized": False}
