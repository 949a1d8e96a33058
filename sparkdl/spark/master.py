"""ParameterAveraging: the options of a distributed fit (DL4J's ParameterAveragingTrainingMaster, in Python),
and which master runs it (``mode``): sparkdl.dist.jobs (one Spark job per averaging round) or sparkdl.dist.barrier
(one barrier stage, the workers averaging among themselves), as registered in sparkdl.dist.master."""
from ..dist import master as masters
from ..dist.options import REPARTITION, Options  # noqa: F401  (REPARTITION: part of this module's API)

MODES = masters.modes()


class ParameterAveraging(Options):
    __doc__ = Options.__doc__

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
        from .launch import Launcher
        launcher = Launcher(self, prepared)
        run.stoppers.append(launcher.cancel)   # a signal cancels the fit's Spark jobs (sparkdl.dist.run)
        return masters.get(self.mode).fit(self, run, launcher)


def _storage_level(name):
    from pyspark import StorageLevel
    level = getattr(StorageLevel, str(name), None) if not isinstance(name, StorageLevel) else name
    if level is None:
        raise ValueError(f"storage_level must be a pyspark StorageLevel name such as 'MEMORY_AND_DISK'. "
                         f"Received: storage_level={name!r}")
    return level
