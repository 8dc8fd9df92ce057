# The two commands a new user needs: `make repro` and `make test`.
# Both create .venv from the pinned lock file when it is missing or out of date.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install repro test test-fast lock clean params-table

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# Validate params.yaml first, so a typo stops here with one line before DVC touches anything.
repro: install
	$(BIN)/cnnlab check
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not tf and not e2e"

# Re-pin after changing dependencies in pyproject.toml (run in a fresh venv).
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/python -m pip install --quiet ".[test]"
	.lockenv/bin/python -m pip freeze --exclude-editable | grep -v '^cnnlab' > requirements.lock
	rm -rf .lockenv

clean:
	rm -rf $(VENV)

# The README's params table, generated from stages/config.py (paste it into README.md).
params-table: install
	@$(BIN)/python -m stages.config
