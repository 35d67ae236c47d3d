PYTHON ?= python
# Image data for MNIST/FashionMNIST: DIFFQAS_DATA_DIR if set; the tests then fall back to
# ../shared/data next to the checkout, the runner to ./data.

.PHONY: install test test-fast test-slow test-all smoke run bench lint clean

install:  ## install the package (editable) and the dev tools, at the versions CI tests (constraints.txt)
	$(PYTHON) -m pip install -c constraints.txt -e ".[dev]"

# The default suite runs on every core (pytest-xdist; JOBS=0 for one process).
JOBS ?= auto

test:  ## the default suite: everything but the tests marked slow (a few minutes on 2 cores)
	$(PYTHON) -m pytest -m "not slow" -n $(JOBS)

test-fast: test  ## the old name of `make test`

test-slow:  ## the longer checks only (CI runs them after `make test`); one process: some peak at 8 GB
	$(PYTHON) -m pytest -m slow

test-all: test test-slow  ## both

smoke:  ## three steps of the Bessel experiment, local files only (no data needed)
	$(PYTHON) -m diffqas_runner task=bessel debug=smoke logger=none

run:  ## the Table II Bessel DiffQAS run (no data needed; MNIST: diffqas-run task=mnist data_dir=...)
	$(PYTHON) -m diffqas_runner task=bessel logger=none

bench:
	$(PYTHON) scripts/bench_backends.py --json outputs/bench_backends.json

lint:
	$(PYTHON) -m ruff check diffqas_runner tests scripts
	$(PYTHON) -m ruff format --check diffqas_runner tests scripts

clean:
	rm -rf outputs multirun wandb build *.egg-info .pytest_cache .ruff_cache .venv-ci
