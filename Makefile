# `make repro` runs the pipeline, `make test` the test suite; both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install repro test lint format clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

repro: $(STAMP)
	. $(VENV)/bin/activate && dvc repro

# Two workers, one test file each at a time: the micro DAG test (a few minutes of subprocesses)
# runs next to the rest of the suite instead of before it.
test: $(STAMP)
	. $(VENV)/bin/activate && pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests
	$(VENV)/bin/ruff format src tests

clean-venv:
	rm -rf $(VENV)
