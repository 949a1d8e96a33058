"""The training masters' interface and their registry: ``ParameterAveraging(mode=...)`` picks the master
registered under that mode (``sparkdl.dist.modes``, which imports every master module, lists and picks them).

A master gets the fit's options (a ParameterAveraging: plain values), the driver's ``FitRun`` (sparkdl.dist.run)
and a launcher, the Spark-side object that runs its tasks (sparkdl.spark: ``num_workers``, ``driver_host``,
``cancel()``, and what the master needs of it: ``check_barrier``, ``ports``, ``memory_budget`` and
``run_barrier`` for barrier mode, ``exported`` and ``run_round`` for jobs mode). It returns the fit's History.
"""

from ..registry import Registry

MASTERS = Registry("mode")   # mode -> Master class
AUTO = "auto"   # not a master: the launcher picks one (barrier where the cluster can run it now, else jobs)


class Master:
    mode = None
    order = 0   # where the mode is listed

    def fit(self, options, run, launcher):
        raise NotImplementedError


def register(cls):
    return MASTERS.register(cls, cls.mode)
