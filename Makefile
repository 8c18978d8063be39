# Two commands: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv if it is missing and install the project from its own files.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	# torch pinned to the CPU build on this kind of machine; a GPU user installs the CUDA build first.
	$(PY) -m pip install -q -c constraints.txt "torch==2.13.0" -e ".[dev,sim]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/latentda demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
