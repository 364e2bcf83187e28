# One entry point. `make demo` runs the demo sweep on synthetic data; `make test` runs the tests.
# Both create the virtual environment at .venv first (idempotent: reinstalls only when
# pyproject.toml changed). torch is pinned to the CPU build on disk and installed first.
# uv installs what pip would, in less than half the time (29 s against 75 s on the 2-core machine), and
# compiles the bytecode as pip does (without it, where PYTHONDONTWRITEBYTECODE is set, every process
# compiles every module it imports: the suite took 16 min 48 s instead of 10 min);
# pip's find-links, where torch's CPU build lies, are handed on to it. Where uv cannot be had, pip does it.

PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled
export MLFLOW_DISABLE_TELEMETRY ?= true
export MASTER_ADDR ?= 127.0.0.1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-durations test-all test-fast bench clean

setup: $(STAMP)

FIND_LINKS := $(or $(PIP_FIND_LINKS),$(shell $(PY) -m pip config get global.find-links 2>/dev/null))
UV_INSTALL = $(VENV)/bin/uv pip install -q --compile-bytecode --python $(VENV)/bin/python $(foreach l,$(FIND_LINKS),--find-links $(l))

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	($(VENV)/bin/pip install -q uv && $(UV_INSTALL) torch==2.13.0 && $(UV_INSTALL) -e '.[dev]') || \
	  ($(VENV)/bin/pip install -q --upgrade pip && $(VENV)/bin/pip install -q torch==2.13.0 && \
	   $(VENV)/bin/pip install -q -e '.[dev]')
	touch $(STAMP)

demo: setup
	$(VENV)/bin/aullm demo

# PYTHONFAULTHANDLER: a crash while the interpreter exits, after pytest has switched its own fault
# handler off, still prints every thread's stack
# -n 3: three pytest-xdist workers on the 2-core machine, the longest tests first (tests/conftest.py). The
# suite is CPU-bound there (a serial run waits 12% of its time): three keep both cores busy as four did, with
# fewer Ray clusters at once (10 min 14 s of tests either way). PYTEST_ARGS="-n 0" runs them in one process.
PYTEST_ARGS ?=
test: setup
	PYTHONFAULTHANDLER=1 $(VENV)/bin/pytest -q -m "not heavy" -n 3 $(PYTEST_ARGS)

# tests/durations.json, the schedule's expected durations: measured in one process, nothing else running
test-durations: setup
	PYTHONFAULTHANDLER=1 $(VENV)/bin/pytest -q -m "not heavy" -n 0 --store-durations

test-all: setup
	PYTHONFAULTHANDLER=1 $(VENV)/bin/pytest -q -n 3 $(PYTEST_ARGS)

test-fast: setup
	PYTHONFAULTHANDLER=1 $(VENV)/bin/pytest -q -m "not slow and not heavy" -n 3 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo_output .pytest_cache
