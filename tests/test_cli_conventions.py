"""What users of modern Python CLIs expect, checked through the real `cnnlab` command: --version,
shell completion, help grouped into panels without Python types, output that fits and reads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version

import pytest
import typer
import yaml

from stages.cli import app
from tests.conftest import REPO_ROOT, run_cnnlab, write_params

COMMANDS = sorted(typer.main.get_command(app).commands)
PYTHON_TYPE = re.compile(r"<(bool|str|int|float|path|Path|list\[)[^>]*>")


def test_version_is_the_installed_one():
    result = run_cnnlab("--version", cwd=REPO_ROOT, check=True)
    assert result.stdout.strip() == f"cnnlab {version('cnnlab')}"


def complete(mode: str, words: str) -> str:
    """What the shell gets from cnnlab's completion protocol (what `--install-completion` sets up)."""
    environment = {**os.environ, "_CNNLAB_COMPLETE": mode, "COMP_WORDS": words,
                   "COMP_CWORD": str(len(words.split()) - 1)}
    result = subprocess.run([sys.executable, "-m", "stages"], cwd=REPO_ROOT, env=environment,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_shell_completion_completes_commands_and_options():
    assert "_cnnlab_completion" in complete("source_bash", "cnnlab")  # the script a shell sources
    assert complete("complete_bash", "cnnlab pre").split() == ["prepare", "predict"]
    assert "--top-k" in complete("complete_bash", "cnnlab predict --to").split()
    assert "--install-completion" in run_cnnlab("--help", cwd=REPO_ROOT, check=True).stdout


def panel(help_text: str, title: str) -> list[str]:
    """The command names listed in the help panel titled `title`."""
    body = help_text.split(f"─ {title} ─", 1)[1].split("╰", 1)[0]
    return re.findall(r"^│ ([\w-]+)", body, flags=re.M)


def test_help_groups_the_pipeline_stages_first_then_the_tools():
    text = run_cnnlab("--help", cwd=REPO_ROOT, check=True).stdout
    dvc_stages = list(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])
    assert panel(text, "Pipeline stages") == dvc_stages  # in pipeline order
    assert sorted(panel(text, "Tools")) == sorted(set(COMMANDS) - set(dvc_stages))
    assert text.index("Pipeline stages") < text.index("Tools")


def test_no_help_shows_a_python_type():
    with ThreadPoolExecutor(4) as pool:
        helps = dict(zip(COMMANDS, pool.map(
            lambda command: run_cnnlab(command, "--help", cwd=REPO_ROOT, check=True).stdout, COMMANDS)))
    helps["cnnlab"] = run_cnnlab("--help", cwd=REPO_ROOT, check=True).stdout
    leaks = {command: PYTHON_TYPE.findall(text) for command, text in helps.items() if PYTHON_TYPE.search(text)}
    assert not leaks
    assert re.search(r"--top-k +INTEGER", helps["predict"]) and re.search(r"--model +PATH", helps["predict"])
    assert re.search(r"--md +Markdown", helps["compare"])  # a flag takes no value: none is shown
    assert re.search(r"--params +PATH", helps["check"])


def test_datasets_is_a_table_that_fits_100_columns_when_redirected(tmp_path):
    write_params(tmp_path, {"prepare": {"dataset": "digits"}})
    lines = run_cnnlab("datasets", cwd=tmp_path, check=True).stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 100
    rows = {match[2]: match[1] for line in lines if (match := re.match(r"│ ([* ]) │ (\w+) ", line))}
    assert set(rows) == {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "folder"}
    assert [name for name, mark in rows.items() if mark == "*"] == ["digits"]


def test_prepare_reports_split_sizes_in_words_not_a_python_dict(tmp_path):
    write_params(tmp_path, {})
    output = run_cnnlab("prepare", cwd=tmp_path, check=True).stdout
    meta = yaml.safe_load((tmp_path / "data" / "prepared" / "meta.json").read_text())
    sizes = meta["splits"]
    assert f"{sizes['train']} train / {sizes['val']} val / {sizes['test']} test" in output
    assert "{" not in output and "'" not in output


# A command's process ends without the interpreter's teardown (stages/cli.py): whatever a library
# left to its atexit handler or to logging's shutdown must still reach the disk.
EXIT_PROBE = """
import atexit, logging, logging.handlers, sys
import stages.cli
log, marker, arguments = sys.argv[1], sys.argv[2], sys.argv[3:]
buffered = logging.handlers.MemoryHandler(1000, target=logging.FileHandler(log))  # writes when closed
logging.getLogger("probe").addHandler(buffered)
logging.getLogger("probe").warning("kept until logging shuts down")
command = stages.cli.app

def app(**options):  # the command registers an atexit handler, as TensorFlow, DVCLive and Ray do
    atexit.register(lambda: open(marker, "w").write("ran"))
    command(**options)

stages.cli.app = app
sys.argv = ["cnnlab", *arguments]
stages.cli.main()
"""


@pytest.mark.parametrize(("arguments", "exit_code"), [(["--version"], 0), (["check"], 2)])
def test_a_command_ends_only_after_its_atexit_handlers_and_logging_ran(tmp_path, arguments, exit_code):
    result = subprocess.run([sys.executable, "-c", EXIT_PROBE, "log.txt", "marker.txt", *arguments], cwd=tmp_path,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == exit_code, result.stderr
    assert (result.stdout.strip() == f"cnnlab {version('cnnlab')}" if exit_code == 0
            else result.stderr.startswith("cnnlab: error: "))
    assert (tmp_path / "log.txt").read_text() == "kept until logging shuts down\n"
    assert (tmp_path / "marker.txt").read_text() == "ran"
