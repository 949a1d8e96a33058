"""Learning-rate schedules: callables ``schedule(step) -> float`` of the optimizer's step count.

The optimizer calls ``schedule(iterations)`` before each update, with ``iterations`` counted from 0, so the first
update uses ``schedule(0)``. Every schedule round trips through ``serialize``/``get`` as
``{"class_name": ..., "config": ...}``, so a model file or a Spark task can rebuild it from JSON.
"""
import math
import numbers

from ..checks import boolean, non_negative, number, positive_int
from ..registry import Configurable, Registry

SCHEDULES = Registry("schedule")  # class name -> class, filled by LearningRateSchedule.__init_subclass__


class LearningRateSchedule(Configurable):
    """Base class: a subclass stores its constructor kwargs as attributes and lists them in ``get_config``."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        SCHEDULES[cls.__name__] = cls

    def __call__(self, step):
        raise NotImplementedError


class StepDecay(LearningRateSchedule):
    """``initial_learning_rate * gamma ** (step // step_size)`` (PyTorch ``StepLR``, counted in optimizer steps)."""

    def __init__(self, initial_learning_rate, step_size, gamma=0.1):
        self.initial_learning_rate = non_negative("initial_learning_rate", initial_learning_rate)
        self.step_size = positive_int("step_size", step_size)
        self.gamma = number("gamma", gamma, lambda v: v > 0, "a positive number")

    def __call__(self, step):
        return self.initial_learning_rate * self.gamma ** (step // self.step_size)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "step_size": self.step_size,
                "gamma": self.gamma}


class ExponentialDecay(LearningRateSchedule):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)``; with ``staircase`` the exponent is floored
    (Keras ``ExponentialDecay``)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False):
        self.initial_learning_rate = non_negative("initial_learning_rate", initial_learning_rate)
        self.decay_steps = positive_int("decay_steps", decay_steps)
        self.decay_rate = number("decay_rate", decay_rate, lambda v: v > 0, "a positive number")
        self.staircase = boolean("staircase", staircase)

    def __call__(self, step):
        exponent = step // self.decay_steps if self.staircase else step / self.decay_steps
        return self.initial_learning_rate * self.decay_rate ** exponent

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase}


class CosineDecay(LearningRateSchedule):
    """Keras ``CosineDecay`` without warmup (wrap it in :class:`LinearWarmup` for that)::

        s = min(step, decay_steps)
        lr = initial_learning_rate * ((1 - alpha) * 0.5 * (1 + cos(pi * s / decay_steps)) + alpha)

    so it falls from ``initial_learning_rate`` to ``alpha * initial_learning_rate`` and stays there.
    """

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0):
        self.initial_learning_rate = non_negative("initial_learning_rate", initial_learning_rate)
        self.decay_steps = positive_int("decay_steps", decay_steps)
        self.alpha = number("alpha", alpha, lambda v: 0 <= v <= 1, "a number in [0, 1]")

    def __call__(self, step):
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(step, self.decay_steps) / self.decay_steps))
        return self.initial_learning_rate * ((1.0 - self.alpha) * cosine + self.alpha)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha}


class LinearWarmup(LearningRateSchedule):
    """A linear ramp in front of another schedule (or a constant rate), as Keras ``CosineDecay``'s warmup::

        step <  warmup_steps:  start + (target - start) * step / warmup_steps,   target = schedule(0)
        step >= warmup_steps:  schedule(step - warmup_steps)

    The wrapped schedule's step is SHIFTED by ``warmup_steps``: it starts counting when the warmup ends, so a
    ``CosineDecay(decay_steps=1000)`` still decays over 1000 steps after the warmup, and the rate is continuous.
    """

    def __init__(self, schedule, warmup_steps, start=0.0):
        self.schedule = get(schedule, name="schedule")
        self.warmup_steps = positive_int("warmup_steps", warmup_steps)
        self.start = non_negative("start", start)

    def _target(self, step):
        return self.schedule(step) if callable(self.schedule) else self.schedule

    def __call__(self, step):
        if step >= self.warmup_steps:
            return self._target(step - self.warmup_steps)
        return self.start + (self._target(0) - self.start) * step / self.warmup_steps

    def get_config(self):
        return {"schedule": serialize(self.schedule), "warmup_steps": self.warmup_steps, "start": self.start}


def serialize(schedule):
    """``{"class_name": ..., "config": ...}`` for a schedule; a constant rate stays a float."""
    if isinstance(schedule, LearningRateSchedule):
        return {"class_name": type(schedule).__name__, "config": schedule.get_config()}
    return get(schedule)


def get(identifier, name="learning_rate"):
    """A schedule from an instance (returned as is), a ``serialize`` dict, or a constant non-negative float."""
    if isinstance(identifier, LearningRateSchedule):
        return identifier
    if isinstance(identifier, dict):
        if set(identifier) != {"class_name", "config"}:
            raise ValueError('a schedule config must be {"class_name": ..., "config": {...}}. '
                             f"Received: {identifier!r}")
        return SCHEDULES.lookup(identifier["class_name"], "class_name").from_config(identifier["config"])
    if isinstance(identifier, numbers.Real) and not isinstance(identifier, bool):
        return non_negative(name, identifier)
    raise ValueError(f"{name} must be a non-negative number, a LearningRateSchedule or its serialized dict. "
                     f"Received: {name}={identifier!r}")
