"""The optimizer base: validation, step counting, clipping, schedules and the ONE flat state buffer.

A subclass is only its update rule, ``update(params, grads, lr)``, written over whole flat arrays with in-place
``xp`` operations. The model's trainable parameters are one flat 1-D array and the optimizer state is one more
(``state_buffer``, each slot a view into it), so a distributed master averages or ships the state as one array,
exactly like the parameters.

``step`` updates ``params`` in place (layers hold views into it) and uses ``grads`` as scratch: after a step the
gradient buffer holds the clipped (and, for L2 weight decay, decayed) gradient, not what backward wrote.
"""
import numpy as np

from sparkdl.backend import check_dtype, to_numpy
from sparkdl.optim import schedules
from ..checks import number

from sparkdl.registry import Configurable, Registry

OPTIMIZERS = Registry("optimizer")  # class name -> class, filled by Optimizer.__init_subclass__


class Optimizer(Configurable):
    """Base class. ``slot_names`` lists the state slots (an instance may narrow it in ``__init__``, e.g. SGD has
    a momentum slot only when ``momentum > 0``); ``build`` lays them out back to back in ``state_buffer``."""

    slot_names = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        OPTIMIZERS[cls.__name__] = cls

    def __init__(self, learning_rate=0.01, clipnorm=None, name=None):
        self.learning_rate = schedules.get(learning_rate)
        if clipnorm is not None:
            clipnorm = number("clipnorm", clipnorm, lambda v: v > 0, "None or a positive number")
        self.clipnorm = clipnorm
        if name is not None and not isinstance(name, str):
            raise ValueError(f"name must be None or a string. Received: name={name!r}")
        self.name = name or type(self).__name__.lower()
        self.iterations = 0
        self.state_buffer = None
        self.slots = {}

    # ---- state -------------------------------------------------------------------------------------------
    def build(self, n, xp, dtype):
        """Allocate zeroed state for ``n`` parameters on ``xp`` and reset the step count."""
        n = number("n", n, lambda v: v >= 0, "a non-negative integer", cast=int)
        self.n, self.xp, self.dtype = n, xp, check_dtype(dtype)
        self.state_buffer = xp.zeros(len(self.slot_names) * n, dtype=self.dtype)
        self.slots = {s: self.state_buffer[i * n:(i + 1) * n] for i, s in enumerate(self.slot_names)}
        # one reusable temporary: the rules run every minibatch on millions of floats, so no per-step allocation
        self._scratch = xp.empty(n, dtype=self.dtype)
        self.iterations = 0

    @property
    def built(self):
        return self.state_buffer is not None

    def use_buffer(self, buffer):
        """Keep the state in ``buffer`` from now on (slots re-pointed, nothing copied)."""
        self._check_built("use_buffer")
        if buffer.shape != self.state_buffer.shape or buffer.dtype != self.state_buffer.dtype:
            raise ValueError(f"use_buffer: a {self.state_buffer.dtype} array of shape {self.state_buffer.shape} is "
                             f"needed; received {buffer.dtype} {buffer.shape}")
        self.state_buffer = buffer
        self.slots = {s: buffer[i * self.n:(i + 1) * self.n] for i, s in enumerate(self.slot_names)}

    def get_state(self):
        """``{"iterations": int, "buffer": host numpy copy of state_buffer}``."""
        self._check_built("get_state")
        host = to_numpy(self.state_buffer)
        return {"iterations": int(self.iterations), "buffer": host.copy() if host is self.state_buffer else host}

    def set_state(self, state):
        """Restore ``get_state()`` output (possibly averaged over workers); the slot views stay valid."""
        self._check_built("set_state")
        if not isinstance(state, dict) or set(state) != {"iterations", "buffer"}:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f'optimizer state must be a dict with keys ["buffer", "iterations"]. Received: {got}')
        buffer = state["buffer"]
        size = int(np.prod(np.shape(buffer)))
        if np.ndim(buffer) != 1 or size != self.state_buffer.size:
            raise ValueError(
                f"optimizer state size mismatch for {type(self).__name__} with slots {list(self.slot_names)} over "
                f"{self.n} parameters: expected a 1-D buffer of {self.state_buffer.size} values. "
                f"Received: shape {tuple(np.shape(buffer))}")
        self.state_buffer[...] = self.xp.asarray(buffer, dtype=self.dtype)
        self.iterations = number("iterations", state["iterations"], lambda v: v >= 0,
                                       "a non-negative integer", cast=int)

    def _check_built(self, what):
        if not self.built:
            raise RuntimeError(f"{type(self).__name__}.{what}() needs build(n, xp, dtype) first")

    # ---- the step ----------------------------------------------------------------------------------------
    def current_learning_rate(self):
        """The rate the next step uses: ``schedule(iterations)`` (0-based) or the constant."""
        if isinstance(self.learning_rate, schedules.LearningRateSchedule):
            return float(self.learning_rate(self.iterations))
        return self.learning_rate

    def step(self, params, grads):
        """One update of the flat ``params`` in place from the flat ``grads`` (which it may overwrite)."""
        self._check_built("step")
        if params.shape != (self.n,) or grads.shape != (self.n,):
            raise ValueError(f"params and grads must be 1-D of the built size {self.n}. "
                             f"Received: params.shape={params.shape}, grads.shape={grads.shape}")
        if self.clipnorm is not None:
            self._clip(grads)
        self.update(params, grads, self.current_learning_rate())
        self.iterations += 1

    def _clip(self, grads):
        xp = self.xp
        # dot(g, g) is the squared norm without a temporary; the scale stays an array (0-d on the device)
        # so cupy needs no host sync per step
        norm = xp.sqrt(xp.dot(grads, grads))
        grads *= (self.clipnorm / xp.maximum(norm, self.clipnorm)).astype(grads.dtype)

    def update(self, params, grads, lr):
        raise NotImplementedError

    # ---- config ------------------------------------------------------------------------------------------
    def get_config(self):
        return {"learning_rate": schedules.serialize(self.learning_rate), "clipnorm": self.clipnorm,
                "name": self.name}


def serialize(optimizer):
    """``{"class_name": ..., "config": ...}`` (JSON-able; a schedule inside is serialized the same way)."""
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


def get(identifier):
    """An optimizer from a name ("sgd", "adam", ... with defaults), a ``serialize`` dict, or an instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    by_lower = {name.lower(): cls for name, cls in OPTIMIZERS.items()}
    if isinstance(identifier, str):
        if identifier.lower() not in by_lower:
            raise ValueError(f"unknown optimizer; expected one of {sorted(by_lower)}. Received: {identifier!r}")
        return by_lower[identifier.lower()]()
    if isinstance(identifier, dict) and set(identifier) == {"class_name", "config"}:
        name = identifier["class_name"]
        cls = OPTIMIZERS.get(name) or by_lower.get(str(name).lower())
        if cls is None:
            raise ValueError(f"unknown optimizer; expected one of {sorted(OPTIMIZERS)}. Received: class_name={name!r}")
        return cls.from_config(identifier["config"])
    raise ValueError('an optimizer must be a name, {"class_name": ..., "config": {...}} or an Optimizer. '
                     f"Received: {identifier!r}")
