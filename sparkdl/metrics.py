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
"""
import numpy as np

from .backend import array_module, to_numpy
from .registry import Registry

LOG_LOSS_EPSILON = 1e-7


# ---------------------------------------------------------------------------------------------------------------
# merging


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


def compute(metric, y_pred, y_true):
    """One-shot value of a metric (anything :func:`get` accepts) over whole arrays."""
    metric = get(metric)
    return metric.result(metric.partial(y_pred, y_true))


# ---------------------------------------------------------------------------------------------------------------
# input helpers


def _probabilities(y_pred):
    """(N, C) probabilities; binary (N,) / (N, 1) becomes [1 - p, p]."""
    xp = array_module(y_pred)
    if y_pred.ndim == 1 or y_pred.shape[-1] == 1:
        p = y_pred.reshape(-1)
        return xp.stack([1 - p, p], axis=1)
    if y_pred.ndim != 2:
        raise ValueError(f"classification y_pred must be (N,), (N, 1) or (N, C). Received: shape={y_pred.shape}")
    return y_pred


def _predicted_labels(y_pred):
    xp = array_module(y_pred)
    if y_pred.ndim == 1 or y_pred.shape[-1] == 1:
        return (y_pred.reshape(-1) > 0.5).astype(xp.int64)
    return xp.argmax(y_pred, axis=-1)


def _labels(y_true, y_pred, num_classes):
    """Integer labels (N,) from labels or one-hot, checked against the batch size and ``num_classes``."""
    xp = array_module(y_true)
    if y_true.ndim == 2 and y_true.shape[1] > 1:
        labels = xp.argmax(y_true, axis=1)
    else:
        labels = y_true.reshape(-1).astype(xp.int64)
    if labels.shape[0] != y_pred.shape[0]:
        raise ValueError(f"y_pred and y_true must have the same number of rows. "
                         f"Received: y_pred.shape={y_pred.shape}, y_true.shape={y_true.shape}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}). "
                         f"Received: labels in [{int(labels.min())}, {int(labels.max())}]")
    return labels


def _num_classes(y_pred):
    return 2 if y_pred.ndim == 1 or y_pred.shape[-1] == 1 else int(y_pred.shape[-1])


def _regression_pair(y_pred, y_true):
    """float64 (pred, true) of one shape; a (N,) target against a (N, 1) prediction is reshaped, not broadcast."""
    xp = array_module(y_pred)
    if y_true.shape != y_pred.shape:
        if y_true.size != y_pred.size:
            raise ValueError(f"y_pred and y_true must have the same shape. "
                             f"Received: y_pred.shape={y_pred.shape}, y_true.shape={y_true.shape}")
        y_true = y_true.reshape(y_pred.shape)
    return xp.asarray(y_pred, dtype=xp.float64), xp.asarray(y_true, dtype=xp.float64)


def _ratio(numerator, denominator):
    return float(numerator / denominator) if denominator else float("nan")


def _safe_divide(numerator, denominator):
    """numerator / denominator with 0 where the denominator is 0 (sklearn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _check_num_classes(num_classes):
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
                                    or num_classes < 2):
        raise ValueError(f"num_classes must be None or an int >= 2. Received: num_classes={num_classes!r}")
    return None if num_classes is None else int(num_classes)


# ---------------------------------------------------------------------------------------------------------------
# metrics


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


class Accuracy(Metric):
    name = "accuracy"

    def partial(self, y_pred, y_true):
        labels = _labels(y_true, y_pred, _num_classes(y_pred))
        return {"correct": float((_predicted_labels(y_pred) == labels).sum()), "count": float(labels.shape[0])}

    def result(self, totals):
        return _ratio(totals["correct"], totals["count"])


class TopKAccuracy(Metric):
    """The true class is among the k most probable. Ties count as hits (its rank is the number of classes with a
    strictly higher probability)."""

    name = "top_k_accuracy"

    def __init__(self, k=5):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int. Received: k={k!r}")
        self.k = int(k)

    def partial(self, y_pred, y_true):
        xp = array_module(y_pred)
        probs = _probabilities(y_pred)
        labels = _labels(y_true, y_pred, probs.shape[1])
        true_prob = probs[xp.arange(labels.shape[0]), labels]
        rank = (probs > true_prob[:, None]).sum(axis=1)
        return {"correct": float((rank < self.k).sum()), "count": float(labels.shape[0])}

    def result(self, totals):
        return _ratio(totals["correct"], totals["count"])

    def get_config(self):
        return {"k": self.k}


class ConfusionMatrix(Metric):
    """Counts of (true, predicted) pairs: result is a (C, C) int64 array, rows = true class, columns = predicted.
    ``num_classes=None`` takes C from y_pred (2 for binary probabilities)."""

    name = "confusion_matrix"

    def __init__(self, num_classes=None):
        self.num_classes = _check_num_classes(num_classes)

    def partial(self, y_pred, y_true):
        xp = array_module(y_pred)
        c = _num_classes(y_pred)
        if self.num_classes is not None and c != self.num_classes:
            raise ValueError(f"y_pred has {c} classes but num_classes={self.num_classes}. "
                             f"Received: y_pred.shape={y_pred.shape}")
        labels = _labels(y_true, y_pred, c)
        counts = xp.bincount(labels * c + _predicted_labels(y_pred), minlength=c * c)
        return {"matrix": to_numpy(counts).astype(np.float64).reshape(c, c)}

    def result(self, totals):
        return totals["matrix"].astype(np.int64)

    def get_config(self):
        return {"num_classes": self.num_classes}


class _PerClass(ConfusionMatrix):
    """Precision/recall/F1 from the confusion-matrix partial. ``average=None`` gives one value per class (0 where
    undefined, as sklearn's zero_division=0); ``"macro"`` averages over the classes that occur in y_true or y_pred
    (sklearn's default labels), so a class absent from both does not pull the mean down."""

    def __init__(self, num_classes=None, average="macro"):
        super().__init__(num_classes)
        if average not in ("macro", None):
            raise ValueError(f"average must be 'macro' or None. Received: average={average!r}")
        self.average = average

    def result(self, totals):
        m = totals["matrix"]
        tp, support, predicted = np.diag(m), m.sum(axis=1), m.sum(axis=0)
        values = self._per_class(tp, support, predicted)
        if self.average is None:
            return values
        present = (support + predicted) > 0
        return float(values[present].mean()) if present.any() else 0.0

    def get_config(self):
        return {"num_classes": self.num_classes, "average": self.average}


class Precision(_PerClass):
    name = "precision"

    def _per_class(self, tp, support, predicted):
        return _safe_divide(tp, predicted)


class Recall(_PerClass):
    name = "recall"

    def _per_class(self, tp, support, predicted):
        return _safe_divide(tp, support)


class F1Score(_PerClass):
    name = "f1_score"

    def _per_class(self, tp, support, predicted):
        return _safe_divide(2 * tp, support + predicted)


class LogLoss(Metric):
    """Mean cross-entropy -log p[true class], with p clipped to [1e-7, 1 - 1e-7]."""

    name = "log_loss"

    def partial(self, y_pred, y_true):
        xp = array_module(y_pred)
        probs = _probabilities(y_pred)
        labels = _labels(y_true, y_pred, probs.shape[1])
        p = xp.asarray(probs[xp.arange(labels.shape[0]), labels], dtype=xp.float64)
        loss = -xp.log(xp.clip(p, LOG_LOSS_EPSILON, 1 - LOG_LOSS_EPSILON))
        return {"loss": float(loss.sum()), "count": float(labels.shape[0])}

    def result(self, totals):
        return _ratio(totals["loss"], totals["count"])


class MeanSquaredError(Metric):
    """Mean over every element (for (N, k) equal to sklearn's uniform average over outputs)."""

    name = "mse"

    def partial(self, y_pred, y_true):
        p, t = _regression_pair(y_pred, y_true)
        return {"squared_error": float(((p - t) ** 2).sum()), "count": float(p.size)}

    def result(self, totals):
        return _ratio(totals["squared_error"], totals["count"])


class MeanAbsoluteError(Metric):
    name = "mae"

    def partial(self, y_pred, y_true):
        xp = array_module(y_pred)
        p, t = _regression_pair(y_pred, y_true)
        return {"absolute_error": float(xp.abs(p - t).sum()), "count": float(p.size)}

    def result(self, totals):
        return _ratio(totals["absolute_error"], totals["count"])


class R2Score(Metric):
    """1 - SS_res / SS_tot over all outputs pooled (one mean for every element; for (N, k) this is sklearn's
    r2_score of the flattened arrays, not its per-output average). SS_tot = sum(y^2) - sum(y)^2 / n loses digits
    when |mean(y)| is much larger than std(y). A constant target (SS_tot within rounding of 0) gives 1.0 for a perfect
    fit and 0.0 otherwise, as sklearn's force_finite=True; no data gives nan."""

    name = "r2"

    def partial(self, y_pred, y_true):
        p, t = _regression_pair(y_pred, y_true)
        return {"sum": float(t.sum()), "sum_squares": float((t * t).sum()),
                "residual_squares": float(((t - p) ** 2).sum()), "count": float(t.size)}

    def result(self, totals):
        n, residual = totals["count"], totals["residual_squares"]
        if not n:
            return float("nan")
        total = totals["sum_squares"] - totals["sum"] ** 2 / n
        if total <= 1e-12 * totals["sum_squares"]:
            return 1.0 if residual == 0 else 0.0
        return 1.0 - residual / total


# ---------------------------------------------------------------------------------------------------------------
# lookup

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
