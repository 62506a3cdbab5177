# derd_scale set-up and entry points. Every target is idempotent: a second run skips
# what is installed (the stamp file records the hash of pyproject.toml).
#   make test        — create .venv, install, lint, run the whole test suite
#   make lint        — ruff check + ruff format --check (CI runs it through make test)
#   make quickstart  — create .venv, install, run the CPU-scale main job (Fashion-MNIST)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.derd_installed
# Where the real data lives; the quickstart reads the Hub unless DATA_PATH is set.
DATA_PATH ?=

# DeepSpeed JIT-compiles a comm op on its first launch (~60-90 s): build it once, inside the venv.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(VENV)/torch_extensions

.PHONY: install test test-fast lint format quickstart clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch/torchvision first and pinned: on this kind of machine pip serves them from local disk
	# (torchvision is timm's dependency, not listed in pyproject.toml; pinned here to match torch).
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[test]"
	# torchattacks pins requests~=2.25.1 (breaks huggingface_hub); it never imports requests.
	$(PY) -m pip install -q --no-deps "torchattacks==3.5.1"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP) lint
	DS_ACCELERATOR=cpu $(PY) -m pytest -q -ra tests

# ruff (pyproject.toml [tool.ruff]): lint rules and the formatter's check; `make format` applies it.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test-fast: $(STAMP)
	DS_ACCELERATOR=cpu $(PY) -m pytest -q -ra -m "not slow" tests

quickstart: $(STAMP)
	DS_ACCELERATOR=cpu $(PY) launch/quickstart.py $(if $(DATA_PATH),--data-path $(DATA_PATH),)

clean-venv:
	rm -rf $(VENV)
