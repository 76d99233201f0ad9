# `make test` is the truth (CI runs it through .ci/run). It builds .venv on first use.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# Reinstall only when the dependencies change.
STAMP := $(VENV)/.installed-stamp
# torch goes first and pinned: an unpinned torch from PyPI pulls GBs of CUDA wheels. Elsewhere, point pip at
# the CPU wheel with e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install test lint bench demo

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(VPY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VPY) -m ruff check .

bench: $(STAMP)
	$(VPY) bench/prune_overhead.py

# The demo: tune on the synthetic set with the shipped tiny model (CPU, offline), then export presets/.
# Resumable: a second run reuses .autotune/demo (delete it to start over). DEMO_ARGS="n_trials=10" overrides.
DEMO_SPEC ?= studies/demo.yaml
DEMO_ARGS ?=
demo: $(STAMP)
	$(VENV)/bin/autotune study $(DEMO_SPEC) $(DEMO_ARGS)
	$(VENV)/bin/autotune export $(DEMO_SPEC) $(DEMO_ARGS)
