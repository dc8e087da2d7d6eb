# sdmc: set-up, the main job (demo) and the tests.  Every target creates/uses the local .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= runs/demo

.PHONY: setup demo lint format test test-all mutate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -e ".[dev]"
	# Lava (optional part): its wheels declare Python <3.11, so they go in with --no-deps and sdmc
	# applies the needed fixes at import time (see backends/lava/install.py).
	$(PY) -m sdmc.backends.lava.install
	touch $(STAMP)

setup: $(STAMP)

## The main job: the whole pipeline on the bundled digits data (CPU, minutes).
demo: $(STAMP)
	$(PY) -m sdmc demo --out $(OUT)

## Lint and format check (CI runs it before the tests); `make format` applies both.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## The test suite (what CI runs, after the lint).
test: $(STAMP)
	$(PY) -m pytest -q

## Including the slow tests (full-size models, longer training).
test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

## Mutation testing of the semantic core (tests/mutation.toml says what and which tests; tests/README.md);
## a sample fits a break: make mutate ARGS="--max 40 --files golden,kernels".  CPU-heavy, so niced.
mutate: $(STAMP)
	nice -n 10 $(PY) tests/mutate.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
