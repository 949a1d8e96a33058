"""Mergeable evaluation metrics.

Every metric is split in two so that Spark can compute it in one pass: ``partial(y_pred, y_true)`` runs on an
executor over one batch and returns a small dict of SUMS (host numpy float64 arrays or Python floats), partial
dicts from any number of batches are combined with :func:`merge` (elementwise addition, so the order and the
grouping do not matter), and ``result(totals)`` turns the merged sums into the metric on the driver.

Input conventions:
- classification ``y_pred`` holds probabilities: (N, C) with C >= 2, or (N,) / (N, 1) for binary (the
  probability of class 1; the predicted class is 1 when it is > 0.5);
- classification ``y_true`` holds integer labels (N,) (a float array of integers is accepted) or one-hot (N, C);
- regression ``y_pred`` and ``y_true`` are floats of the same shape, (N,) or (N, k).

Arrays may be numpy or cupy; the work is done on the array's own module and only the sums come to the host.

The metrics live in base.py (``Metric``, :func:`merge`), classification.py and regression.py; this module is their
entry point and looks them up by name.
"""
from ..registry import Registry
from .base import Metric, merge
from .classification import (LOG_LOSS_EPSILON, Accuracy, ConfusionMatrix, F1Score, LogLoss, Precision, Recall,
                             TopKAccuracy)
from .regression import MeanAbsoluteError, MeanSquaredError, R2Score
from .sums import Sums

__all__ = ["LOG_LOSS_EPSILON", "METRICS", "Accuracy", "ConfusionMatrix", "F1Score", "LogLoss", "MeanAbsoluteError",
           "MeanSquaredError", "Metric", "Precision", "R2Score", "Recall", "Sums", "TopKAccuracy", "compute", "get", "merge",
           "to_config"]


_CLASSES = (Accuracy, TopKAccuracy, ConfusionMatrix, Precision, Recall, F1Score, LogLoss, MeanSquaredError,
            MeanAbsoluteError, R2Score)
METRICS = Registry("metric", {cls.name: cls for cls in _CLASSES},
                   aliases={"acc": "accuracy", **{cls.__name__: cls.name for cls in _CLASSES}})


def get(identifier):
    """A metric from a name ("accuracy", "mse", ...), a ``{"class_name", "config"}`` dict, or an instance."""
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str) and METRICS.find(identifier) is not None:
        return METRICS.find(identifier)()
    if isinstance(identifier, dict) and METRICS.find(identifier.get("class_name")) is not None:
        return METRICS.find(identifier["class_name"]).from_config(dict(identifier.get("config") or {}))
    raise ValueError(f"unknown metric; expected one of {METRICS.choices()}, a {{'class_name', 'config'}} dict with "
                     f"class_name in {sorted(cls.__name__ for cls in _CLASSES)}, or a Metric. Received: {identifier!r}")


def to_config(metric):
    """The JSON-able ``{"class_name", "config"}`` of a metric (what ships to executors; ``get`` inverts it)."""
    metric = get(metric)
    return {"class_name": type(metric).__name__, "config": metric.get_config()}


def compute(metric, y_pred, y_true):
    """One-shot value of a metric (anything :func:`get` accepts) over whole arrays."""
    metric = get(metric)
    return metric.result(metric.partial(y_pred, y_true))
