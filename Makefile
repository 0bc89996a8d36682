# cnf — the vocabulary users learn first. `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CNF := $(VENV)/bin/cnf
# CPU wheel already on disk here; GPU users: install your torch into .venv, then `make install TORCH_PIN=`
TORCH_PIN ?= torch==2.13.0
ARGS ?=
# one thread: on 2 cores, oversubscribed OpenMP made a small ODE model ~25x slower
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export PYTHONUNBUFFERED := 1

# suites (experiments/<suite>.yaml) and our own targets win over same-named experiment configs
SUITES := toy tabular digits vi vae
OWN_TARGETS := help install test test-fast lint demo clean compare report gpu-check $(SUITES)
EXPERIMENTS := $(filter-out $(OWN_TARGETS),$(sort $(basename $(notdir $(wildcard configs/experiment/*.yaml)))))
BENCHES := $(sort $(basename $(notdir $(wildcard experiments/bench/bench_*.py))))
SUITE ?= toy
RUNS ?= runs/$(SUITE)
OUT ?= reports/$(notdir $(RUNS))

.DEFAULT_GOAL := help
.PHONY: $(OWN_TARGETS) $(EXPERIMENTS) $(BENCHES)

help: ## list the targets
	@echo "cnf make targets:"
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-18s %s\n", $$1, $$2}'
	@echo "experiments (make NAME [ARGS='--trainer.max_steps 500']): one per configs/experiment/*.yaml"
	@for e in $(EXPERIMENTS); do printf "  %-18s %s\n" "$$e" "$$(head -1 configs/experiment/$$e.yaml | sed 's/^# *//')"; done
	@echo "benchmarks (tables, one thread): one per experiments/bench/bench_*.py"
	@for b in $(BENCHES); do printf "  %-18s %s\n" "$$b" "$$(sed -n 's/^\"\"\"\(.*\)/\1/p' experiments/bench/$$b.py | head -1)"; done

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	cp constraints.txt $(VENV)/constraints.txt
	@if [ -n "$(TORCH_PIN)" ]; then echo "$(TORCH_PIN)" >> $(VENV)/constraints.txt; $(PY) -m pip install -q "$(TORCH_PIN)"; fi
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[dev,data,bench,slurm,wandb]"
	touch $@

install: $(VENV)/.installed ## create .venv and install cnf (CPU torch pinned)

# tests: a parallel pass (pytest-xdist, one worker per core, at most 4), then the `serial`
# tests (DDP, signals, the shared suite runs; tests/conftest.py) in one process. Exit status 5
# ("no tests collected", e.g. PYTEST_ARGS picked only one kind) is not a failure.
# PYTEST_WORKERS=0: the parallel pass in one process too.
PYTEST_WORKERS ?= auto
XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),-p no:xdist,-n $(PYTEST_WORKERS) --maxprocesses 4)
PYTEST := WANDB_MODE=disabled $(PY) -m pytest -q
ok5 = s=$$?; [ $$s -eq 0 ] || [ $$s -eq 5 ]

test: $(VENV)/.installed ## whole suite (slow tests included): parallel, then serial; prints the slowest
	@echo "== parallel pass"; $(PYTEST) $(XDIST) -m "not serial" --durations=15 $(PYTEST_ARGS); $(ok5)
	@echo "== serial pass"; $(PYTEST) -p no:xdist --serial-pass -m "serial" --durations=5 $(or $(PYTEST_ARGS),tests); $(ok5)

test-fast: $(VENV)/.installed ## the edit-test loop: no slow tests, parallel, then serial
	@echo "== parallel pass"; $(PYTEST) $(XDIST) -m "not slow and not serial" --durations=10 $(PYTEST_ARGS); $(ok5)
	@echo "== serial pass"; $(PYTEST) -p no:xdist --serial-pass -m "not slow and serial" --durations=5 $(or $(PYTEST_ARGS),tests); $(ok5)

gpu-check: $(VENV)/.installed ## every family a few steps fp32 + bf16, DDP(1), CPU-vs-GPU log p: a table (tiny, CPU, without CUDA)
	WANDB_MODE=disabled $(PY) experiments/gpu_check.py $(ARGS)

lint: $(VENV)/.installed ## ruff over the package, tests and experiments
	$(VENV)/bin/ruff check cnf tests experiments

demo: $(VENV)/.installed ## train RealNVP on 8gaussians (~1 min CPU) and show where outputs went
	$(CNF) fit --config configs/experiment/toy_realnvp.yaml $(ARGS)

toy: $(VENV)/.installed ## suite: every toy model on 8gaussians, checkerboard, 2spirals + report (ARGS='--max-steps 300')
	$(CNF) compare experiments/toy.yaml $(ARGS)

tabular: $(VENV)/.installed ## suite: discrete flows vs CNFs on tabular data + report
	$(CNF) compare experiments/tabular.yaml $(ARGS)

digits: $(VENV)/.installed ## suite: bits/dim on 8x8 digits + report
	$(CNF) compare experiments/digits.yaml $(ARGS)

vi: $(VENV)/.installed ## suite: variational inference on the U1-U4 energies + report
	$(CNF) compare experiments/vi.yaml $(ARGS)

vae: $(VENV)/.installed ## suite: VAE with Gaussian vs flow posteriors + report
	$(CNF) compare experiments/vae.yaml $(ARGS)

compare: $(VENV)/.installed ## run any suite, resuming finished runs: make compare SUITE=toy ARGS='--max-steps 300'
	$(CNF) compare experiments/$(SUITE).yaml $(ARGS)

report: $(VENV)/.installed ## comparison report from finished runs: make report RUNS=runs/toy [OUT=reports/toy]
	$(CNF) report $(RUNS) --out $(OUT) $(ARGS)

$(EXPERIMENTS): %: $(VENV)/.installed
	$(CNF) fit --config configs/experiment/$@.yaml $(ARGS)

$(BENCHES): %: $(VENV)/.installed
	$(PY) experiments/bench/$@.py $(ARGS)

clean: ## remove runs/, reports/, wandb/ and caches (keeps .venv)
	rm -rf runs reports wandb lightning_logs .pytest_cache
