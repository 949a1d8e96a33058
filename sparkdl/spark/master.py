"""ParameterAveraging: the driver-side training master (DL4J's ParameterAveragingTrainingMaster, in Python).

mode="jobs": one Spark job per averaging round. The data is exported once per fit into one Arrow shard per
worker; each round broadcasts the flat params (+ layer state, + optimizer state), every task fits
``averaging_frequency`` minibatches of its shard and returns an example-weighted Contribution, and
``treeAggregate`` sums them. Plain task retry covers lost executors, and dynamic allocation is fine.
"""
import tempfile

import numpy as np

from .. import fs
from ..dist.averaging import Contribution, add, merge

REPARTITION = ("always", "never", "auto")
MODES = ("jobs", "barrier")


def _int(value, name, minimum=1, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{' or None' if allow_none else ''}. "
                         f"Received: {name}={value!r}")
    return int(value)


class ParameterAveraging:
    """Options (all plain values, so the master is cheap to copy into Spark closures):

    num_workers: training tasks (default: the SparkContext's default parallelism).
    batch_size_per_worker: minibatch size in each task.
    averaging_frequency: minibatches each worker fits between two averagings (one round).
    average_optimizer_state: average the optimizer state (momentum, Adam m/v) like the params; if False every
        round starts from a fresh optimizer state (DL4J's saveUpdater=false).
    aggregation_depth: depth of the treeAggregate that sums contributions (jobs mode).
    repartition: "always", "never" (use the DataFrame's partitions as the workers) or "auto" (only when the
        partition count differs from num_workers).
    storage_level: how the prepared DataFrame is persisted between its check and its export.
    export_dir: where shards go (local path or hdfs://, s3://...; shared by all hosts on a cluster);
        default a temporary local directory removed after the fit.
    seed: the shuffling seed (same seed + same partitioning = same minibatches in both modes).
    shuffle: reshuffle each worker's shard every epoch.
    collect_stats: record per-round timings (``history.stats``).
    mode: "jobs" or "barrier".
    backend: "auto" (a task's assigned GPU with cupy, else numpy), "numpy", or "cupy" (warns and uses numpy
        when a task has no GPU); see ``sparkdl.backend.resolve``.
    server_timeout: barrier mode: seconds the averaging server waits for a worker before failing the fit.
    shared_memory: barrier mode: when every worker runs on the driver's host (local mode, one big machine) they
        train in place in /dev/shm and average among themselves there, reporting only losses to the driver
        (sparkdl.dist.peers); False: every worker trades its buffers with the driver's server over a socket.
        The shared block takes 3 x (params + layer state + optimizer state) per worker in /dev/shm (8.4 MB per
        worker for a 235k-parameter model with Adam); where /dev/shm has no room for it the socket is used.
    """

    def __init__(self, num_workers=None, batch_size_per_worker=32, averaging_frequency=5,
                 average_optimizer_state=True, aggregation_depth=2, repartition="always",
                 storage_level="MEMORY_AND_DISK", export_dir=None, seed=None, shuffle=True, collect_stats=True,
                 mode="jobs", backend="auto", server_timeout=600.0, shared_memory=True):
        self.num_workers = _int(num_workers, "num_workers", allow_none=True)
        self.batch_size_per_worker = _int(batch_size_per_worker, "batch_size_per_worker")
        self.averaging_frequency = _int(averaging_frequency, "averaging_frequency")
        self.average_optimizer_state = bool(average_optimizer_state)
        self.aggregation_depth = _int(aggregation_depth, "aggregation_depth")
        if repartition not in REPARTITION:
            raise ValueError(f"repartition must be one of {REPARTITION}. Received: repartition={repartition!r}")
        self.repartition = repartition
        self.storage_level = storage_level
        self.export_dir = export_dir
        self.seed = seed
        self.shuffle = bool(shuffle)
        self.collect_stats = bool(collect_stats)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}. Received: mode={mode!r}")
        self.mode = mode
        if backend not in ("auto", "numpy", "cupy"):
            raise ValueError(f"backend must be 'auto', 'numpy' or 'cupy'. Received: backend={backend!r}")
        self.backend = backend
        if not server_timeout > 0:
            raise ValueError(f"server_timeout must be > 0 seconds. Received: server_timeout={server_timeout!r}")
        self.server_timeout = float(server_timeout)
        self.shared_memory = bool(shared_memory)

    def options(self):
        return dict(vars(self))

    def __repr__(self):
        return "ParameterAveraging(" + ", ".join(f"{k}={v!r}" for k, v in vars(self).items()) + ")"

    # -- shared by both modes -------------------------------------------------------------------------
    def workers_for(self, df):
        sc = df.sparkSession.sparkContext
        parts = df.rdd.getNumPartitions()
        wanted = self.num_workers or sc.defaultParallelism
        if self.repartition == "never":
            return parts, df
        if self.repartition == "auto" and parts == wanted:
            return wanted, df
        return wanted, df.repartition(wanted)

    def fit(self, run, prepared):
        if self.mode == "barrier":
            from .barrier import fit_barrier
            return fit_barrier(self, run, prepared)
        return fit_jobs(self, run, prepared)


def _storage_level(name):
    from pyspark import StorageLevel
    level = getattr(StorageLevel, str(name), None) if not isinstance(name, StorageLevel) else name
    if level is None:
        raise ValueError(f"storage_level must be a pyspark StorageLevel name such as 'MEMORY_AND_DISK'. "
                         f"Received: storage_level={name!r}")
    return level


def fit_jobs(master, run, prepared):
    """The jobs-mode loop: export, then one broadcast + treeAggregate per round."""
    spark = prepared.sparkSession
    sc = spark.sparkContext
    n_workers, df = master.workers_for(prepared)
    own_dir = master.export_dir is None
    base = tempfile.mkdtemp(prefix="sparkdl-") if own_dir else master.export_dir
    export_dir = None
    try:
        from .shards import export, new_export_dir
        export_dir = new_export_dir(base)
        sc.setJobDescription("sparkdl: export training shards")
        shards = export(df, export_dir, run.n_features, run.label_dtype)
        sizes = [rows for _, rows in shards]
        run.start(sizes)
        paths = [p for p, _ in shards]
        for epoch, r, g in run.rounds():
            bc = sc.broadcast(run.payload())
            task = _round_task(paths, run.input_shape, run.model_json, run.compile_json, master.seed,
                               master.shuffle, master.batch_size_per_worker, master.averaging_frequency,
                               master.average_optimizer_state, epoch, r, g, bc, master.backend,
                               sc.master.startswith("local"))
            sc.setJobDescription(f"sparkdl: epoch {epoch + 1}/{run.epochs}, round {r + 1}/{run.rounds_per_epoch}")
            rdd = sc.parallelize(range(len(paths)), len(paths)).mapPartitionsWithIndex(task)
            total = rdd.treeAggregate(Contribution(), add, merge, depth=master.aggregation_depth)
            run.apply(total, epoch, r, g)
            bc.destroy()
            if run.stopped:
                break
    finally:
        if export_dir is not None and own_dir:
            fs.remove_dir(base)
    return run.finish()


def _round_task(paths, input_shape, model_json, compile_json, seed, shuffle, batch_size, freq,
                average_optimizer_state, epoch, r, g, bc, backend, local):
    """The task closure: only plain values and a broadcast handle."""
    def task(worker, _):
        import time as _time
        from sparkdl.spark.shards import read_shard
        from sparkdl.dist import schedule as _schedule
        from sparkdl.spark.gpu import task_backend
        from sparkdl.dist.worker import fit_round, worker_model
        record = {"worker": worker, "round": g, "epoch": epoch, "start": _time.time()}
        model = worker_model(model_json, compile_json, task_backend(backend, local))
        x, y = read_shard(paths[worker], input_shape, model.xp)
        payload = bc.value
        order = _schedule.epoch_order(len(x), seed, epoch, worker, shuffle)
        batches = _schedule.round_batches(order, batch_size, freq, r)
        record["read_s"] = _time.time() - record["start"]
        yield fit_round(model, x, y, batches, payload["params"], payload["state"], payload["opt"],
                        payload["iterations"], average_optimizer_state, record)
    return task
