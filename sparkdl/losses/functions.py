"""The losses as pure functions ``f(y_pred, y_true) -> (mean loss as a 0-d array, gradient w.r.t. y_pred)``, on
the array module of their inputs: the cross-entropies on logits (log-sum-exp) or on probabilities (clipped), and
the element-wise regression losses. sparkdl.losses binds them to models."""
import numpy as np

from ..backend import array_module

EPSILON = 1e-7


def _rows(logits, labels):
    """Flatten leading dims: (..., C) logits with (...) integer labels -> (M, C), (M,)."""
    c = logits.shape[-1]
    return logits.reshape(-1, c), labels.reshape(-1).astype(np.int64, copy=False)


def sparse_categorical_crossentropy(logits, labels, smoothing=0.0):
    """With ``smoothing`` e the target of a row is (1 - e) on its label and e / C on every class (PyTorch's
    ``label_smoothing``): the loss adds e times the mean over classes of -log softmax."""
    xp = array_module(logits)
    shape = logits.shape
    z, lab = _rows(logits, labels)
    m, c = z.shape
    z = z - z.max(axis=1, keepdims=True)
    e = xp.exp(z)
    s = e.sum(axis=1, keepdims=True)
    rows = xp.arange(m)
    if smoothing:
        loss = (xp.log(s[:, 0]) - (1.0 - smoothing) * z[rows, lab] - smoothing * z.mean(axis=1)).mean()
    else:
        loss = (xp.log(s[:, 0]) - z[rows, lab]).mean()
    e /= s * m
    if smoothing:
        e -= smoothing / (c * m)
    e[rows, lab] -= (1.0 - smoothing) / m
    return loss, e.reshape(shape)


def categorical_crossentropy(logits, targets):
    xp = array_module(logits)
    z = logits - logits.max(axis=-1, keepdims=True)
    e = xp.exp(z)
    s = e.sum(axis=-1, keepdims=True)
    m = logits.size // logits.shape[-1]
    loss = (targets * (xp.log(s) - z)).sum() / m
    grad = (e / s * targets.sum(axis=-1, keepdims=True) - targets) / m
    return loss, grad


def binary_crossentropy(logits, targets):
    xp = array_module(logits)
    targets = targets.reshape(logits.shape)
    loss = (xp.maximum(logits, 0) - logits * targets + xp.log1p(xp.exp(-xp.abs(logits)))).mean()
    e = xp.exp(-xp.abs(logits))
    sig = xp.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return loss, (sig - targets) / logits.size


def _clip(p):
    return array_module(p).clip(p, EPSILON, 1.0 - EPSILON)


def sparse_categorical_crossentropy_probs(probs, labels, smoothing=0.0):
    xp = array_module(probs)
    shape = probs.shape
    p, lab = _rows(probs, labels)
    m = p.shape[0]
    rows = xp.arange(m)
    if smoothing:   # the dense smoothed targets
        q = xp.full(p.shape, smoothing / p.shape[1], p.dtype)
        q[rows, lab] += 1.0 - smoothing
        loss, grad = categorical_crossentropy_probs(p, q)
        return loss, grad.reshape(shape)
    py = _clip(p[rows, lab])
    grad = xp.zeros_like(p)
    grad[rows, lab] = -1.0 / (py * m)
    return -xp.log(py).mean(), grad.reshape(shape)


def categorical_crossentropy_probs(probs, targets):
    xp = array_module(probs)
    p = _clip(probs)
    m = probs.size // probs.shape[-1]
    return -(targets * xp.log(p)).sum() / m, -targets / (p * m)


def binary_crossentropy_probs(probs, targets):
    xp = array_module(probs)
    targets = targets.reshape(probs.shape)
    p = _clip(probs)
    loss = -(targets * xp.log(p) + (1 - targets) * xp.log(1 - p)).mean()
    return loss, (p - targets) / (p * (1 - p) * probs.size)


def mean_squared_error(y_pred, y_true):
    d = y_pred - y_true.reshape(y_pred.shape)
    return (d * d).mean(), d * (2.0 / d.size)


def mean_absolute_error(y_pred, y_true):
    xp = array_module(y_pred)
    d = y_pred - y_true.reshape(y_pred.shape)
    return xp.abs(d).mean(), xp.sign(d) / d.size


def huber(y_pred, y_true, delta=1.0):
    xp = array_module(y_pred)
    d = y_pred - y_true.reshape(y_pred.shape)
    a = xp.abs(d)
    quad = a <= delta
    loss = xp.where(quad, 0.5 * d * d, delta * (a - 0.5 * delta)).mean()
    return loss, xp.where(quad, d, delta * xp.sign(d)) / d.size
