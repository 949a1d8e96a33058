# Two commands do all the set-up on a fresh machine (Python 3.10+, Java 17):
#   make run    creates .venv, installs sparkdl, spark-submits jobs/train.py (local[2], bundled digits)
#   make test   creates .venv, installs sparkdl with test extras, runs pytest
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export OPENBLAS_NUM_THREADS ?= 2

.PHONY: run test bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

SUBMIT := PYSPARK_PYTHON=$(abspath $(BIN)/python) PYSPARK_DRIVER_PYTHON=$(abspath $(BIN)/python) \
	$(BIN)/spark-submit --master 'local[2]' --driver-java-options '-XX:TieredStopAtLevel=1 -XX:+UseSerialGC'

run: $(VENV)/.installed
	$(SUBMIT) jobs/train.py $(ARGS)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/core.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
