# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv on first use. torch is pinned to the CPU wheel that lies on disk.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,gguf]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/tinygemma quickstart

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/prep.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/loss.py
	$(PY) benchmarks/generate.py
	$(PY) benchmarks/quality.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
