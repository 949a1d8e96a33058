"""ParameterAveraging: the options of a distributed fit (DL4J's ParameterAveragingTrainingMaster, in Python),
and which master runs it (``mode``): sparkdl.dist.jobs (one Spark job per averaging round) or sparkdl.dist.barrier
(one barrier stage, the workers averaging among themselves), as registered in sparkdl.dist.master."""
import contextlib
import logging

from ..backend import one_blas_thread
from ..dist import modes as masters
from ..dist.options import REPARTITION, Options  # noqa: F401  (REPARTITION: part of this module's API)

MODES = masters.choices()
log = logging.getLogger("sparkdl")


class ParameterAveraging(Options):
    __doc__ = Options.__doc__

    # -- shared by both modes -------------------------------------------------------------------------
    def workers_for(self, df):
        """(workers, the DataFrame they train on, one partition each). A repartition's rows come in the order the
        shuffle delivered them, which differs between runs: each row carries the position it had before the
        shuffle (data.ORDER, its partition and place in it), by which each worker orders its rows once loaded, so
        two identical fits of the same DataFrame (the same partitions) visit the same minibatches on any cluster.
        Partitions used as they are keep their order."""
        from . import columns as C
        from .data import ORDER
        sc = df.sparkSession.sparkContext
        wanted = self.num_workers or sc.defaultParallelism
        if self.repartition != "always":   # counting the partitions plans the query: not when it need not
            parts = df.rdd.getNumPartitions()
            if self.repartition == "never" or parts == wanted:
                return parts, df
        return wanted, C.select(df, [(ORDER, C.fn("monotonically_increasing_id"))], keep=True).repartition(wanted)

    def choose_mode(self, sc, n):
        """(the mode a fit of ``n`` workers runs in, why): with mode="auto", barrier where the cluster can run all
        the workers at once now (enough free task slots, no dynamic allocation), else jobs."""
        if self.mode != masters.AUTO:
            return self.mode, "asked for"
        from . import barrier
        try:
            barrier.check_cluster(sc, n)
        except ValueError as e:
            return "jobs", str(e).split("; use")[0]
        free = barrier.free_slots(sc)
        if free < n:
            return "jobs", f"only {free} task slots are free now for {n} workers"
        return "barrier", f"{free} free task slots for {n} workers"

    def fit(self, run, entry, mode=None):
        """Run the fit on ``entry`` (prepared data, one partition per worker: sparkdl.spark.prepared) in ``mode``
        (default: ``choose_mode``), said in the log and in ``history.mode``."""
        from .launch import Launcher
        launcher = Launcher(self, entry)
        if mode is None:
            mode, reason = self.choose_mode(launcher.sc, launcher.num_workers)
            run.history.mode, run.history.mode_reason = mode, reason
        log.info("sparkdl: %s mode (%s)", mode, run.history.mode_reason)
        if run.history.stats is not None:
            sc = launcher.sc
            executors = len(sc._jsc.sc().statusTracker().getExecutorInfos()) - (0 if launcher.local else 1)
            run.history.stats.config.update(spark_master=sc.master, executors=executors, mode=mode,
                                            mode_reason=run.history.mode_reason)
        run.stoppers.append(launcher.cancel)   # a signal cancels the fit's Spark jobs (sparkdl.dist.run)
        # on a local master the workers have the driver's CPUs: there its BLAS keeps to one thread, as OpenBLAS's
        # idle threads spin after every call (make run: a spinning thread of the driver took 55% of a core from two
        # workers on two cores, and the workers fitted 57% of their time)
        with one_blas_thread() if launcher.local else contextlib.nullcontext():
            return masters.get(mode).fit(self, run, launcher)


def _storage_level(name):
    from pyspark import StorageLevel
    level = getattr(StorageLevel, str(name), None) if not isinstance(name, StorageLevel) else name
    if level is None:
        raise ValueError(f"storage_level must be a pyspark StorageLevel name such as 'MEMORY_AND_DISK'. "
                         f"Received: storage_level={name!r}")
    return level
