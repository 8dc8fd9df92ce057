"""requirements.lock installs on every Python that pyproject.toml supports, on Linux and macOS.

One universal lock (made by `make lock` with uv) serves every supported Python. Here uv resolves
pyproject.toml's dependencies for each target Python and platform, with the lock's pins as
constraints, without that interpreter: resolution fails when a pinned version has no wheel for
that Python's ABI (e.g. `cp313`) and no source distribution, or when pins contradict each other;
a resolved package missing from the lock means the lock is out of date. `make lock-check` runs
this file. It asks PyPI (network), all targets at once (10 to 30 s on this 2-core machine, depending on load).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK = REPO_ROOT / "requirements.lock"
UV = Path(sys.executable).parent / "uv"  # pinned in the `test` extra
PLATFORMS = ("x86_64-manylinux_2_28", "aarch64-apple-darwin")
MACOS = "14.0"  # the oldest macOS checked (onnxruntime, in the export extra, ships macOS 14+ wheels)


def supported_pythons() -> list[str]:
    """The 3.x versions that pyproject.toml's requires-python admits."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    spec = SpecifierSet(project["requires-python"])
    return [f"3.{minor}" for minor in range(8, 30) if spec.contains(f"3.{minor}")]


def pins(text: str, python: str | None = None) -> dict[str, str]:
    """{normalized name: version} of the `name==version` lines (comments ignored; with `python`,
    only the lines whose Python version markers admit it)."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==([^\s;]+)\s*(?:;\s*(.*))?$", line)
        if match and not (python and match[3] and "python" in match[3] and not Marker(match[3]).evaluate(
                {"python_version": python, "python_full_version": f"{python}.0"})):
            found[canonicalize_name(match[1])] = match[2]
    return found


def resolve(python: str, platform: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(UV), "pip", "compile", "pyproject.toml", "--extra", "test", "--extra", "ray", "--extra", "export", "--constraint", str(LOCK),
         "--python-version", python, "--python-platform", platform, "--no-python-downloads",
         "--no-header", "--no-annotate", "--quiet"],
        cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "MACOSX_DEPLOYMENT_TARGET": MACOS},
    )


TARGETS = [(python, platform) for python in supported_pythons() for platform in PLATFORMS]


@cache
def resolutions() -> dict[tuple[str, str], subprocess.CompletedProcess]:
    with ThreadPoolExecutor(len(TARGETS)) as pool:
        return dict(zip(TARGETS, pool.map(lambda target: resolve(*target), TARGETS)))


def test_the_supported_pythons_are_311_to_313():
    assert supported_pythons() == ["3.11", "3.12", "3.13"]


@pytest.mark.network
@pytest.mark.parametrize("python, platform", TARGETS)
def test_the_lock_resolves_for(python, platform):
    result = resolutions()[(python, platform)]
    assert result.returncode == 0, f"requirements.lock does not resolve for Python {python} on {platform}:\n{result.stderr}"
    resolved, locked = pins(result.stdout), pins(LOCK.read_text(), python)
    missing = sorted(set(resolved) - set(locked))
    assert not missing, f"requirements.lock lacks {missing}: run `make lock`"
    assert {name: locked[name] for name in resolved} == resolved  # the constraints held
    assert "tensorflow" in resolved and "pytest" in resolved  # the real dependency tree was resolved
