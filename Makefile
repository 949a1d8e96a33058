# Two commands do all the set-up on a fresh machine (Python 3.10+, Java 17):
#   make run    creates .venv, installs sparkdl, spark-submits jobs/train.py (local[2], bundled digits)
#   make test   creates .venv, installs sparkdl with test extras, runs pytest
#   make compose-test   runs docker-compose.yml for real (docker/compose-test.sh; Docker, as root where it must start
#                       the daemon or install docker.io, docker-compose, debootstrap)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export OPENBLAS_NUM_THREADS ?= 2
# the team's MNIST copy beside the checkout, for the optional tests and the benchmarks (empty where absent)
export SPARKDL_MNIST_DIR ?= $(wildcard $(abspath ..)/shared/data/mnist)

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
	$(BIN)/python bench/core.py --sparkdl-threads auto,1,2 $(BENCH_ARGS)
	PYSPARK_PYTHON=$(abspath $(BIN)/python) $(BIN)/python bench/spark_fit.py $(SPARK_BENCH_ARGS)
	PYSPARK_PYTHON=$(abspath $(BIN)/python) $(BIN)/python bench/scale.py $(SCALE_BENCH_ARGS)
	PYSPARK_PYTHON=$(abspath $(BIN)/python) $(BIN)/python bench/memory.py $(MEMORY_BENCH_ARGS)
	$(BIN)/python bench/first_run.py $(FIRST_RUN_BENCH_ARGS)
	PYSPARK_PYTHON=$(abspath $(BIN)/python) $(BIN)/python bench/startup.py $(STARTUP_BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Packaging for spark-submit (see conf/README.md):
#   make dist    dist/sparkdl-<version>-py3-none-any.whl   the wheel
#                dist/sparkdl.zip                          the package alone, for --py-files
#                dist/sparkdl-env.tar.gz                   a packed virtualenv (sparkdl + numpy/pyarrow/pandas at the
#                                                          versions of $(VENV)) for --archives ...#environment, with
#                                                          PYSPARK_PYTHON=$(YARN_PYSPARK_PYTHON) in the containers
#   make test-cluster   make dist, then the standalone-cluster test (its executors on the packed environment) and
#                       the dist checks, their log on the terminal
DIST      ?= dist
DIST_ENV  ?= build/sparkdl-env
YARN_PYSPARK_PYTHON := ./environment/bin/python
# where Python lives on the YARN nodes, if not where it lives here (venv-pack links bin/python to it)
PACK_PYTHON_PREFIX ?=
.PHONY: dist test-cluster compose-test

dist: $(VENV)/.installed
	rm -rf $(DIST) $(DIST_ENV) build/wheel
	$(BIN)/python -m pip wheel -q --no-deps -w $(DIST) .
	$(BIN)/python -m zipfile -e $(DIST)/sparkdl-*.whl build/wheel
	cd build/wheel && $(abspath $(BIN))/python -m zipfile -c $(abspath $(DIST))/sparkdl.zip sparkdl
	$(BIN)/python -m venv $(DIST_ENV)
	$(BIN)/python -m pip freeze --exclude-editable > build/constraints.txt
	$(DIST_ENV)/bin/python -m pip install -q -c build/constraints.txt $(DIST)/sparkdl-*.whl --no-deps
	$(DIST_ENV)/bin/python -m pip install -q -c build/constraints.txt --no-warn-conflicts numpy pyarrow pandas
	cp conf/gpu-discovery.sh $(DIST_ENV)/bin/
	$(BIN)/python -m pip install -q venv-pack
	$(BIN)/venv-pack -q -p $(DIST_ENV) -o $(DIST)/sparkdl-env.tar.gz -f $(if $(PACK_PYTHON_PREFIX),--python-prefix $(PACK_PYTHON_PREFIX))
	@echo "built $(DIST)/: $$(cd $(DIST) && ls | tr '\n' ' ')"
	@echo "YARN: --archives $(DIST)/sparkdl-env.tar.gz#environment --conf spark.pyspark.python=$(YARN_PYSPARK_PYTHON)"

test-cluster: $(VENV)/.installed-test dist
	SPARKDL_DIST=$(abspath $(DIST)) $(BIN)/python -m pytest -v -s $(PYTEST_ARGS) tests/test_cluster.py \
		tests/test_deploy.py::test_dist_holds_the_wheel_the_py_files_zip_and_the_packed_environment

# The docker-compose cluster for real: the project image on the official Spark image (or, where Docker Hub is out of
# reach, a stand-in built from Debian), a master and two workers, train/evaluate/predict through the submit service,
# both workers checked for training tasks, everything torn down (docker/compose-test.sh says how).
compose-test:
	bash docker/compose-test.sh
