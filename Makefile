# `make test` and `make demo` set up (or refresh) a local virtualenv in .venv, then run.
# torch==2.13.0 is installed first and pinned, so a fresh machine never pulls a CUDA build;
# constraints.txt records the exact versions CI tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vpt-peft-installed

.PHONY: venv test demo docs bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0" -c constraints.txt
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,demo,docs]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check src tests bench examples docs
	$(PY) -m ruff format --check --quiet src tests bench examples docs
	$(PY) -m pytest -q
	$(PY) -m mkdocs build --strict --quiet --site-dir $(VENV)/site

demo: $(STAMP)
	$(PY) examples/demo.py

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) site build dist src/*.egg-info
