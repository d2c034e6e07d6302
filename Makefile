# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Pinned here (not in pyproject.toml, whose ranges stay open for users): an unpinned torch pulls a
# multi-GB CUDA build, and the tests are checked against these versions.
TORCH_PIN := torch==2.13.0
TRANSFORMERS_PIN := transformers==5.23.0
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml Makefile $(wildcard fxdelta/*.py fxdelta/*/*.py passes/*.py)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN) $(TRANSFORMERS_PIN)
	$(PY) -m pip install --quiet -e ".[test,lint]" --config-settings editable_mode=strict
	touch $(STAMP)

# The installed script, not `python -m`: from the repo root, `python -m` would import the source
# folder fxdelta/, which lacks fxdelta.passes (installed from passes/).
demo: $(STAMP)
	$(VENV)/bin/fxdelta-demo

test: $(STAMP)
	$(VENV)/bin/pytest -n 2 -q

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -x -m "not slow"

# ruff (lint + format) on everything; mypy on the installed package, from outside the source tree
# (whose fxdelta/ lacks fxdelta.passes, installed from passes/).
LINTED := fxdelta passes tests bench
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	cd $(VENV) && bin/mypy -p fxdelta --config-file $(CURDIR)/pyproject.toml

bench: $(STAMP)
	$(PY) bench/run.py
	$(PY) bench/attach_cycles.py --out bench/attach-cycles.md

clean:
	rm -rf $(VENV) build *.egg-info
