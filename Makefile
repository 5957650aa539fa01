# The two commands of the quick start: `make train` and `make test`.
# Both create the virtual environment on first use and reinstall when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/seg_shapes_unet.py
WORKDIR ?= runs/seg_shapes_unet
PYTEST_ARGS ?=

# glibc's malloc settings (glibc >= 2.35 on Linux; ignored elsewhere). XLA's CPU runtime
# allocates each step's temporaries as one block (1.5 GB for the U-Net step of
# benchmarks/train_step.py):
# - hugetlb=1: on transparent huge pages (2 MiB) that step ran 1.13-1.2x faster here (measured
#   with YNNPACK convolutions, before jaxseg/xla_cpu.py);
# - mmap_max=0, trim_threshold, arena_max=1: the block comes from the main heap and stays there
#   when freed, so the next step reuses it instead of the kernel unmapping, zeroing and faulting
#   it in again (and this VM reporting it back to its host); one arena, or worker threads would
#   fall back to mmap. Resident memory then stays flat from step to step (README, Train step).
# A value set by the caller wins.
GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296:glibc.malloc.arena_max=1
export GLIBC_TUNABLES

.PHONY: train test test-slow conformance bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

# The reference libraries of the conformance tests: a CPU torch wheel, MONAI, and the pure-torch
# loss modules of smp 0.5 and torchvision (installed without their dependencies; see
# tests/conformance/references.py).
$(VENV)/.installed-conformance: $(VENV)/.installed-test
	$(BIN)/pip install --quiet torch==2.13.0 monai
	$(BIN)/pip install --quiet --no-deps segmentation-models-pytorch==0.5.0 torchvision==0.29.1
	touch $@

train: $(VENV)/.installed
	$(BIN)/python train.py --config=$(CONFIG) --workdir=$(WORKDIR)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

conformance: $(VENV)/.installed-conformance
	$(BIN)/python -m pytest tests/conformance $(PYTEST_ARGS)

bench: $(VENV)/.installed-conformance
	$(BIN)/python benchmarks/losses.py

clean:
	rm -rf $(VENV) runs
