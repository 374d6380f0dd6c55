# `make repro` runs the pipeline, `make test` the test suite; both set up .venv first, from the
# pinned, hashed requirements.lock (Linux x86_64, CPython 3.11). `make lock` refreshes the lock
# from pyproject.toml's ranges; `make check-lock` fails when the two disagree.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# torch<=2.14.1: the newest release pip serves on these machines (and CPU-capable everywhere).
LOCK_ARGS := pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --constraint lock-constraints.txt \
	--custom-compile-command "make lock" --quiet

.PHONY: install repro test test-pipeline lint format lock check-lock clean-venv

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

repro: $(STAMP)
	. $(VENV)/bin/activate && dvc repro

# Two workers, one test file each at a time (module fixtures, e.g. tiny models, are built once).
test: $(STAMP)
	. $(VENV)/bin/activate && pytest -n 2 --dist loadfile

# The micro DAG run for real (tests/test_pipeline.py's slow tests: every stage as a process, a
# no-op rerun, kill-safety, Ctrl-C, a DVC remote round trip); CI runs it after `make test`.
test-pipeline: $(STAMP)
	. $(VENV)/bin/activate && pytest -m slow tests/test_pipeline.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

# Keeps every pin that still satisfies pyproject.toml (uv prefers the versions in the output
# file); `make lock UPGRADE=--upgrade` moves everything to the newest allowed release.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile $(LOCK_ARGS) $(UPGRADE) -o $(LOCK)

check-lock: $(STAMP)
	cp $(LOCK) $(VENV)/lock.check
	$(VENV)/bin/uv pip compile $(LOCK_ARGS) -o $(VENV)/lock.check
	diff -u $(LOCK) $(VENV)/lock.check || (echo "requirements.lock disagrees with pyproject.toml: run make lock" && exit 1)

clean-venv:
	rm -rf $(VENV)
