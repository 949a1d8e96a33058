"""Weight initializers. Each draws on the host from a seeded ``numpy.random.Generator`` (so a seed gives the same
weights on every backend) and returns a float64 array; the model casts and places it.

Fans follow Keras: for a matrix (in, out); for a kernel (..., in, out) the receptive field multiplies both.
The "normal" variants draw from a normal truncated at two standard deviations, rescaled to keep the variance.
"""
import numpy as np

from ..registry import Registry


def fans(shape):
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_normal(rng, shape, stddev):
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * (stddev / 0.87962566103423978)  # std of a standard normal truncated at +-2


def _variance_scaling(scale, mode, distribution):
    def init(rng, shape):
        fan_in, fan_out = fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        var = scale / max(1.0, n)
        if distribution == "uniform":
            limit = np.sqrt(3.0 * var)
            return rng.uniform(-limit, limit, shape)
        return _truncated_normal(rng, shape, np.sqrt(var))
    return init


def zeros(rng, shape):
    return np.zeros(shape)


def ones(rng, shape):
    return np.ones(shape)


def orthogonal(rng, shape):
    """An orthogonal matrix (rows or columns orthonormal) of shape (prod(shape[:-1]), shape[-1])."""
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))  # make the decomposition unique, so the distribution is uniform
    if rows < cols:
        q = q.T
    return q.reshape(shape)


INITIALIZERS = Registry("initializer", {
    "glorot_uniform": _variance_scaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": _variance_scaling(1.0, "fan_avg", "normal"),
    "he_uniform": _variance_scaling(2.0, "fan_in", "uniform"),
    "he_normal": _variance_scaling(2.0, "fan_in", "normal"),
    "lecun_uniform": _variance_scaling(1.0, "fan_in", "uniform"),
    "lecun_normal": _variance_scaling(1.0, "fan_in", "normal"),
    "zeros": zeros,
    "ones": ones,
    "orthogonal": orthogonal,
})


def get(name):
    """The initializer function for a name (an already callable initializer is returned as is)."""
    return name if callable(name) else INITIALIZERS.lookup(name)


def check(name, argument):
    """Validate an initializer name given as a constructor argument (fails at construction, not at build)."""
    if not isinstance(name, str) or name not in INITIALIZERS:
        raise ValueError(f"{argument} must be one of {INITIALIZERS.choices()}. Received: {argument}={name!r}")
    return name
