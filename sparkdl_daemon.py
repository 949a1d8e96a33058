"""The pyspark daemon, run from the installed pyspark where that is Spark's own (``spark.python.daemon.module``).

A module of its own, outside the sparkdl package, whose import would load numpy and pyarrow before the fork.

Spark starts its Python workers with ``pyspark.zip`` first on their path. Python imports a zip's modules from
source every time: the daemon took 0.6 s to start instead of 0.13 s, and each worker it forks compiles the worker
modules again. Where the same pyspark version is installed as a package (pip's pyspark, whose compiled modules
are cached), the daemon drops the zip from its path and runs from that one; elsewhere it changes nothing. Only
the path changes before the fork: numpy and pyarrow start threads when imported, so the workers import them
after it, as pyspark's own daemon has them do.

``sparkdl.spark.local_session`` sets it where a fresh interpreter finds this module; any session may
(``--conf spark.python.daemon.module=sparkdl_daemon``) where sparkdl is installed on the executors' Python.
"""
import os
import sys


def _version(root):
    """pyspark's version under ``root`` (a directory or a zip holding pyspark/version.py), or None."""
    import re
    try:
        if root.endswith(".zip"):
            import zipfile
            with zipfile.ZipFile(root) as z:
                text = z.read("pyspark/version.py").decode()
        else:
            with open(os.path.join(root, "pyspark", "version.py")) as f:
                text = f.read()
    except (OSError, KeyError):
        return None
    found = re.search(r"""__version__[^=]*=\s*["']([^"']+)["']""", text)
    return found.group(1) if found else None


def prefer_installed(path):
    """``path`` without pyspark.zip where a later entry holds the same pyspark version, uncompressed."""
    zips = [p for p in path if os.path.basename(p) == "pyspark.zip"]
    if not zips:
        return path
    rest = [p for p in path if p not in zips]
    installed = next((p for p in rest if p and os.path.isfile(os.path.join(p, "pyspark", "version.py"))), None)
    if installed is None or _version(installed) is None or _version(installed) != _version(zips[0]):
        return path
    return rest


def quiet(worker):
    """pyspark's forked worker, silent where the JVM has closed its socket (``spark.stop()``: over Unix domain
    sockets a worker's last flush then fails, and pyspark's daemon printed a BrokenPipeError's traceback)."""
    def run(sock, authenticated):
        try:
            return worker(sock, authenticated)
        except (BrokenPipeError, ConnectionResetError):
            return 1   # the worker ends, as pyspark's own code does after a failed task
    return run


if __name__ == "__main__":
    sys.path[:] = prefer_installed(sys.path)
    import pyspark.daemon
    pyspark.daemon.worker = quiet(pyspark.daemon.worker)
    pyspark.daemon.manager()
