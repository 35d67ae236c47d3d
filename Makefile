PYTHON ?= python
DATA_DIR ?= $(or $(DIFFQAS_DATA_DIR),../shared/data)

.PHONY: install test test-fast smoke run bench lint clean

install:  ## install the package and the dev tools (editable: configs/ is read from the checkout)
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## the whole suite, slow checks included (CI runs this)
	DIFFQAS_DATA_DIR=$(DATA_DIR) $(PYTHON) -m pytest

test-fast:
	DIFFQAS_DATA_DIR=$(DATA_DIR) $(PYTHON) -m pytest -m "not slow"

smoke:  ## a few steps of the default experiment, local files only
	$(PYTHON) -m diffqas_runner debug=smoke logger=none data_dir=$(DATA_DIR)

run:  ## the default experiment (MNIST 1 vs 5, DiffQAS, depth 15)
	$(PYTHON) -m diffqas_runner data_dir=$(DATA_DIR)

bench:
	$(PYTHON) scripts/bench_backends.py --json outputs/bench_backends.json

lint:
	$(PYTHON) -m ruff check diffqas_runner tests scripts
	$(PYTHON) -m ruff format --check diffqas_runner tests scripts

clean:
	rm -rf outputs multirun wandb .pytest_cache .ruff_cache .venv-ci
