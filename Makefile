# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo lint format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check resnetlab tests benchmarks
	$(VENV)/bin/ruff format --check resnetlab tests benchmarks
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/resnetlab demo

lint: $(STAMP)
	$(VENV)/bin/ruff check resnetlab tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format resnetlab tests benchmarks
	$(VENV)/bin/ruff check --fix resnetlab tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
