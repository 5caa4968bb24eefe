# The few commands a newcomer needs. Each target sets up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of this torch lies on the project's machines; elsewhere pip fetches it (override freely).
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-gpu lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: setup  ## AGCI on a small LLaVA built offline; writes agci-demo/demo.json and demo.png
	$(BIN)/agci demo --out agci-demo

test: setup  ## the CPU test suite (Triton kernels interpreted); GPU tests skip with the reason
	$(BIN)/python -m pytest

test-gpu:  ## on a CUDA machine: kernel tests compiled, at real sizes, then the op benchmark
	bash benchmarks/run_gpu.sh

lint: setup
	$(BIN)/ruff check agci tests benchmarks
	$(BIN)/ruff format --check agci tests benchmarks

bench: setup  ## op benchmark (small shapes, no Triton on CPU; full table on a GPU)
	$(BIN)/python benchmarks/bench_op.py

clean:
	rm -rf $(VENV) agci-demo .pytest_cache
