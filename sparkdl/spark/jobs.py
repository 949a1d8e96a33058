"""What jobs mode (sparkdl.dist.jobs) needs of Spark: the export of one shard per worker, and one job per
round (a broadcast of the round's starting buffers, a task per shard, a weighted treeAggregate)."""
import contextlib
import logging
import tempfile

from .. import fs
from ..dist.averaging import Contribution, add, merge
from .session import conf_value

log = logging.getLogger("sparkdl")


@contextlib.contextmanager
def exported(launcher, run):
    """Export the DataFrame into shards, in a fresh directory under ``export_base`` removed after the fit, or
    with the prepared data it came from where that is kept (sparkdl.spark.prepared: the next fit on it reads the
    same shards); yields the shards' row counts."""
    from .shards import export, new_export_dir
    sc, entry = launcher.sc, launcher.entry
    if entry.shards is not None:
        launcher.paths = [p for p, _ in entry.shards]
        yield [rows for _, rows in entry.shards]
        return
    base, made = export_base(launcher)
    # every job of the fit in one group: a signal cancels the running one (Launcher.cancel)
    sc.setJobGroup(launcher.group, "sparkdl fit: export training shards", True)
    export_dir = None
    try:
        export_dir = new_export_dir(base)
        if not launcher.local:
            check_shared(launcher, export_dir, made)
        shards = export(entry, export_dir, run.label_dtype)
        run.mark("checked")
        launcher.paths = [p for p, _ in shards]
        if entry.kept:   # the files go with the entry when it is released
            entry.files(shards, export_dir, base if made else None)
            export_dir, made = None, False
        yield [rows for _, rows in shards]
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        if export_dir is not None:
            fs.remove_dir(export_dir)
        if made:
            fs.remove_dir(base)


def export_base(launcher):
    """(where the fit's shard directory goes, whether the fit made it): ``export_dir``, else the setting
    ``spark.sparkdl.exportDir``, else on a cluster the SparkContext's checkpoint directory or the Hadoop default
    filesystem when it is not the local one (hdfs://.../tmp), else a temporary local directory (right for local
    masters; on a cluster ``check_shared`` then says whether the executors share it)."""
    given = launcher.options.export_dir or launcher.session.conf.get("spark.sparkdl.exportDir", None)
    if given:
        return given, False
    if not launcher.local:
        sc = launcher.sc
        if sc.getCheckpointDir():
            return sc.getCheckpointDir(), False
        default_fs = sc._jsc.hadoopConfiguration().get("fs.defaultFS") or "file:///"
        if not default_fs.startswith("file:"):
            return default_fs.rstrip("/") + "/tmp", False
    return tempfile.mkdtemp(prefix="sparkdl-"), True


def check_shared(launcher, directory, made=False):
    """Fail before the export unless the executors read files the driver wrote in ``directory`` and write files
    the driver reads there: shards written on one host are read on any other. A directory the fit ``made`` in
    the driver's temporary directory (no shared one was set) fails at once where executors run on other hosts;
    any other is probed, by JVM tasks only (a Python worker's first start would double the time): one file per
    task slot, each file its own task, so that every executor is asked (about a second)."""
    from pyspark.sql import functions as F
    session, sc = launcher.session, launcher.sc
    others = _other_hosts(sc)
    if made and others:
        _not_shared(directory, others)
    tasks = max(sc.defaultParallelism, launcher.num_workers)
    sent = fs.join(directory, "probe-sent")
    fs.makedirs(sent)
    for i in range(tasks):
        with fs.open_output(fs.join(sent, f"{i:05d}.txt")) as f:
            f.write(b"sparkdl")
    sc.setJobDescription("sparkdl fit: check that the executors share the shard directory")
    shared = len(session.read.option("ignoreMissingFiles", "true").text(sent).collect()) == tasks   # one stage
    if shared:
        written = fs.join(directory, "probe-written")
        try:
            session.range(tasks, numPartitions=tasks).select(F.col("id").cast("string")).write.text(written)
        except Exception as e:
            raise OSError(f"the executors cannot write the shard directory {directory!r}: {e}") from None
        shared = sum(name.startswith("part-") for name in fs.names(written)) == tasks
    if not shared:
        _not_shared(directory, others or ["the driver's host"])


def _other_hosts(sc):
    """The hosts of the executors that run elsewhere than the driver."""
    import socket

    def address(host):
        try:
            return socket.gethostbyname(host)
        except OSError:
            return host
    driver = conf_value(sc, "spark.driver.host", "127.0.0.1")
    here = {driver, address(driver), socket.gethostname(), address(socket.gethostname())}
    hosts = {e.host() for e in sc._jsc.sc().statusTracker().getExecutorInfos()}
    return sorted(h for h in hosts if h not in here and address(h) not in here and not address(h).startswith("127."))


def _not_shared(directory, hosts):
    import socket
    raise ValueError(
        f"jobs mode writes its training shards where every executor can read them, but {directory!r} (a directory "
        f"of the driver's host {socket.gethostname()}) is not shared with the executors on {', '.join(hosts)}. Set "
        f"a directory all hosts share (HDFS, S3, NFS): ParameterAveraging(export_dir=...), jobs/train.py "
        f"--export-dir, or the setting spark.sparkdl.exportDir; or train with mode='barrier', which needs none")


def spark_retries(sc):
    """How often Spark itself tries a failed task: local[N] masters try once (local[N,F]: F times)."""
    import re
    local = re.fullmatch(r"local\[(\d+|\*)(?:,\s*(\d+))?\]|local", sc.master)
    if local:
        return int(local.group(2)) if local.group(2) else 1
    return int(conf_value(sc, "spark.task.maxFailures", "4"))


def run_round(launcher, run, epoch, r, g):
    """One round's job; where Spark would not retry a failed task (local mode), the round is run again up to
    ``round_retries`` times (a round is a pure function of the broadcast buffers and the shards)."""
    from ..errors import from_task_failure
    retries = launcher.options.round_retries if spark_retries(launcher.sc) < 2 else 0
    for attempt in range(retries + 1):
        try:
            return _run_round(launcher, run, epoch, r, g)
        except Exception as e:
            if attempt == retries or run.stop_signal is not None or from_task_failure(e) is not None:
                raise
            log.warning("sparkdl: round %d (epoch %d) failed (%s); running it again (%d of %d)", g + 1, epoch + 1,
                        _reason(e), attempt + 1, retries)


def _reason(error):
    """The line of a Spark failure that says what went wrong (py4j's first line only names the call)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for ln in lines[1:]:
        if "Exception: " in ln or "Error: " in ln:
            return ln.split(": ", 1)[1][:300]
    return lines[0][:300] if lines else type(error).__name__


def _run_round(launcher, run, epoch, r, g):
    options, sc = launcher.options, launcher.sc
    bc = sc.broadcast(run.payload())
    task = _round_task(launcher.paths, run.input_shape, run.model_json, run.compile_json, options.seed,
                       options.shuffle, options.batch_size_per_worker, options.averaging_frequency,
                       options.average_optimizer_state, epoch, r, g, bc, options.backend, launcher.local)
    sc.setJobDescription(f"sparkdl fit: epoch {epoch + 1}/{run.epochs}, round {r + 1}/{run.rounds_per_epoch}")
    rdd = sc.parallelize(range(len(launcher.paths)), len(launcher.paths)).mapPartitionsWithIndex(task)
    total = rdd.treeAggregate(Contribution(), add, merge, depth=options.aggregation_depth)
    bc.destroy()
    return total


def _round_task(paths, input_shape, model_json, compile_json, seed, shuffle, batch_size, freq,
                average_optimizer_state, epoch, r, g, bc, backend, local):
    """The task closure: only plain values and a broadcast handle."""
    def task(worker, _):
        import time as _time
        from sparkdl.dist import schedule as _schedule
        from sparkdl.dist.worker import fit_round, worker_model
        from sparkdl.spark.gpu import task_backend
        from sparkdl.spark.shards import read_shard
        record = {"worker": worker, "round": g, "epoch": epoch, "start": _time.time()}
        model = worker_model(model_json, compile_json, task_backend(backend, local))
        x, y = read_shard(paths[worker], input_shape, model.xp)
        payload = bc.value
        order = _schedule.epoch_order(len(x), seed, epoch, worker, shuffle)
        batches = _schedule.round_batches(order, batch_size, freq, r)
        record["read_s"] = _time.time() - record["start"]
        yield fit_round(model, x, y, batches, payload["params"], payload["state"], payload["opt"],
                        payload["iterations"], average_optimizer_state, record, grad_norms=True,
                        rng_key=_schedule.round_key(seed, worker, g))
    return task
