# The few verbs people type. `make setup` builds .venv from the pinned lock file.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Local data folder (gsm8k/, wikitext-2/); empty means $$SCHEMABANK_DATA_DIR, then the hub.
DATA_DIR ?= $(if $(SCHEMABANK_DATA_DIR),$(SCHEMABANK_DATA_DIR),$(wildcard ../shared/data))

.PHONY: setup test lint format demo docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

test: setup
	$(BIN)/ruff check src tests scripts examples train.py evaluate.py
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests scripts examples train.py evaluate.py
	$(BIN)/ruff format --check src tests scripts examples train.py evaluate.py

format: setup
	$(BIN)/ruff format src tests scripts examples train.py evaluate.py

demo: setup
	$(BIN)/schemabank train --config configs/smoke.yaml $(if $(DATA_DIR),--data-dir $(DATA_DIR))

# The generated parts of docs/ (the tests check that they are up to date).
docs: setup
	$(BIN)/python -m schemabank.config_doc --write docs/configuration.md
	$(BIN)/schemabank table results --readme docs/results.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
