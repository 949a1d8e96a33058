"""The regression metrics (mean squared and absolute error, R^2) over float predictions and targets of one shape,
(N,) or (N, k); a (N,) target against a (N, 1) prediction is reshaped, not broadcast.
"""
from ..backend import array_module
from .base import Metric, _ratio


def _regression_pair(y_pred, y_true):
    """float64 (pred, true) of one shape; a (N,) target against a (N, 1) prediction is reshaped, not broadcast."""
    xp = array_module(y_pred)
    if y_true.shape != y_pred.shape:
        if y_true.size != y_pred.size:
            raise ValueError(f"y_pred and y_true must have the same shape. "
                             f"Received: y_pred.shape={y_pred.shape}, y_true.shape={y_true.shape}")
        y_true = y_true.reshape(y_pred.shape)
    return xp.asarray(y_pred, dtype=xp.float64), xp.asarray(y_true, dtype=xp.float64)


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
