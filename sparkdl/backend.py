"""Array-module selection: the only module in sparkdl that imports cupy, and only when asked.

The numeric core is written against an array module ``xp`` (numpy or cupy) and never imports either
GPU library itself. Arrays come back to the host through :func:`to_numpy` (and go to the device with the array
module's own ``xp.asarray``).
"""
import numpy as np

BACKENDS = ("numpy", "cupy")
DTYPES = ("float32", "float64")


def get_xp(backend="numpy"):
    """Return the array module for ``backend`` ("numpy" or "cupy")."""
    if backend == "numpy":
        return np
    if backend == "cupy":
        try:
            import cupy
        except ImportError as e:  # also raised when cupy is blocked in sys.modules
            raise RuntimeError(
                "backend='cupy' needs the cupy package and a CUDA GPU; install sparkdl[gpu] "
                f"or use backend='numpy'. Received: import error {e!r}"
            ) from e
        return cupy
    raise ValueError(f"backend must be one of {BACKENDS}. Received: backend={backend!r}")


def array_module(x):
    """The array module an array belongs to, without importing cupy for numpy arrays."""
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy
        return cupy
    return np


def to_numpy(x):
    """A host numpy array for any numpy/cupy array (no copy for numpy)."""
    if type(x).__module__.split(".")[0] == "cupy":
        return x.get()
    return np.asarray(x)


def check_dtype(dtype):
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}. Received: dtype={dtype!r}")
    return name


def make_rng(xp, seed):
    """A random generator on the backend's device (dropout masks are drawn where the data is)."""
    if xp is np:
        return np.random.default_rng(seed)
    return xp.random.default_rng(int(np.random.default_rng(seed).integers(2 ** 31)))


class LazyRng:
    """``make_rng(xp, seed)``, made at its first use: a model reseeded every round (sparkdl.dist.schedule.round_key)
    whose layers draw nothing does not pay the 30 us a generator takes to make."""

    def __init__(self, xp, seed):
        self._args, self._rng = (xp, seed), None

    def __getattr__(self, name):   # only for what the instance itself lacks: the generator's methods
        if name.startswith("_"):   # (copy and pickle look for such names before __init__ has run)
            raise AttributeError(name)
        if self._rng is None:
            self._rng = make_rng(*self._args)
        return getattr(self._rng, name)


def resolve(backend="auto", gpus=(), local=False):
    """The backend a Spark task trains with.

    "numpy": always the CPU. "cupy": the task's assigned GPU (``TaskContext.resources()["gpu"]``), device 0 in
    local mode; with no GPU assigned, or no working cupy, it warns and falls back to the CPU. "auto": the
    assigned GPU when there is one and cupy works, else the CPU, silently.
    """
    import warnings
    if backend not in ("auto",) + BACKENDS:
        raise ValueError(f"backend must be 'auto', 'numpy' or 'cupy'. Received: backend={backend!r}")
    if backend == "numpy":
        return "numpy"
    device = int(gpus[0]) if gpus else (0 if local and backend == "cupy" else None)
    if device is not None:
        try:
            xp = get_xp("cupy")
            xp.cuda.Device(device).use()
            return "cupy"
        except Exception as e:  # no cupy, no driver, bad device id
            reason = f"cupy cannot use GPU {device} ({e})"
    else:
        reason = "no GPU is assigned to this task (spark.task.resource.gpu.amount)"
    if backend == "cupy":
        warnings.warn(f"backend='cupy' but {reason}; training on the CPU with numpy", RuntimeWarning)
    return "numpy"


_BLAS = []   # [len(sys.modules) when it was made, a threadpoolctl ThreadpoolController or None]


def _blas():
    """threadpoolctl's ThreadpoolController of the BLAS libraries loaded (None without threadpoolctl), made again
    once modules were imported since the last: one made before a library was loaded (scikit-learn's SciPy brings
    its own OpenBLAS) does not limit it, and making one takes 3 ms, too much for every step of a model that trains
    on several threads (sparkdl.nn.replicas)."""
    import sys
    if not _BLAS or _BLAS[0] != len(sys.modules):
        try:
            from threadpoolctl import ThreadpoolController
            controller = ThreadpoolController()
        except ImportError:
            controller = None
        _BLAS[:] = [len(sys.modules), controller]
    return _BLAS[1]


def blas_threads(n):
    """A threadpoolctl limit holding BLAS to ``n`` threads (``restore_original_limits()`` ends it, or use it as a
    context manager); None without threadpoolctl."""
    controller = _blas()
    return None if controller is None else controller.limit(limits=int(n), user_api="blas")


def one_blas_thread():
    """A context manager that holds BLAS to one thread (a no-op without threadpoolctl)."""
    import contextlib
    return blas_threads(1) or contextlib.nullcontext()


def usable_cpus():
    """The CPUs this process may run on (its affinity), and no more than BLAS may use now (a Spark worker holds
    BLAS to its share of the host: sparkdl.dist.host)."""
    import os
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    controller = _blas()
    if controller is not None:
        counts = [lib.num_threads for lib in controller.select(user_api="blas").lib_controllers]
        cpus = min([cpus] + counts)
    return cpus
