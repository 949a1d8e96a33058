"""Argument checks that every constructor and function of the package shares, one signature for all: the
argument's name first, then the received value; each returns the value as it will be used, or raises a
ValueError naming the argument, what it must be and what was received (``units must be a positive integer.
Received: units=0``)."""
import math
import numbers


def number(name, value, ok=lambda v: True, what="a number", cast=float):
    """``value`` as a finite ``cast`` (float or int) when ``ok(value)``, else a ValueError naming ``name``."""
    integral = cast is int
    kind = numbers.Integral if integral else numbers.Real
    if (isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value)
            or (integral and value != int(value)) or not ok(value)):
        raise ValueError(f"{name} must be {what}. Received: {name}={value!r}")
    return cast(value)


def boolean(name, value):
    if type(value).__name__ not in ("bool", "bool_"):  # numpy bools count, 0/1 do not
        raise ValueError(f"{name} must be True or False. Received: {name}={value!r}")
    return bool(value)


def positive_int(name, value):
    return number(name, value, lambda v: v > 0, "a positive integer", cast=int)


def non_negative(name, value):
    return number(name, value, lambda v: v >= 0, "a non-negative number")
