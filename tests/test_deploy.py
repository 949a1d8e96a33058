"""conf/ and the deployment files, checked as the tools that use them read them: the spark-defaults files as Spark
configuration (every key one Spark knows; sizes, resources and GPU requests parsed by Spark's own code), the
log4j2 file by Log4j, the GPU discovery script's output by Spark's parser, the compose file by
`docker-compose config`. YARN itself cannot run here; these are the settings that decide whether a YARN job
starts and stays alive.
"""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF = os.path.join(REPO, "conf")
TARGETS = ("local", "standalone", "yarn-client", "yarn-cluster")
ENV_PYTHON = "./environment/bin/python"
BLAS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# keys Spark reads by prefix rather than as registered config entries
PREFIXES = ("spark.executorEnv.", "spark.yarn.appMasterEnv.", "spark.executor.resource.", "spark.driver.resource.",
            "spark.task.resource.", "spark.worker.resource.")
CONFIG_CLASSES = ("org.apache.spark.internal.config.package$", "org.apache.spark.internal.config.Python$",
                  "org.apache.spark.deploy.yarn.config.package$", "org.apache.spark.sql.internal.SQLConf$")
DIST = os.environ.get("SPARKDL_DIST")


def conf_path(target):
    return os.path.join(CONF, f"spark-defaults.{target}.conf")


@pytest.fixture(scope="module")
def jvm(spark):
    """The test session's JVM with every Spark config entry registered (core, Python, YARN, SQL)."""
    jvm = spark.sparkContext._jvm
    loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
    for cls in CONFIG_CLASSES:
        jvm.java.lang.Class.forName(cls, True, loader)
    return jvm


def load(jvm, tmp_path, *files):
    """A SparkConf from properties files, read as spark-submit reads --properties-file (files concatenated, later
    keys win), plus the keys as a dict."""
    path = files[0]
    if len(files) > 1:
        path = str(tmp_path / "merged.conf")
        with open(path, "w") as out:
            for f in files:
                out.write(open(f).read() + "\n")
    props = jvm.org.apache.spark.util.Utils.getPropertiesFromFile(path)
    conf, keys, it = jvm.org.apache.spark.SparkConf(False), {}, props.iterator()
    while it.hasNext():
        kv = it.next()
        conf.set(kv._1(), kv._2())
        keys[kv._1()] = kv._2()
    return conf, keys


@pytest.mark.spark
@pytest.mark.parametrize("target", TARGETS)
def test_spark_defaults_hold_only_settings_spark_knows(jvm, tmp_path, target):
    conf, keys = load(jvm, tmp_path, conf_path(target))
    find = jvm.org.apache.spark.internal.config.ConfigEntry.findEntry
    unknown = [k for k in keys if k != "spark.master" and not k.startswith(PREFIXES) and find(k) is None]
    assert not unknown, f"{target}: not Spark settings (typos?): {unknown}"
    assert all(v.strip() for v in keys.values())
    for k in keys:
        if k.endswith((".memory", ".memoryOverhead")):
            assert conf.getSizeAsMb(k) >= 512, (k, keys[k])
    assert conf.get("spark.python.worker.reuse") == "true"
    assert conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert conf.get("spark.sql.execution.arrow.pyspark.fallback.enabled") == "false"


@pytest.mark.spark
@pytest.mark.parametrize("target", TARGETS)
def test_blas_threads_equal_task_cpus(jvm, tmp_path, target):
    conf, _ = load(jvm, tmp_path, conf_path(target))
    task_cpus = conf.getInt("spark.task.cpus", 1)
    for var in BLAS:
        assert conf.getInt(f"spark.executorEnv.{var}", -1) == task_cpus, (target, var)
    if conf.contains("spark.executor.cores"):
        assert conf.getInt("spark.executor.cores", 0) % task_cpus == 0


@pytest.mark.spark
@pytest.mark.parametrize("mode", ["client", "cluster"])
def test_yarn_python_environment(jvm, tmp_path, mode):
    conf, _ = load(jvm, tmp_path, conf_path(f"yarn-{mode}"))
    assert conf.get("spark.master") == "yarn" and conf.get("spark.submit.deployMode") == mode
    archive, alias = conf.get("spark.archives").split("#")
    assert archive == "dist/sparkdl-env.tar.gz" and ENV_PYTHON.startswith(f"./{alias}/")
    assert "sparkdl-env.tar.gz" in open(os.path.join(REPO, "Makefile")).read()   # what `make dist` builds
    assert conf.get("spark.pyspark.python") == ENV_PYTHON                    # executors: the unpacked archive
    if mode == "client":   # the driver runs on the submitting host, with its own Python
        assert conf.get("spark.pyspark.driver.python") == ".venv/bin/python"
    else:                  # the driver runs in the application master's container, on the archive too
        assert conf.get("spark.pyspark.driver.python") == ENV_PYTHON
        assert conf.get("spark.yarn.appMasterEnv.PYSPARK_PYTHON") == ENV_PYTHON
        shipped = conf.get("spark.submit.pyFiles").split(",") + conf.get("spark.files").split(",")
        assert "jobs/common.py" in shipped
        for path in shipped:
            assert os.path.exists(os.path.join(REPO, path)), path
        assert conf.getInt("spark.yarn.maxAppAttempts", 0) == 1


@pytest.mark.spark
@pytest.mark.parametrize("mode", ["client", "cluster"])
def test_yarn_memory_overhead_and_resources(jvm, tmp_path, mode):
    conf, _ = load(jvm, tmp_path, conf_path(f"yarn-{mode}"))
    cores, task_cpus = conf.getInt("spark.executor.cores", 0), conf.getInt("spark.task.cpus", 1)
    python_workers = cores // task_cpus
    assert python_workers >= 1 and conf.getInt("spark.executor.instances", 0) >= 1
    memory, overhead = conf.getSizeAsMb("spark.executor.memory"), conf.getSizeAsMb("spark.executor.memoryOverhead")
    # YARN kills a container past memory + overhead; the Python workers are all in the overhead
    assert overhead >= 1024 * python_workers and overhead >= 0.1 * memory, (overhead, python_workers)
    if mode == "cluster":
        assert conf.getSizeAsMb("spark.driver.memoryOverhead") >= 1024
    assert conf.get("spark.dynamicAllocation.enabled") == "false"
    assert float(conf.get("spark.scheduler.minRegisteredResourcesRatio")) == 1.0


@pytest.mark.spark
@pytest.mark.parametrize("target", ["yarn-client", "yarn-cluster", "standalone"])
def test_gpu_overlay_gives_each_task_slot_a_gpu_share(jvm, tmp_path, target):
    conf, keys = load(jvm, tmp_path, conf_path(target), os.path.join(CONF, "gpu.conf"))
    utils = jvm.org.apache.spark.resource.ResourceUtils
    requests = utils.parseAllResourceRequests(conf, "spark.executor")
    (gpu,) = [requests.apply(i) for i in range(requests.size())]
    assert gpu.id().resourceName() == "gpu" and gpu.amount() == 1
    assert gpu.discoveryScript().get() == "./environment/bin/gpu-discovery.sh"
    requirements = utils.parseResourceRequirements(conf, "spark.task")
    (share,) = [requirements.apply(i) for i in range(requirements.size())]
    # tasks per executor by GPU (amount * parts) equals tasks per executor by CPU: no idle GPU, no starved task
    slots = conf.getInt("spark.executor.cores", 1) // conf.getInt("spark.task.cpus", 1)
    assert share.resourceName() == "gpu" and gpu.amount() * share.numParts() // share.amount() == slots
    makefile = open(os.path.join(REPO, "Makefile")).read()
    assert "cp conf/gpu-discovery.sh $(DIST_ENV)/bin/" in makefile   # the script travels in the archive


@pytest.mark.spark
@pytest.mark.parametrize("env, nvidia_smi, addresses", [
    ({}, None, []),
    ({}, "0\n1\n", ["0", "1"]),
    ({"CUDA_VISIBLE_DEVICES": "2,3"}, "0\n1\n2\n3\n", ["0", "1"]),      # CUDA renumbers the visible GPUs
    ({"CUDA_VISIBLE_DEVICES": "GPU-8c7a"}, None, ["0"]),
])
def test_gpu_discovery_script_prints_what_spark_parses(jvm, tmp_path, env, nvidia_smi, addresses):
    bin_dir = tmp_path / "bin"   # the only PATH: no real nvidia-smi of this host gets in
    bin_dir.mkdir()
    for tool in ("bash", "cat"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    if nvidia_smi is not None:
        fake = bin_dir / "nvidia-smi"
        fake.write_text("#!/bin/sh\ncat <<'END'\n" + nvidia_smi + "END\n")
        fake.chmod(0o755)
    run_env = {"PATH": str(bin_dir), **env}
    out = subprocess.run([os.path.join(CONF, "gpu-discovery.sh")], env=run_env, capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == {"name": "gpu", "addresses": addresses}
    info = jvm.org.apache.spark.resource.ResourceInformation.parseJson(out.strip())
    assert info.name() == "gpu" and list(info.addresses()) == addresses


@pytest.mark.spark
def test_log4j2_properties_load_in_log4j(jvm):
    source = jvm.org.apache.logging.log4j.core.config.ConfigurationSource(
        jvm.java.io.FileInputStream(os.path.join(CONF, "log4j2.properties")))
    config = jvm.org.apache.logging.log4j.core.config.properties.PropertiesConfigurationFactory().getConfiguration(
        None, source)
    config.initialize()
    assert config.getRootLogger().getLevel().toString() == "WARN"
    assert config.getAppenders().containsKey("console")
    loggers = config.getLoggers()
    levels = {str(k): loggers.get(k).getLevel().toString() for k in loggers.keySet()}
    assert levels["org.apache.spark.deploy"] == "INFO" and levels["org.apache.parquet"] == "ERROR"


def test_spark_env_template_sets_the_python_and_blas_threads(tmp_path):
    template = os.path.join(CONF, "spark-env.sh.template")
    subprocess.run(["bash", "-n", template], check=True)
    out = subprocess.run(["bash", "-c", f". {template}; echo $PYSPARK_PYTHON $PYSPARK_DRIVER_PYTHON "
                          "$OPENBLAS_NUM_THREADS"], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [f"{tmp_path}/.venv/bin/python"] * 2 + ["1"]


def test_conf_readme_has_a_submit_line_for_every_target():
    text = open(os.path.join(CONF, "README.md")).read()
    for target in TARGETS:
        assert f"--properties-file conf/spark-defaults.{target}.conf" in text, target
    for name in os.listdir(CONF):
        if name != "README.md" and not os.path.isdir(os.path.join(CONF, name)):
            assert f"`{name}`" in text, f"conf/README.md does not explain {name}"


# -- docker-compose ------------------------------------------------------------------------------------------
COMPOSE_VENV = os.path.join(REPO, "build", "venv-compose")


@pytest.fixture(scope="module")
def compose():
    """The docker-compose 1.29.2 client (it validates files offline) in its own venv under build/; PyYAML 5.4.1,
    which it pins, builds only with Cython < 3. Skips when PyPI cannot be reached."""
    exe = os.path.join(COMPOSE_VENV, "bin", "docker-compose")
    ready = os.path.join(COMPOSE_VENV, ".ready")
    if not os.path.exists(ready):
        shutil.rmtree(COMPOSE_VENV, ignore_errors=True)
        pip = [os.path.join(COMPOSE_VENV, "bin", "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        steps = [[sys.executable, "-m", "venv", COMPOSE_VENV], pip + ["cython<3", "wheel"],
                 pip + ["--no-build-isolation", "pyyaml==5.4.1"], pip + ["docker-compose==1.29.2"]]
        for step in steps:
            r = subprocess.run(step, capture_output=True, text=True, timeout=600)
            if r.returncode != 0:
                pytest.skip(f"could not install docker-compose ({' '.join(step[-2:])}): {r.stderr.strip()[-300:]}")
        open(ready, "w").close()
    return exe


def compose_config(compose):
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_IMAGE", "SPARKDL_TAG")}
    r = subprocess.run([compose, "-f", os.path.join(REPO, "docker-compose.yml"), "config"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    to_json = "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"
    return json.loads(subprocess.run([os.path.join(COMPOSE_VENV, "bin", "python"), "-c", to_json], input=r.stdout,
                                     capture_output=True, text=True, check=True).stdout)


def test_docker_compose_file_is_valid_and_runs_one_image_everywhere(compose):
    config = compose_config(compose)
    services = config["services"]
    assert set(services) == {"spark-master", "spark-worker-1", "spark-worker-2", "submit"}
    images = {s["image"] for s in services.values()}
    builds = {json.dumps(s["build"], sort_keys=True) for s in services.values()}
    assert len(images) == 1 and len(builds) == 1          # one image: the same Python on driver and workers
    build = services["submit"]["build"]
    assert build["dockerfile"] == "docker/Dockerfile" and "python3" in build["args"]["SPARK_IMAGE"]
    assert services["spark-master"]["command"][1] == "org.apache.spark.deploy.master.Master"
    for name in ("spark-worker-1", "spark-worker-2"):
        command = services[name]["command"]
        assert command[1:3] == ["org.apache.spark.deploy.worker.Worker", "spark://spark-master:7077"]
        assert "spark-master" in services[name]["depends_on"]
    assert set(services["submit"]["depends_on"]) == {"spark-master", "spark-worker-1", "spark-worker-2"}
    for name in ("spark-worker-1", "spark-worker-2", "submit"):   # jobs-mode shards: one filesystem for all
        assert any(v.startswith("shared:/shared") for v in services[name]["volumes"]), name
    for s in services.values():
        assert s["environment"]["PYSPARK_PYTHON"] == s["environment"]["PYSPARK_DRIVER_PYTHON"] == "python3"


def test_dockerfile_installs_sparkdl_on_the_official_spark_image():
    text = open(os.path.join(REPO, "docker", "Dockerfile")).read()
    assert "ARG SPARK_IMAGE=spark:" in text and "FROM ${SPARK_IMAGE}" in text
    assert "pip install --no-cache-dir --no-deps /tmp/sparkdl" in text   # the image's own Spark, not a pyspark wheel
    assert "PYSPARK_PYTHON=python3" in text and "PYSPARK_DRIVER_PYTHON=python3" in text
    for copied in ("jobs", "conf", "docker/submit.sh", "sparkdl", "setup.cfg", "pyproject.toml"):
        assert os.path.exists(os.path.join(REPO, copied)), copied
    subprocess.run(["bash", "-n", os.path.join(REPO, "docker", "submit.sh")], check=True)
    ignored = open(os.path.join(REPO, ".dockerignore")).read().split()
    assert ".venv" in ignored and "build" in ignored


# -- make dist (run by `make test-cluster`, which names the folder) -------------------------------------------
@pytest.mark.skipif(not DIST, reason="needs `make dist` (run by `make test-cluster`)")
def test_dist_holds_the_wheel_the_py_files_zip_and_the_packed_environment(tmp_path):
    assert len(glob.glob(os.path.join(DIST, "sparkdl-*-py3-none-any.whl"))) == 1
    zip_path = os.path.join(DIST, "sparkdl.zip")
    probe = (f"import sys; sys.path.insert(0, {zip_path!r}); import sparkdl.datasets as d; "
             "print(d.__file__, d.load_digits()[0].shape)")
    out = subprocess.run([sys.executable, "-I", "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith(zip_path) and out.strip().endswith("(1797, 64)")   # resources load from the zip too
    env = tmp_path / "environment"
    env.mkdir()
    subprocess.run(["tar", "-xzf", os.path.join(DIST, "sparkdl-env.tar.gz"), "-C", str(env)], check=True)
    probe = "import sparkdl, numpy, pyarrow, pandas, sys; print(sparkdl.__file__); print(sys.prefix)"
    out = subprocess.run([str(env / "bin" / "python"), "-I", "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[0].startswith(str(env / "lib")) and out[1] == str(env)
    assert os.access(env / "bin" / "gpu-discovery.sh", os.X_OK)
