"""A real Spark standalone cluster on 127.0.0.1: one master and two workers started with pyspark's own
sbin/spark-daemon.sh, then `spark-submit --master spark://127.0.0.1:PORT` of jobs/train.py and jobs/predict.py
with conf/spark-defaults.standalone.conf and conf/log4j2.properties. The event log tells which executor ran each
task, the workers' work directories which worker each executor lives in: both workers must have run training
tasks. Every daemon is stopped by its pid in the fixture's teardown, also when the test fails.
"""
import glob
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

pytestmark = [pytest.mark.spark, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = 2
QUICK_JVM = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1"   # small JVMs that start fast on a 2-core machine
# `make test-cluster` builds dist/ first and names it here: predict.py then runs its executors on the packed
# environment (--archives ...#environment, spark.pyspark.python=./environment/bin/python), as on YARN.
DIST = os.environ.get("SPARKDL_DIST")


def spark_home():
    pyspark = pytest.importorskip("pyspark")
    home = os.path.dirname(pyspark.__file__)
    if not os.path.exists(os.path.join(home, "sbin", "spark-daemon.sh")):
        pytest.skip("this pyspark has no sbin/spark-daemon.sh")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("the cluster test needs Java")
    return home


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_CONFIG = []


@pytest.fixture(scope="module", autouse=True)
def _terminal(pytestconfig):
    _CONFIG.append(pytestconfig)
    yield
    _CONFIG.clear()


def log(message):
    """A line on the terminal even while pytest captures output: CI's log shows what the cluster did."""
    capture = _CONFIG[0].pluginmanager.getplugin("capturemanager") if _CONFIG else None
    if capture is None:
        print(f"[cluster] {message}", file=sys.stderr, flush=True)
        return
    with capture.global_and_fixture_disabled():
        print(f"\n[cluster] {message}", file=sys.stderr, flush=True)


class Cluster:
    def __init__(self, root, home):
        self.root, self.home = root, home
        self.port, self.ui_port = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.work_dirs = [os.path.join(root, f"work-{i + 1}") for i in range(WORKERS)]
        self.pids = []
        conf_dir = os.path.join(root, "conf")
        os.makedirs(conf_dir)
        shutil.copy(os.path.join(REPO, "conf", "log4j2.properties"), conf_dir)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_GATEWAY", "SPARK_"))}
        env.update(SPARK_HOME=home, SPARK_CONF_DIR=conf_dir, SPARK_LOG_DIR=os.path.join(root, "logs"),
                   SPARK_PID_DIR=os.path.join(root, "pids"), SPARK_IDENT_STRING="sparkdl-test",
                   SPARK_MASTER_HOST="127.0.0.1", SPARK_LOCAL_IP="127.0.0.1", SPARK_DAEMON_MEMORY="256m",
                   PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
                   SPARK_DAEMON_JAVA_OPTS=QUICK_JVM, OPENBLAS_NUM_THREADS="1")
        self.env = env

    def daemon(self, cls, instance, *args):
        return subprocess.Popen([os.path.join(self.home, "sbin", "spark-daemon.sh"), "start", cls, str(instance),
                                 *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def start(self):
        t0 = time.time()
        starts = [self.daemon("org.apache.spark.deploy.master.Master", 1, "--host", "127.0.0.1",
                              "--port", str(self.port), "--webui-port", str(self.ui_port))]
        for i, work in enumerate(self.work_dirs):
            starts.append(self.daemon("org.apache.spark.deploy.worker.Worker", i + 1, self.url, "--host", "127.0.0.1",
                                      "--cores", "1", "--memory", "1g", "--work-dir", work,
                                      "--webui-port", str(free_port())))
        outputs = [p.communicate(timeout=120)[0] for p in starts]
        self.pids = self.daemon_pids()
        if len(self.pids) != 1 + WORKERS:
            raise RuntimeError(f"expected {1 + WORKERS} daemon pid files, found {len(self.pids)}: {outputs}")
        deadline, alive = time.time() + 120, 0
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as r:
                    alive = json.load(r).get("aliveworkers", 0)
            except OSError:
                alive = 0
            if alive == WORKERS:
                log(f"master {self.url} with {WORKERS} workers up in {time.time() - t0:.0f}s, pids {self.pids}")
                return
            time.sleep(1)
        raise RuntimeError(f"only {alive} of {WORKERS} workers registered; logs in {self.root}/logs:\n" + self.logs())

    def daemon_pids(self):
        pids = []
        for pid_file in sorted(glob.glob(os.path.join(self.root, "pids", "*.pid"))):
            with open(pid_file) as f:
                pids.append(int(f.read().strip()))
        return pids

    def stop(self):
        """SIGTERM every daemon by pid (a worker kills its executors on the way out), SIGKILL what is left, and
        then any process still working in this cluster's directories (an orphaned executor)."""
        self.pids = sorted(set(self.pids) | set(self.daemon_pids()))   # also when start() failed half-way
        self.pids = [p for p in self.pids if _is_spark_daemon(p)]   # a stale pid file names no one else
        for pid in self.pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.time() + 20
        while time.time() < deadline and any(_alive(p) for p in self.pids):
            time.sleep(0.2)
        for pid in self.pids:
            _signal(pid, signal.SIGKILL)
        for pid in _pids_under(self.root):
            _signal(pid, signal.SIGKILL)
        left = [p for p in self.pids if _alive(p)]
        log(f"stopped daemons {self.pids}" + (f"; still alive: {left}" if left else ""))

    def logs(self):
        text = []
        for path in sorted(glob.glob(os.path.join(self.root, "logs", "*.out"))):
            with open(path, errors="replace") as f:
                text.append(f"--- {os.path.basename(path)}\n" + "".join(f.readlines()[-30:]))
        return "\n".join(text)


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _is_spark_daemon(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"org.apache.spark.deploy." in f.read()
    except OSError:
        return False


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _pids_under(root):
    """Processes whose working directory is inside ``root`` (executors run in the workers' work dirs)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd").startswith(root):
                    found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = spark_home()
    c = Cluster(str(tmp_path_factory.mktemp("standalone")), home)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def submit(cluster, script, args, events, extra=(), timeout=300):
    cmd = [os.path.join(cluster.home, "bin", "spark-submit"), "--master", cluster.url,
           "--properties-file", os.path.join(REPO, "conf", "spark-defaults.standalone.conf"),
           # the test cluster's size, not the standalone file's (1-core, 1g workers)
           "--conf", "spark.executor.cores=1", "--conf", "spark.executor.memory=512m",
           "--conf", "spark.driver.memory=1g", "--conf", "spark.driver.host=127.0.0.1",
           "--conf", "spark.driver.bindAddress=127.0.0.1", "--conf", "spark.ui.enabled=false",
           "--conf", f"spark.pyspark.python={sys.executable}", "--conf", f"spark.pyspark.driver.python={sys.executable}",
           "--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir=file://{events}",
           "--conf", "spark.eventLog.compress=false", "--conf", "spark.eventLog.rolling.enabled=false",
           "--conf", f"spark.driver.extraJavaOptions={QUICK_JVM}", "--conf", f"spark.executor.extraJavaOptions={QUICK_JVM}",
           *extra, os.path.join(REPO, "jobs", script), *args]
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=cluster.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # the driver JVM and its Python, all in the session started here
        out, _ = proc.communicate()
        pytest.fail(f"{script} did not finish in {timeout}s:\n{out[-4000:]}\n{cluster.logs()}")
    log(f"{script} finished in {time.time() - t0:.0f}s with status {proc.returncode}")
    assert proc.returncode == 0, f"{script} failed:\n{out[-6000:]}\n{cluster.logs()}"
    return out


def tasks_per_worker(cluster, events, description_prefix):
    """{worker index: successful tasks} for the jobs whose description starts with ``description_prefix``,
    from the event log of the one application in ``events``."""
    # one plain JSON-lines file (app-ID), or a directory of rolled files (eventlog_v2_app-ID/events_N_app-ID)
    paths = glob.glob(os.path.join(events, "app-*")) + sorted(
        glob.glob(os.path.join(events, "eventlog_v2_*", "events_*")),
        key=lambda p: int(os.path.basename(p).split("_")[1]))
    assert paths, f"no event log in {events}: {os.listdir(events)}"
    records = [json.loads(line) for path in paths for line in open(path)]
    app_id = next(r["App ID"] for r in records if r["Event"] == "SparkListenerApplicationStart")
    worker_of = {}   # executor id -> worker index, from the executor directories each worker made
    for i, work in enumerate(cluster.work_dirs):
        for d in glob.glob(os.path.join(work, app_id, "*")):
            worker_of[os.path.basename(d)] = i
    stages = set()
    for r in records:
        if r["Event"] == "SparkListenerJobStart" and \
                (r.get("Properties") or {}).get("spark.job.description", "").startswith(description_prefix):
            stages.update(r["Stage IDs"])
    counts = {i: 0 for i in range(WORKERS)}
    for r in records:
        if r["Event"] == "SparkListenerTaskEnd" and r["Stage ID"] in stages \
                and r["Task End Reason"]["Reason"] == "Success":
            counts[worker_of[r["Task Info"]["Executor ID"]]] += 1
    return app_id, worker_of, counts


def test_barrier_fit_on_a_two_worker_standalone_cluster(cluster, tmp_path):
    """Two executors in two worker daemons on one host: their Python workers average through the driver's
    /dev/shm block (sparkdl.dist.peers) across processes that Spark started, not the test."""
    out = tmp_path / "out"
    events = tmp_path / "events"
    events.mkdir()
    submit(cluster, "train.py", ["--data", "digits", "--epochs", "3", "--num-workers", "2", "--mode", "barrier",
                                 "--batch-size-per-worker", "32", "--averaging-frequency", "4",
                                 "--output-dir", str(out)], events)
    metrics = json.loads((out / "metrics.json").read_text())
    log(f"barrier fit on the cluster: test accuracy {metrics['test']['accuracy']:.4f}, shared memory "
        f"{metrics['shared_memory']}, overhead {metrics['stats']['overhead_ms_mean']:.2f} ms per round")
    assert metrics["master"] == cluster.url and metrics["stats"]["workers"] == 2
    assert metrics["shared_memory"] is (os.path.isdir("/dev/shm") and platform.machine().lower() in ("x86_64", "amd64"))
    assert metrics["test"]["accuracy"] > 0.9, metrics["test"]


def test_train_and_predict_on_a_two_worker_standalone_cluster(cluster, tmp_path):
    out, train_events, predict_events = tmp_path / "out", tmp_path / "events-train", tmp_path / "events-predict"
    train_events.mkdir()
    predict_events.mkdir()
    submit(cluster, "train.py", ["--data", "digits", "--epochs", "2", "--num-workers", "2",
                                 "--batch-size-per-worker", "32", "--averaging-frequency", "8",
                                 "--export-dir", str(tmp_path / "shards"), "--output-dir", str(out)], train_events)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["master"] == cluster.url          # spark-submit's master, not a local one
    assert metrics["stats"]["workers"] == 2
    assert metrics["test"]["accuracy"] > 0.8, metrics["test"]
    assert metrics["history"]["loss"][-1] < metrics["history"]["loss"][0]

    app_id, executors, counts = tasks_per_worker(cluster, str(train_events), "sparkdl: epoch")
    log(f"{app_id}: training-round tasks per worker: " + ", ".join(
        f"worker-{i + 1} (executor {', '.join(e for e, w in sorted(executors.items()) if w == i)}): {n}"
        for i, n in counts.items()))
    assert sorted(executors.values()) == list(range(WORKERS)), executors   # one executor in each worker
    assert all(n > 0 for n in counts.values()), counts
    assert sum(counts.values()) >= 2 * metrics["stats"]["rounds"]      # each round: one task per training worker

    packed = ["--archives", os.path.join(DIST, "sparkdl-env.tar.gz") + "#environment",
              "--conf", "spark.pyspark.python=./environment/bin/python"] if DIST else []
    submit(cluster, "predict.py", ["--model-file", str(out / "model.npz"), "--data", "digits",
                                   "--output", str(out / "predictions.parquet")], predict_events, packed)
    import pyarrow.parquet as pq
    table = pq.read_table(str(out / "predictions.parquet"))
    assert set(table.column_names) == {"label", "probability", "prediction"}
    labels, predicted = table.column("label").to_numpy(), table.column("prediction").to_numpy()
    from sparkdl.datasets import load_digits
    np.testing.assert_array_equal(np.sort(labels), np.sort(load_digits("test")[1]))
    np.testing.assert_allclose((labels == predicted).mean(), metrics["test"]["accuracy"], atol=1e-9)
    app_id, executors, predict_counts = tasks_per_worker(cluster, str(predict_events), "")
    log(f"predict tasks per worker: {predict_counts}" + (" (executors on the packed environment)" if DIST else ""))
    if DIST:   # the relative python path only resolves inside the archive each executor unpacked
        for work in cluster.work_dirs:
            for executor in glob.glob(os.path.join(work, app_id, "*")):
                assert os.path.exists(os.path.join(executor, "environment", "bin", "python")), executor

