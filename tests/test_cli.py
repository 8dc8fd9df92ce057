"""The command line: fast start without TensorFlow, one-line user errors with exit code 2."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, run_cnnlab, write_params

TF_MODULES = "[m for m in sys.modules if m == 'tensorflow' or m.startswith(('tensorflow.', 'keras'))]"


def imported_tensorflow(code: str, cwd) -> list[str]:
    """Run `code` in a fresh interpreter and return the TensorFlow/Keras modules it imported."""
    probe = f"import sys\n{code}\nprint({TF_MODULES})"
    result = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout.strip().splitlines()[-1])


def test_help_and_cli_import_do_not_load_tensorflow(tmp_path):
    code = (
        "from typer.testing import CliRunner\nfrom stages.cli import app\n"
        "result = CliRunner().invoke(app, ['--help'])\nassert result.exit_code == 0, result.output\n"
        "assert 'prepare' in result.output and 'train' in result.output"
    )
    assert imported_tensorflow(code, tmp_path) == []


def test_prepare_runs_and_report_and_evaluate_load_without_tensorflow_or_scikit_learn(tmp_path):
    write_params(tmp_path, {})
    code = ("from stages.cli import app\ntry:\n    app(['prepare'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'sklearn' not in sys.modules, 'scikit-learn was imported'")
    assert imported_tensorflow(code, tmp_path) == []
    assert json.loads((tmp_path / "data" / "prepared" / "meta.json").read_text())["splits"]["test"] == 270
    # evaluate imports TensorFlow only to predict, scikit-learn never (stages/metrics.py)
    assert imported_tensorflow("import stages.report, stages.compare, stages.evaluate\n"
                               "assert 'sklearn' not in sys.modules, 'scikit-learn was imported'", tmp_path) == []


def test_datasets_lists_sources_without_scikit_learn_or_tensorflow(tmp_path):
    write_params(tmp_path, {})
    code = ("from stages.cli import app\ntry:\n    app(['datasets'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert not [m for m in sys.modules if m.startswith('sklearn')], 'scikit-learn imported'")
    assert imported_tensorflow(code, tmp_path) == []



@pytest.mark.tf
def test_tensorflow_loads_without_keras_optional_modules_which_still_import_afterwards(tmp_path):
    """Keras would pull scikit-learn (its scikit-learn wrappers), matplotlib and pandas into
    every command that imports TensorFlow; import_tensorflow hides them while Keras loads, and
    a stage that needs one imports it afterwards as usual."""
    code = ("from stages.runtime import import_tensorflow\nimport_tensorflow()\nimport keras\n"
            "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'matplotlib', 'pandas'})\n"
            "assert not loaded, loaded\n"
            "from sklearn.metrics import confusion_matrix\nassert confusion_matrix([0, 1], [0, 1]).trace() == 2\n"
            "import pandas, matplotlib.pyplot\nassert pandas.DataFrame({'a': [1]}).shape == (1, 1)")
    assert "tensorflow" in imported_tensorflow(code, tmp_path)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"train": {"optimizer": "adamm"}}, "train.optimizer"),
        ({"train": {"epochs": -1}}, "train.epochs"),
        ({"prepare": {"colour": "rgb"}}, "prepare.colour"),
    ],
)
def test_bad_params_give_one_line_exit_code_2_and_keep_previous_artifacts(tmp_path, overrides, key):
    write_params(tmp_path, {})
    run_cnnlab("prepare", cwd=tmp_path, check=True)
    meta = tmp_path / "data" / "prepared" / "meta.json"
    before = hashlib.sha256(meta.read_bytes()).hexdigest()

    write_params(tmp_path, overrides)
    for command in ("check", "prepare"):
        result = run_cnnlab(command, cwd=tmp_path)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("cnnlab: error: params.yaml:") and key in lines[0]
        assert "Traceback" not in result.stderr
    assert hashlib.sha256(meta.read_bytes()).hexdigest() == before


def test_missing_artifact_is_a_user_error(tmp_path):
    write_params(tmp_path, {})
    result = run_cnnlab("augment", cwd=tmp_path)
    assert result.returncode == 2
    assert "prepared metadata not found" in result.stderr and "dvc repro" in result.stderr


def test_check_accepts_the_repository_params():
    result = run_cnnlab("check", cwd=REPO_ROOT)
    assert result.returncode == 0 and "OK" in result.stdout
