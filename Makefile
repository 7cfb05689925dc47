# The two commands a new user runs: `make demo` and `make test`. `make interop`: codelm through vLLM,
# llama.cpp and transformers (engines built once into ~/.cache/codelm/engines; docs/serving.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test interop install clean bench

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	# torch first and pinned: the CPU build of 2.13.0 is on this machine's disk.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/codelm demo --out demo-out

test: $(STAMP)
	$(PY) -m pytest -q

interop: $(STAMP)
	$(PY) -m pytest -q -m interop -ra tests/interop

clean:
	rm -rf $(VENV) demo-out
