"""GPU placement of Spark tasks."""
from ..backend import resolve


def task_backend(backend, local):
    """The backend this task trains with, from the GPU addresses Spark assigned to it
    (``spark.task.resource.gpu.amount`` with ``spark.executor.resource.gpu.*``)."""
    if backend == "numpy":
        return "numpy"
    from pyspark import TaskContext
    ctx = TaskContext.get()
    res = ctx.resources().get("gpu") if ctx is not None else None
    return resolve(backend, tuple(res.addresses) if res is not None else (), local)
