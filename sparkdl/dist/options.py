"""The options of a distributed fit, as plain values (cheap to copy into closures and specs), checked once.
sparkdl.spark.ParameterAveraging is these options plus what needs Spark."""
import numpy as np

from . import modes as masters
from .wire import parse_ports

REPARTITION = ("always", "never", "auto")


def _int(value, name, minimum=1, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{' or None' if allow_none else ''}. "
                         f"Received: {name}={value!r}")
    return int(value)


class Options:
    """Options (all plain values, so the master is cheap to copy into Spark closures):

    num_workers: training tasks (default: the SparkContext's default parallelism).
    batch_size_per_worker: minibatch size in each task.
    averaging_frequency: minibatches each worker fits between two averagings (one round).
    average_optimizer_state: average the optimizer state (momentum, Adam m/v) like the params; if False every
        round starts from a fresh optimizer state (DL4J's saveUpdater=false).
    aggregation_depth: depth of the treeAggregate that sums contributions (jobs mode).
    repartition: "always", "never" (use the DataFrame's partitions as the workers, rows in their order) or "auto"
        (only when the partition count differs from num_workers). After a repartition each worker puts its rows in
        the order they had before it (the shuffle delivers them in an order that changes from run to run).
    storage_level: how a fit's prepared data (checked, converted and laid out one partition per worker in one
        Spark pass: sparkdl.spark.prepared) is persisted.
    reuse_prepared: keep the prepared data after the fit, for the next fit on a DataFrame of the same plan and
        columns (repeated fits, CrossValidator folds, a resumed fit): they skip the checks, the conversion and
        the repartition. The last few DataFrames' are kept; ``sparkdl.spark.release_prepared()`` drops them.
    export_dir: jobs mode: where the training shards go (a local path or hdfs://, s3://...; on a cluster one all
        hosts share); each fit writes a fresh directory under it and removes it afterwards. Default: the setting
        ``spark.sparkdl.exportDir``, else on a cluster the checkpoint directory or the Hadoop default filesystem
        when that is not the local one; else a temporary local directory. On a cluster the executors' access is
        checked before the export (a clear error, in about a second, when they do not share it).
    seed: the shuffling seed (same seed + same partitioning = same minibatches in both modes).
    shuffle: reshuffle each worker's shard every epoch.
    collect_stats: record per-round timings (``history.stats``).
    mode: "auto" (barrier mode where the cluster can run all the workers at once now, else jobs mode; the choice
        and its reason are logged and kept in ``history.mode``, ``history.mode_reason``), "jobs" or "barrier".
    backend: "auto" (a task's assigned GPU with cupy, else numpy), "numpy", or "cupy" (warns and uses numpy
        when a task has no GPU); see ``sparkdl.backend.resolve``.
    server_timeout: barrier mode: seconds any worker or the driver waits for another before failing the fit.
    shared_memory: barrier mode: the workers of one host train in place in /dev/shm and average there, one of
        them then averaging with the other hosts (sparkdl.dist.barrier); a host takes (workers + 1) x (params +
        layer state + optimizer state) of /dev/shm (2.8 MB each for a 235k-parameter model with Adam),
        and where it has no room its workers average over TCP one by one. False: every worker averages over TCP.
    bind_cpus: barrier mode, Linux: the workers sharing a host's memory bind to disjoint blocks of the CPUs they
        may use, and one that waits for a slower one hands it its CPUs (sparkdl.dist.host), so that lock-stepped
        workers do not pile onto one CPU beside a busy process; each gets its CPUs back when the fit ends.
    memory_budget: barrier mode: bytes of a worker's partition it keeps in memory; a larger partition goes to a
        memory-mapped file on local disk and its epochs shuffle minibatch blocks instead of rows
        (sparkdl.dist.spill). Default: half of what Python may use on an executor (spark.executor.pyspark.memory,
        else its memory overhead) shared by its task slots; in local mode half of the machine's memory.
    round_retries: jobs mode, where Spark itself would not retry a failed task (local[N] masters): how often a
        failed round (a killed Python worker, a lost executor) is run again before the fit fails.
    ports: barrier mode: the port range ("40000-40100" or (40000, 40100)) the driver and the workers listen on,
        for clusters whose firewalls open only some ports; default the Spark setting ``spark.sparkdl.ports``, else
        any free port.
    """

    def __init__(self, num_workers=None, batch_size_per_worker=32, averaging_frequency=5,
                 average_optimizer_state=True, aggregation_depth=2, repartition="always",
                 storage_level="MEMORY_AND_DISK", export_dir=None, seed=None, shuffle=True, collect_stats=True,
                 mode="auto", backend="auto", server_timeout=600.0, shared_memory=True, ports=None,
                 memory_budget=None, bind_cpus=True, round_retries=3, reuse_prepared=True):
        self.num_workers = _int(num_workers, "num_workers", allow_none=True)
        self.batch_size_per_worker = _int(batch_size_per_worker, "batch_size_per_worker")
        self.averaging_frequency = _int(averaging_frequency, "averaging_frequency")
        self.average_optimizer_state = bool(average_optimizer_state)
        self.aggregation_depth = _int(aggregation_depth, "aggregation_depth")
        if repartition not in REPARTITION:
            raise ValueError(f"repartition must be one of {REPARTITION}. Received: repartition={repartition!r}")
        self.repartition = repartition
        self.storage_level = storage_level
        self.reuse_prepared = bool(reuse_prepared)
        self.export_dir = export_dir
        self.seed = seed
        self.shuffle = bool(shuffle)
        self.collect_stats = bool(collect_stats)
        if mode not in masters.choices():
            raise ValueError(f"mode must be one of {masters.choices()}. Received: mode={mode!r}")
        self.mode = mode
        if backend not in ("auto", "numpy", "cupy"):
            raise ValueError(f"backend must be 'auto', 'numpy' or 'cupy'. Received: backend={backend!r}")
        self.backend = backend
        if not server_timeout > 0:
            raise ValueError(f"server_timeout must be > 0 seconds. Received: server_timeout={server_timeout!r}")
        self.server_timeout = float(server_timeout)
        self.shared_memory = bool(shared_memory)
        self.bind_cpus = bool(bind_cpus)
        self.round_retries = _int(round_retries, "round_retries", minimum=0)
        self.ports = parse_ports(ports)
        self.memory_budget = _int(memory_budget, "memory_budget", minimum=0, allow_none=True)

    def options(self):
        return dict(vars(self))

    def __repr__(self):
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in vars(self).items()) + ")"
