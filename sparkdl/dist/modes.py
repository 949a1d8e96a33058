"""The training masters by mode: the mode lists of the API, the pyspark.ml Params and the jobs' arguments are
read from here, and ``get(mode)`` gives the master that runs a fit. Importing this module imports every master
module (each registers its class in sparkdl.dist.master.MASTERS)."""
from . import barrier, jobs
from .master import AUTO, MASTERS

MASTER_MODULES = (barrier, jobs)   # imported for their registrations


def modes():
    return tuple(sorted(MASTERS, key=lambda m: MASTERS[m].order))


def choices():
    """What ``mode`` may be: "auto" or a registered master."""
    return (AUTO,) + modes()


def get(mode):
    if mode not in modes():
        raise ValueError(f"mode must be one of {modes()}. Received: mode={mode!r}")
    return MASTERS[mode]()
