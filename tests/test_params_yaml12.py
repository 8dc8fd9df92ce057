"""params.yaml is read as DVC reads it (YAML 1.2), so a `dvc exp run -S` round trip means the same to both."""

from __future__ import annotations

import pytest
from dvc.utils.serialize import dumps_yaml, parse_yaml

from stages.config import load_params, read_yaml
from stages.errors import ConfigError


@pytest.mark.parametrize("text", ["mode: off", 'mode: "off"', "mode: no", "flag: yes", "rate: 1e-5",
                                  "rate: 0.00001", "size: [64, 64]", "value: null", "on: 1"])
def test_cnnlab_and_dvc_read_the_same_values(text):
    assert read_yaml(text) == parse_yaml(text, "params.yaml")


def test_dvc_rewritten_params_validate_to_the_same_config(tmp_path):
    """DVC's `-S` rewrites params.yaml with its own dumper (`mode: "off"` becomes `mode: off`)."""
    original = (tmp_path / "params.yaml")
    original.write_text('augment:\n  mode: "off"\n  horizontal_flip: false\n')
    rewritten = tmp_path / "rewritten.yaml"
    rewritten.write_text(dumps_yaml(parse_yaml(original.read_text(), "params.yaml")))
    assert 'mode: "off"' not in rewritten.read_text()
    assert load_params(original) == load_params(rewritten)
    assert load_params(rewritten).augment.mode == "off"


def test_duplicate_keys_are_refused_as_dvc_refuses_them(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"line 2 \(found duplicate key \"seed\""):
        load_params(path)
