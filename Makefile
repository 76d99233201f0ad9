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
# Test files run on this many pytest-xdist workers, whole files per worker (module fixtures are built once). Two
# workers took the suite from 28 to 13 minutes on a 2-core machine; PYTEST_WORKERS=0 runs it in one process. (The
# adatp tests on the newest transformers stay in one process: most of them sit in one file.)
PYTEST_WORKERS ?= 2
# The pinned default our numbers are measured with (pyproject declares the range the code supports).
TRANSFORMERS_SPEC ?= transformers==5.23.0
# A second venv: the library alone with its video extra (no service extras) on the newest transformers in our declared
# range, running tests/adatp. Catches a break in a new transformers release, and a service import leaking into adatp.
NEWEST_VENV := .venv-newest
NEWEST_VPY := $(NEWEST_VENV)/bin/python
NEWEST_STAMP := $(NEWEST_VENV)/.installed-stamp
NEWEST_TRANSFORMERS ?= transformers>=5.19,<6
# The library's own room: what runs without the service's extras.
LIBRARY_TESTS := tests/adatp

.PHONY: install test lint bench demo

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(VPY) -m pip install -e ".[tune,dev]" "$(TRANSFORMERS_SPEC)"
	touch $(STAMP)

$(NEWEST_STAMP): pyproject.toml
	$(PYTHON) -m venv $(NEWEST_VENV)
	$(NEWEST_VPY) -m pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(NEWEST_VPY) -m pip install -e ".[video]" pytest hypothesis pillow
	$(NEWEST_VPY) -m pip install --upgrade "$(NEWEST_TRANSFORMERS)"
	touch $(NEWEST_STAMP)

install: $(STAMP)

test: $(STAMP) $(NEWEST_STAMP)
	$(VPY) -m pytest -q --durations=25 -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
	@echo "== adatp on the newest transformers, without the service's extras"
	$(NEWEST_VPY) -c "import transformers, torch; print('transformers', transformers.__version__, 'torch', torch.__version__)"
	$(NEWEST_VPY) -m pytest -q -p no:cacheprovider $(LIBRARY_TESTS)

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
