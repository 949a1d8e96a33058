"""A local SparkSession with settings that suit sparkdl (executors on this Python, Arrow on, quick start)."""
import os
import sys


def local_session(master="local[2]", app_name="sparkdl", conf=None):
    """Get or create a SparkSession; on a fresh process also point Python workers at this interpreter."""
    from pyspark.sql import SparkSession
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    settings = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "4",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
        "spark.python.worker.reuse": "true",
        "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
    }
    if master.startswith("local") and _daemon_importable():   # workers from the installed pyspark: sparkdl_daemon
        settings["spark.python.daemon.module"] = "sparkdl_daemon"
        # Spark 4.1+: the JVM talks to its Python workers over Unix domain sockets. Over loopback TCP the JVM's
        # small writes wait on the workers' delayed acknowledgements: 40 ms more in every Python stage. (With
        # them, a worker's last flush fails at spark.stop(): sparkdl_daemon keeps that quiet.)
        settings["spark.python.unix.domain.socket.enabled"] = "true"
    settings.update(conf or {})
    builder = SparkSession.builder.master(master).appName(app_name)
    for k, v in settings.items():
        builder = builder.config(k, v)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def _daemon_importable():
    """Whether the Python workers (this interpreter, in this directory and environment) find sparkdl_daemon."""
    import subprocess
    python = os.environ.get("PYSPARK_PYTHON", sys.executable)
    try:
        return subprocess.run([python, "-c", "import importlib.util as u, sys; "
                                              "sys.exit(u.find_spec('sparkdl_daemon') is None)"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


_WARMED = set()   # applications whose Python workers a fit has started


def warm_workers(sc, n):
    """On a local master, the first fit of an application starts ``n`` Python workers in the background (a thread
    running one small job; join it), so that the daemon's start and the workers' imports overlap the driver's
    preparation of the fit instead of delaying its first job (0.6 s). None where there is nothing to start."""
    import threading
    if not sc.master.startswith("local") or sc.applicationId in _WARMED:
        return None
    _WARMED.add(sc.applicationId)
    n = n or sc.defaultParallelism

    def run():
        try:
            sc.parallelize(range(n), n).mapPartitions(_imports).collect()
        except Exception:   # nothing depends on it: the fit's own jobs start the workers otherwise
            pass
    thread = threading.Thread(target=run, name="sparkdl-warm-workers", daemon=True)
    thread.start()
    return thread


def _imports(_):
    """What a fit's first tasks import (the checks, the shards)."""
    import sparkdl.spark.prepared  # noqa: F401
    import sparkdl.spark.shards  # noqa: F401
    return []


def conf_value(sc, key, default=None):
    """One setting of the SparkContext's configuration: a single call to the JVM (``sc.getConf()`` copies every
    setting across, 10-20 ms a call)."""
    conf = getattr(sc, "_conf", None)
    return (conf if conf is not None else sc.getConf()).get(key, default)
