"""The scripts in benchmarks/ keep working as stages/ changes: each one imports (a renamed function
fails here, not on the day someone measures), and the augmentation benchmark runs on tiny data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, run_cnnlab, write_params

BENCHMARKS = sorted(path.name for path in (REPO_ROOT / "benchmarks").glob("*.py"))
IMPORTS_TENSORFLOW = {"plain_keras.py"}  # imports keras at the top (seconds)

IMPORT_PROBE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("benchmark", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert callable(module.main), "a benchmark has a main()"
"""


def run_python(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_every_benchmark_is_listed():
    assert {"augment_pipeline.py", "plain_keras.py", "train_speed.py"} <= set(BENCHMARKS)


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.tf) if name in IMPORTS_TENSORFLOW else name for name in BENCHMARKS
])
def test_benchmark_imports(name: str, tmp_path: Path):
    result = run_python("-c", IMPORT_PROBE, str(REPO_ROOT / "benchmarks" / name), cwd=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.tf
def test_augment_pipeline_benchmark_runs_on_digits(tmp_path: Path):
    write_params(tmp_path, {"prepare": {"limit": 30}})
    run_cnnlab("prepare", cwd=tmp_path, check=True)
    result = run_python(str(REPO_ROOT / "benchmarks" / "augment_pipeline.py"), "--prepared", "data/prepared",
                        "--passes", "1", "--batch-size", "32", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for variant in ("none", "cnnlab", "keras-layers"):
        assert f"{variant}:" in result.stdout
    assert "x the speed of the Keras-layers reference" in result.stdout
