"""What every metric builds on: ``Metric``, the protocol (``partial`` per batch, sums only; ``result`` from the merged
sums), :func:`merge`, which combines the partial dicts of any batches in any order and grouping, and ``_ratio``, the
mean most results are.
"""
import numpy as np


def merge(a, b):
    """Elementwise sum of two partial dicts; an empty dict is the identity. Neither input is modified."""
    if not a:
        return dict(b)
    if not b:
        return dict(a)
    if a.keys() != b.keys():
        raise ValueError(f"cannot merge partials with different keys. Received: {sorted(a)} and {sorted(b)}")
    out = {}
    for key in a:
        if np.shape(a[key]) != np.shape(b[key]):
            raise ValueError(f"cannot merge partials of different shapes for {key!r} (e.g. a different "
                             f"num_classes). Received: {np.shape(a[key])} and {np.shape(b[key])}")
        out[key] = a[key] + b[key]
    return out


def _ratio(numerator, denominator):
    return float(numerator / denominator) if denominator else float("nan")


class Metric:
    """A metric is ``partial`` (per batch, sums only) plus ``result`` (from merged sums)."""

    name = None

    def partial(self, y_pred, y_true):
        raise NotImplementedError

    def result(self, totals):
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __call__(self, y_pred, y_true):
        return self.result(self.partial(y_pred, y_true))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
