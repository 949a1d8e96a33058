"""What barrier mode (sparkdl.dist.barrier) needs of Spark: one barrier stage of ``num_workers`` tasks, each
converting its partition to numpy once and running ``worker_main`` with the task's rendezvous
(BarrierTaskContext.allGather) and its executor's address. The shuffle after the stage makes it a
ShuffleMapStage, which Spark retries as a whole when a task fails."""


def check_cluster(sc, n_workers):
    conf = sc.getConf()
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        raise ValueError("barrier mode needs all workers at once and cannot run with "
                         "spark.dynamicAllocation.enabled=true; use ParameterAveraging(mode='jobs')")
    slots = sc.defaultParallelism // max(int(conf.get("spark.task.cpus", "1")), 1)
    if n_workers > slots:
        raise ValueError(f"barrier mode runs all {n_workers} workers at once, but the cluster has {slots} task "
                         f"slots now; use num_workers <= {slots} or ParameterAveraging(mode='jobs')")


def driver_addresses(sc):
    """(address to bind, address the executors reach the driver on): ``spark.driver.host`` is advertised (the
    bind address may be 0.0.0.0 in containers)."""
    conf = sc.getConf()
    if sc.master.startswith("local"):
        return "127.0.0.1", "127.0.0.1"
    host = conf.get("spark.driver.host", "127.0.0.1")
    return conf.get("spark.driver.bindAddress", host), host


class TaskContext:
    """sparkdl.dist.barrier's worker context for one barrier task."""

    def __init__(self, ctx):
        from sparkdl.dist.host import host_key
        self._ctx = ctx
        self.rank, self.attempt = ctx.partitionId(), ctx.taskAttemptId()   # the attempt id grows with every retry
        self.address = ctx.getTaskInfos()[self.rank].address.rsplit(":", 1)[0]   # this task's executor
        self.host = host_key()

    def all_gather(self, message):
        return self._ctx.allGather(message)


def run_barrier(launcher, spec, run):
    task = _task(spec, run.input_shape, run.n_features, run.label_dtype, launcher.local)
    sc = launcher.sc
    sc.setJobGroup(launcher.group, f"sparkdl: barrier fit ({launcher.num_workers} workers, {run.epochs} epochs)", True)
    try:
        launcher.df.mapInArrow(task, "worker int, rows long", barrier=True).repartition(1).collect()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)


def _task(spec, input_shape, n_features, label_dtype, local):
    """The barrier task closure: plain values only (the fit's secret travels in ``spec``, never in logs)."""
    def task(batches):
        import time

        import pyarrow as pa
        from pyspark import BarrierTaskContext

        from sparkdl.dist.barrier import worker_main
        from sparkdl.spark.barrier import TaskContext
        from sparkdl.spark.data import partition_to_numpy
        from sparkdl.spark.gpu import task_backend

        t0 = time.time()
        ctx = TaskContext(BarrierTaskContext.get())
        x, y = partition_to_numpy(batches, n_features, label_dtype)
        rows = worker_main(ctx, dict(spec, backend=task_backend(spec["backend"], local)),
                           x.reshape((-1,) + tuple(input_shape)), y, time.time() - t0)
        yield pa.record_batch([pa.array([ctx.rank], pa.int32()), pa.array([rows], pa.int64())],
                              names=["worker", "rows"])
    return task
