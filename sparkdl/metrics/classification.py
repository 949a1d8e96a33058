"""The classification metrics (accuracy, top-k accuracy, the confusion matrix, precision, recall, F1, log-loss) and
their input helpers: probabilities (N, C), or (N,) / (N, 1) for binary, against integer or one-hot labels.
"""
import numpy as np

from ..backend import array_module, to_numpy
from ..checks import number, positive_int
from .base import Metric, _ratio

LOG_LOSS_EPSILON = 1e-7


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


def _safe_divide(numerator, denominator):
    """numerator / denominator with 0 where the denominator is 0 (sklearn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _check_num_classes(num_classes):
    if num_classes is None:
        return None
    return number("num_classes", num_classes, lambda v: v >= 2, "None or an int >= 2", cast=int)


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
        self.k = positive_int("k", k)

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
