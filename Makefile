# Two commands work on a fresh machine: `make demo` and `make test`; `make docs` builds the site.
# PIP_FIND_LINKS is cleared so pip takes torch from the package index: the CPU-only
# torch wheel some machines keep in a local folder cannot import torchvision.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: demo test docs lint bench soundness clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	PIP_FIND_LINKS= $(PY) -m pip install --upgrade pip
	PIP_FIND_LINKS= $(PY) -m pip install -e ".[all,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) recipes/run.py

test: $(STAMP)
	$(VENV)/bin/ruff check torchqv tests benchmarks recipes
	$(VENV)/bin/mypy
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 -q tests

# The documentation site (MkDocs Material + mkdocstrings), offline, warnings are errors.
$(DOCS_STAMP): $(STAMP)
	PIP_FIND_LINKS= $(PY) -m pip install -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(PY) benchmarks/bench_qat.py

# The verifier's soundness campaign at scale (tests/test_soundness.py runs 240 cases in `make test`):
# every verdict against an exact enumeration; the counts go to BENCHMARKS.md.
SOUNDNESS_CASES ?= 4000
SOUNDNESS_OUT ?= outputs/soundness
soundness: $(STAMP)
	rm -rf $(SOUNDNESS_OUT)
	TORCHQV_SOUNDNESS_CASES=$(SOUNDNESS_CASES) TORCHQV_SOUNDNESS_OUT=$(SOUNDNESS_OUT) OMP_NUM_THREADS=1 \
		$(PY) -m pytest -n 2 -q tests/test_soundness.py; status=$$?; \
		PYTHONPATH=. $(PY) tests/test_soundness.py summarize $(SOUNDNESS_OUT); exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build site *.egg-info
