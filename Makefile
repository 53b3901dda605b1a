# Two commands work on a fresh machine: `make demo` and `make test`.
# PIP_FIND_LINKS is cleared so pip takes torch from the package index: the CPU-only
# torch wheel some machines keep in a local folder cannot import torchvision.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	PIP_FIND_LINKS= $(PY) -m pip install --upgrade pip
	PIP_FIND_LINKS= $(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) recipes/run.py

test: $(STAMP)
	$(VENV)/bin/ruff check torchqv tests benchmarks recipes
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 -q tests

bench: $(STAMP)
	$(PY) benchmarks/bench_qat.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
