"""A real Spark standalone cluster for the tests: a master and worker daemons started with pyspark's own
sbin/spark-daemon.sh (on 127.0.0.1, or a worker on each simulated host of simhosts.py), and spark-submit.
Every daemon is stopped by its pid in ``stop``, also when a test fails."""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = 2
QUICK_JVM = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1"   # small JVMs that start fast on a 2-core machine


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


_CONFIG = []   # the pytest config (conftest.py sets it), for log()


def log(message):
    """A line on the terminal even while pytest captures output: CI's log shows what the cluster did."""
    capture = _CONFIG[0].pluginmanager.getplugin("capturemanager") if _CONFIG else None
    if capture is None:
        print(f"[cluster] {message}", file=sys.stderr, flush=True)
        return
    with capture.global_and_fixture_disabled():
        print(f"\n[cluster] {message}", file=sys.stderr, flush=True)


class Cluster:
    """A standalone master on ``host`` and one worker daemon per entry of ``workers``: (address, command prefix),
    by default two workers on 127.0.0.1 (a prefix puts a worker on a simulated host, see simhosts.py)."""

    def __init__(self, root, home, host="127.0.0.1", workers=None, cores=1, memory="1g", info_loggers=()):
        self.root, self.home, self.host = root, home, host
        self.workers = workers or [("127.0.0.1", [])] * WORKERS
        self.cores, self.memory = cores, memory
        self.port, self.ui_port = free_port(), free_port()
        self.url = f"spark://{host}:{self.port}"
        self.work_dirs = [os.path.join(root, f"work-{i + 1}") for i in range(len(self.workers))]
        self.pids = []
        conf_dir = os.path.join(root, "conf")
        os.makedirs(conf_dir)
        shutil.copy(os.path.join(REPO, "conf", "log4j2.properties"), conf_dir)
        with open(os.path.join(conf_dir, "log4j2.properties"), "a") as f:   # e.g. the driver's task sizes
            f.writelines(f"logger.test{i}.name = {name}\nlogger.test{i}.level = info\n"
                         for i, name in enumerate(info_loggers))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_GATEWAY", "SPARK_"))}
        env.update(SPARK_HOME=home, SPARK_CONF_DIR=conf_dir, SPARK_LOG_DIR=os.path.join(root, "logs"),
                   SPARK_PID_DIR=os.path.join(root, "pids"), SPARK_IDENT_STRING="sparkdl-test",
                   SPARK_MASTER_HOST=host, SPARK_LOCAL_IP=host, SPARK_DAEMON_MEMORY="256m",
                   PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
                   SPARK_DAEMON_JAVA_OPTS=QUICK_JVM, OPENBLAS_NUM_THREADS="1")
        self.env = env

    def daemon(self, cls, instance, *args, prefix=(), local_ip=None):
        env = dict(self.env, SPARK_LOCAL_IP=local_ip or self.host)
        return subprocess.Popen([*prefix, os.path.join(self.home, "sbin", "spark-daemon.sh"), "start", cls,
                                 str(instance), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    def start(self):
        t0 = time.time()
        starts = [self.daemon("org.apache.spark.deploy.master.Master", 1, "--host", self.host,
                              "--port", str(self.port), "--webui-port", str(self.ui_port))]
        for i, (work, (address, prefix)) in enumerate(zip(self.work_dirs, self.workers)):
            starts.append(self.daemon("org.apache.spark.deploy.worker.Worker", i + 1, self.url, "--host", address,
                                      "--cores", str(self.cores), "--memory", self.memory, "--work-dir", work,
                                      "--webui-port", str(free_port()), prefix=prefix, local_ip=address))
        outputs = [p.communicate(timeout=120)[0] for p in starts]
        self.pids = self.daemon_pids()
        n = len(self.workers)
        if len(self.pids) != 1 + n:
            raise RuntimeError(f"expected {1 + n} daemon pid files, found {len(self.pids)}: {outputs}")
        deadline, alive = time.time() + 120, 0
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.host}:{self.ui_port}/json/", timeout=5) as r:
                    alive = json.load(r).get("aliveworkers", 0)
            except OSError:
                alive = 0
            if alive == n:
                log(f"master {self.url} with {n} workers up in {time.time() - t0:.0f}s, pids {self.pids}")
                return
            time.sleep(1)
        raise RuntimeError(f"only {alive} of {n} workers registered; logs in {self.root}/logs:\n" + self.logs())

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


def submit(cluster, script, args, events, extra=(), timeout=300, on_line=None, status=0, env=None):
    """spark-submit ``script`` to the cluster (the driver here, on the master's address); ``on_line(line)`` sees
    the driver's output as it comes. Returns the output; fails the test unless the exit status is ``status``."""
    cmd = [os.path.join(cluster.home, "bin", "spark-submit"), "--master", cluster.url,
           "--properties-file", os.path.join(REPO, "conf", "spark-defaults.standalone.conf"),
           # the test cluster's size, not the standalone file's (1-core, 1g workers)
           "--conf", "spark.executor.cores=1", "--conf", "spark.executor.memory=512m",
           "--conf", "spark.driver.memory=1g", "--conf", f"spark.driver.host={cluster.host}",
           "--conf", f"spark.driver.bindAddress={cluster.host}", "--conf", "spark.ui.enabled=false",
           "--conf", f"spark.pyspark.python={sys.executable}", "--conf", f"spark.pyspark.driver.python={sys.executable}",
           "--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir=file://{events}",
           "--conf", "spark.eventLog.compress=false", "--conf", "spark.eventLog.rolling.enabled=false",
           "--conf", f"spark.driver.extraJavaOptions={QUICK_JVM}", "--conf", f"spark.executor.extraJavaOptions={QUICK_JVM}",
           *extra, os.path.join(REPO, "jobs", script), *args]
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=dict(cluster.env, **(env or {})), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines = []
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))  # the driver JVM and its Python
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line)
        proc.wait()
    finally:
        timer.cancel()
    out = "".join(lines)
    if time.time() - t0 >= timeout:
        pytest.fail(f"{script} did not finish in {timeout}s:\n{out[-4000:]}\n{cluster.logs()}")
    log(f"{script} finished in {time.time() - t0:.0f}s with status {proc.returncode}")
    assert proc.returncode == status, f"{script} ended with {proc.returncode}:\n{out[-6000:]}\n{cluster.logs()}"
    return out
