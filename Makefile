# faml: the two set-up commands are `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test install dev lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed pyproject.toml
	$(PIP) install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

demo: install
	$(VENV)/bin/faml demo --out demo_out

test: dev
	$(PY) -m pytest

lint: dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: install
	$(PY) benchmarks/bench_fast_align.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
