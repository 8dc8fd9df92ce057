# The two commands a new user needs: `make repro` and `make test`.
# Both create .venv from the pinned lock file when it is missing or out of date.
# requirements.lock is universal (uv): the same file serves Python 3.11, 3.12 and 3.13.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# uv installs the lock's wheels (10 s on a fresh clone with an empty cache, where pip took about
# 2 minutes; the same packages); uv's own version is the lock's pin.
UV_VERSION := $(shell sed -n 's/^uv==//p' requirements.lock)
UV_INSTALL := $(BIN)/uv pip install --no-progress --quiet --python $(BIN)/python
# Python compiles each module it imports to a .pyc the first time, then reads that. Where
# PYTHONDONTWRITEBYTECODE is set (CI machines, containers), it would compile TensorFlow's
# sources anew in every command (its import 12 s instead of 4.5 s here). The targets below
# unset it: the modules the pipeline and the tests import are compiled once, in .venv, on first
# use; compiling all 16,000 modules at install (uv --compile-bytecode) took 27 s more
# (docs/performance.md).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install repro test test-fast lock lock-check clean params-table

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -c 'import sys; v = sys.version_info[:2]; \
	sys.exit(None if (3, 11) <= v <= (3, 13) else "cnnlab needs Python 3.11, 3.12 or 3.13; $(PYTHON) is %d.%d: run `make PYTHON=python3.13 ...`" % v)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(UV_INSTALL) -r requirements.lock
	$(UV_INSTALL) --no-deps -e .
	touch $(STAMP)

# Validate params.yaml first, so a typo stops here with one line before DVC touches anything.
repro: install
	$(BIN)/cnnlab check
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# One pytest worker per core (pytest-xdist); a test file's tests stay on one worker, so the
# trained projects a module shares are built once. Files start in tests/conftest.py's order,
# slowest first (--no-loadscope-reorder: xdist would otherwise start the files with the most
# tests first). `make test WORKERS=1` runs them in one process.
WORKERS ?= auto
test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n $(WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: install
	$(BIN)/python -m pytest -m "not tf and not e2e"

# Re-pin after changing dependencies in pyproject.toml: one universal lock for every supported
# Python, keeping today's pins where they still fit (`make lock LOCK_FLAGS=--upgrade` to refresh all).
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(BIN)/uv pip compile pyproject.toml --extra test --extra ray --extra export --universal --python-version 3.11 \
	    --no-python-downloads --custom-compile-command "make lock" --quiet $(LOCK_FLAGS) -o requirements.lock

# Resolve the lock for each supported Python (3.11-3.13) on Linux and macOS, without their interpreters.
lock-check: install
	$(BIN)/python -m pytest -q tests/test_lock.py

clean:
	rm -rf $(VENV)

# The params reference table, generated from stages/config.py (paste it into docs/params.md).
params-table: install
	@$(BIN)/python -m stages.config
