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
