# The two commands of the quick start: `make train` and `make test`.
# Both create the virtual environment on first use and reinstall when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/seg_shapes_unet.py
WORKDIR ?= runs/seg_shapes_unet
PYTEST_ARGS ?=

.PHONY: train test test-slow conformance bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# `make train` needs the trainer and every task's extras; `make test` adds the test tools.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[all]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

# The reference libraries of the conformance tests: a CPU torch wheel, MONAI, smp 0.6 (models) with
# timm and torchvision, and smp 0.5 beside it (losses); smp, timm and torchvision installed without
# their dependencies (see tests/conformance/references.py).
$(VENV)/.installed-conformance: $(VENV)/.installed-test
	$(BIN)/pip install --quiet torch==2.13.0 monai
	$(BIN)/pip install --quiet --no-deps segmentation-models-pytorch==0.6.0 timm==1.0.31 torchvision==0.29.1
	$(BIN)/pip install --quiet --no-deps --target $(VENV)/references/smp-0.5 segmentation-models-pytorch==0.5.0
	touch $@

train: $(VENV)/.installed
	$(BIN)/python train.py --config=$(CONFIG) --workdir=$(WORKDIR)

# The default suite on every core, a test file per worker (its module fixtures built once).
PARALLEL ?= -n auto --dist loadfile

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PARALLEL) $(PYTEST_ARGS)

test-slow: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

conformance: $(VENV)/.installed-conformance
	$(BIN)/python -m pytest $(PARALLEL) tests/conformance $(PYTEST_ARGS)

bench: $(VENV)/.installed-conformance
	$(BIN)/python benchmarks/losses.py

clean:
	rm -rf $(VENV) runs
