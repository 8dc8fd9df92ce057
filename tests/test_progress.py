"""Slow steps show a status line or a progress bar on a terminal, and nothing in logs."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cnnlab, write_params


def run_in_terminal(*args: str, cwd: Path) -> str:
    """`cnnlab ARGS` with stdout and stderr on a pseudo-terminal, as a user sees it."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "stages", *args], cwd=cwd, stdin=terminal,
                               stdout=terminal, stderr=terminal, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    os.close(terminal)
    output = b""
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # the command closed the terminal
            break
        if not data:
            break
        output += data
    os.close(controller)
    assert process.wait() == 0, output.decode(errors="replace")
    return output.decode(errors="replace")


@pytest.mark.tf
def test_offline_augmentation_shows_the_tensorflow_import_and_a_bar_only_on_a_terminal(tmp_path: Path):
    write_params(tmp_path, {"prepare": {"limit": 40}, "augment": {"mode": "offline", "copies": 2}})
    run_cnnlab("prepare", cwd=tmp_path, check=True)

    seen = run_in_terminal("augment", cwd=tmp_path)
    assert "importing TensorFlow" in seen and "writing 2 augmented copies" in seen
    assert "augmentation mode offline" in seen

    logged = run_cnnlab("augment", cwd=tmp_path, check=True)  # captured: not a terminal
    assert "importing TensorFlow" not in logged.stderr + logged.stdout
    assert "augmented copies" not in logged.stderr + logged.stdout
