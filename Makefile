# `make test` and `make demo` set up (or refresh) a local virtualenv in .venv, then run.
# torch==2.13.0 is installed first and pinned, so a fresh machine never pulls a CUDA build;
# constraints.txt records the exact versions CI tests: the newest end of the declared range.
# constraints-min.txt records the oldest end; `make test-compat` runs the suite at both.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vpt-peft-installed

ADAPTERS_VENV := .venv-adapters
ADAPTERS_STAMP := $(ADAPTERS_VENV)/.installed

.PHONY: venv test test-timm test-kernels test-compat demo docs bench bench-adapters-venv clean

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
	$(MAKE) --no-print-directory test-timm

# timm's ViTs in their own virtualenv: timm needs torchvision, and PyPI's torchvision is linked against CUDA torch,
# so next to the CPU torch it would break `import transformers` for the demo and the CLI in the main .venv.
# tests/timm_support.py lets the timm tests import it here (docs/guides/timm.md).
TIMM_VENV := .venv-timm
TIMM_TESTS := tests/test_timm.py tests/test_timm_methods.py

$(TIMM_VENV)/.installed: pyproject.toml constraints.txt
	rm -rf $(TIMM_VENV)
	$(PYTHON) -m venv $(TIMM_VENV)
	$(TIMM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TIMM_VENV)/bin/python -m pip install --quiet "torch==2.13.0" -c constraints.txt
	$(TIMM_VENV)/bin/python -m pip install --quiet -c constraints.txt -e ".[test,timm]"
	touch $@

test-timm: $(TIMM_VENV)/.installed
	$(TIMM_VENV)/bin/python -m pytest -q -p no:cacheprovider $(TIMM_TESTS)

# The suite under other kernels and thread counts, as other machines run it: no test may depend on the bits a
# particular CPU's kernels produce. Run before every release (and before a session stops).
test-kernels: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -p no:cacheprovider
	ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest -q -p no:cacheprovider
	if grep -q avx512f /proc/cpuinfo; then ONEDNN_MAX_CPU_ISA=AVX512_CORE $(PY) -m pytest -q -p no:cacheprovider; \
	else echo "test-kernels: no AVX-512 on this CPU, ONEDNN_MAX_CPU_ISA=AVX512_CORE skipped"; fi
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -p no:cacheprovider

# Both ends of the declared transformers/peft/accelerate range (docs/compatibility.md), each in its own
# virtualenv built from scratch with torch pinned to the local CPU wheel: the oldest (constraints-min.txt)
# and the newest (constraints.txt, the set CI runs). Run before every release and after changing a range.
COMPAT_VENVS := .venv-compat-min .venv-compat-max

.venv-compat-min/.installed: constraints-min.txt pyproject.toml
.venv-compat-max/.installed: constraints.txt pyproject.toml
.venv-compat-%/.installed:
	rm -rf .venv-compat-$*
	$(PYTHON) -m venv .venv-compat-$*
	.venv-compat-$*/bin/python -m pip install --quiet --upgrade pip
	.venv-compat-$*/bin/python -m pip install --quiet "torch==2.13.0" -c $<
	.venv-compat-$*/bin/python -m pip install --quiet -c $< -e ".[test]"
	touch $@

test-compat: $(COMPAT_VENVS:%=%/.installed)
	status=0; for venv in $(COMPAT_VENVS); do \
		$$venv/bin/python -c "import sys, accelerate, peft, torch, transformers; print('$$venv: python', \
			sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, \
			'peft', peft.__version__, 'accelerate', accelerate.__version__)"; \
		$$venv/bin/python -m pytest -q -p no:cacheprovider || status=1; \
	done; exit $$status

demo: $(STAMP)
	$(PY) examples/demo.py

# The adapters library (a peer in bench/peers.py) pins transformers 4.57, so it gets a virtualenv of its own;
# torch is pinned first, as above, so no CUDA build is pulled.
$(ADAPTERS_STAMP):
	$(PYTHON) -m venv $(ADAPTERS_VENV)
	$(ADAPTERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(ADAPTERS_VENV)/bin/python -m pip install --quiet "torch==2.13.0"
	$(ADAPTERS_VENV)/bin/python -m pip install --quiet "torch==2.13.0" "adapters==1.3.0" "transformers==4.57.6"
	touch $(ADAPTERS_STAMP)

bench-adapters-venv: $(ADAPTERS_STAMP)

bench: $(STAMP) $(ADAPTERS_STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) $(ADAPTERS_VENV) $(COMPAT_VENVS) site build dist src/*.egg-info
