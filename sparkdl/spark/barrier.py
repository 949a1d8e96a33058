"""What barrier mode (sparkdl.dist.barrier) needs of Spark: one barrier stage of ``num_workers`` tasks, each
converting its partition to numpy once (or to a memory-mapped file past its memory budget: sparkdl.dist.spill)
and running ``worker_main`` with its executor's address (the rendezvous goes through the driver: Spark's
BarrierTaskContext.allGather takes a second a call). The shuffle after the stage makes it a ShuffleMapStage,
which Spark retries as a whole when a task fails."""
import os

from .session import conf_value

MIB = 1 << 20


class BarrierUnsupported(ValueError):
    """Spark cannot run a barrier stage on the DataFrame's partitions as they are (after a coalesce, a union, a
    limit: its RDD chain has ancestors of another partition count)."""


def check_cluster(sc, n_workers):
    if conf_value(sc, "spark.dynamicAllocation.enabled", "false").lower() == "true":
        raise ValueError("barrier mode needs all workers at once and cannot run with "
                         "spark.dynamicAllocation.enabled=true; use ParameterAveraging(mode='jobs')")
    slots = sc.defaultParallelism // max(int(conf_value(sc, "spark.task.cpus", "1")), 1)
    if n_workers > slots:
        raise ValueError(f"barrier mode runs all {n_workers} workers at once, but the cluster has {slots} task "
                         f"slots now; use num_workers <= {slots} or ParameterAveraging(mode='jobs')")


def free_slots(sc):
    """Task slots not running a task now (the executors' cores over spark.task.cpus, less their running tasks)."""
    slots = sc.defaultParallelism // max(int(conf_value(sc, "spark.task.cpus", "1")), 1)
    running = sum(e.numRunningTasks() for e in sc._jsc.sc().statusTracker().getExecutorInfos())
    return max(slots - running, 0)


WILDCARDS = ("", "0.0.0.0", "::", "[::]", "*")


def driver_addresses(sc):
    """(address to bind, address the executors reach the driver on). The advertised one is
    ``spark.driver.host``, never a wildcard: with ``spark.driver.bindAddress=0.0.0.0`` (containers, Kubernetes)
    the driver binds every interface and still advertises the host's own address."""
    if sc.master.startswith("local"):
        return "127.0.0.1", "127.0.0.1"
    return advertised_addresses(conf_value(sc, "spark.driver.host"), conf_value(sc, "spark.driver.bindAddress"))


def advertised_addresses(host, bind):
    """(bind, advertise) from Spark's ``spark.driver.host`` and ``spark.driver.bindAddress`` (either may be None)."""
    import socket
    if host is None or host.strip() in WILDCARDS:
        host = None if bind is None or bind.strip() in WILDCARDS else bind
    if host is None:
        host = socket.gethostbyname(socket.gethostname())
        if host.startswith("127."):
            raise ValueError("sparkdl cannot tell the executors where the driver is: spark.driver.host is unset or a "
                             "wildcard and this host's name resolves to a loopback address; set spark.driver.host "
                             "to an address the executors reach this host on")
    return (bind if bind is not None and bind.strip() else host), host


def ports(session, given=None):
    """The port range every sparkdl listener of a fit uses: ``given`` (ParameterAveraging(ports=...)), else the
    setting ``spark.sparkdl.ports`` ("40000-40100"; spark-submit --conf or spark.conf.set), else None (any free
    port)."""
    from ..dist.wire import parse_ports
    if given is not None:
        return parse_ports(given)
    try:
        return parse_ports(session.conf.get("spark.sparkdl.ports", None))
    except ValueError as e:
        raise ValueError(f"spark.sparkdl.{e}") from None


def memory_budget(sc, n_workers):
    """The default ``memory_budget`` of a worker: half of what Python may use on its executor
    (spark.executor.pyspark.memory, else the memory overhead: max(384 MiB, 10% of spark.executor.memory), as on
    YARN and Kubernetes) shared by the executor's task slots; in local mode half of this machine's memory shared
    by the workers."""
    from ..dist.spill import default_budget
    if sc.master.startswith("local"):
        return default_budget(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), n_workers)
    conf = sc.getConf()
    python = conf.get("spark.executor.pyspark.memory", None) or conf.get("spark.executor.memoryOverhead", None)
    total = _mib(python) if python else max(384 * MIB, _mib(conf.get("spark.executor.memory", "1g")) // 10)
    slots = int(conf.get("spark.executor.cores", "1")) // max(int(conf.get("spark.task.cpus", "1")), 1)
    return default_budget(total, slots)


def _mib(text):
    """Bytes of a Spark memory setting ("512m", "2g", "1024": MiB by default)."""
    text = str(text).strip().lower().rstrip("b")
    units = {"k": 1 << 10, "m": MIB, "g": 1 << 30, "t": 1 << 40}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text) * MIB)


class TaskContext:
    """sparkdl.dist.barrier's worker context for one barrier task."""

    def __init__(self, ctx):
        from sparkdl.dist.host import host_key
        self._ctx = ctx
        self.rank, self.attempt = ctx.partitionId(), ctx.taskAttemptId()   # the attempt id grows with every retry
        self.address = ctx.getTaskInfos()[self.rank].address.rsplit(":", 1)[0]   # this task's executor
        self.host = host_key()


def run_barrier(launcher, spec, run):
    """One barrier stage of ``launcher.num_workers`` tasks. On a local master the workers memory-map the shards
    of jobs mode (sparkdl.spark.jobs.exported), which stay with prepared data that is kept: the next fit on it
    reads nothing; elsewhere each task reads its partition of the prepared data."""
    if not launcher.local:
        frame = launcher.entry.packed()
        run.mark("checked")
        return _run_stage(launcher, run, frame, _task(spec, run.input_shape, run.n_features, run.label_dtype, False))
    from .jobs import exported
    with exported(launcher, run):
        _run_stage(launcher, run, None, _task(spec, run.input_shape, run.n_features, run.label_dtype, True,
                                              launcher.paths))


def _run_stage(launcher, run, frame, task):
    """The barrier stage: over ``frame``'s partitions, or (None) over one RDD element per worker, which needs no
    Arrow and no SQL (the application's first Arrow job costs 1-3 s more than later ones)."""
    sc = launcher.sc
    sc.setJobGroup(launcher.group, f"sparkdl fit: {run.epochs} epochs in one barrier stage of {launcher.num_workers} "
                                   f"workers", True)
    try:
        if frame is None:
            n = launcher.num_workers
            # followed by a shuffle, as below: Spark retries a failed barrier stage only where it is not the last
            sc.parallelize(range(n), n).barrier().mapPartitions(task).repartition(1).collect()
        else:
            frame.mapInArrow(task, "worker int, rows long", barrier=True).repartition(1).collect()
    except Exception as e:
        if "BarrierJobUnsupportedRDDChainException" not in str(e):
            raise
        raise BarrierUnsupported("barrier mode cannot run on the DataFrame's partitions as they are (Spark refuses a "
                                 "barrier stage after a coalesce, a union or a limit); use repartition='always' or "
                                 "mode='jobs'") from None
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)


def _task(spec, input_shape, n_features, label_dtype, local, paths=None):
    """The barrier task closure: plain values only (the fit's secret travels in ``spec``, never in logs). With
    ``paths`` (one shard per worker) a task reads its shard, memory-mapped, and not its input rows."""
    def task(batches):
        import time

        import pyarrow as pa
        from pyspark import BarrierTaskContext

        from sparkdl.dist.barrier import worker_main
        from sparkdl.dist.spill import local_dir
        from sparkdl.spark.barrier import TaskContext
        from sparkdl.spark.data import partition_to_numpy
        from sparkdl.spark.gpu import task_backend

        t0 = time.time()
        ctx = TaskContext(BarrierTaskContext.get())
        if paths is not None:
            from sparkdl.spark.shards import read_shard
            x, y = read_shard(paths[ctx.rank], input_shape)
            for _ in batches:   # the task's one row: its rank
                pass
        else:
            x, y = partition_to_numpy(batches, n_features, label_dtype, input_shape, spec["memory_budget"],
                                      spec["batch_size_per_worker"], local_dir())
        rows = worker_main(ctx, dict(spec, backend=task_backend(spec["backend"], local)), x, y, time.time() - t0, t0)
        if paths is not None:   # an RDD's task: plain values (pyarrow's first array imports pandas, 0.2 s)
            yield ctx.rank, rows
        else:
            yield pa.record_batch([pa.array([ctx.rank], pa.int32()), pa.array([rows], pa.int64())],
                                  names=["worker", "rows"])
    return task
