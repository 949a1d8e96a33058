"""Losses: pure functions ``f(y_pred, y_true) -> (mean loss as a 0-d array, gradient w.r.t. y_pred)``.

The cross-entropies work on logits (log-sum-exp, never log of a rounded probability). A model that ends in
softmax (sigmoid) and is compiled with a categorical (binary) cross-entropy hands the loss the logits its last
activation cached, so ``Dense(10, activation="softmax")`` trains as stably as a logits output
(``Loss.bind`` decides). With ``from_logits=False`` and no such activation the outputs are taken as
probabilities and clipped to [1e-7, 1 - 1e-7], as Keras does.

Every loss is the mean over all examples (and over all outputs for the element-wise losses). The functions are in
functions.py; this module holds the Loss classes that bind them to a model and their registry.
"""
import numpy as np

from ..backend import to_numpy
from ..checks import number
from ..registry import Registry
from .functions import (binary_crossentropy, binary_crossentropy_probs, categorical_crossentropy,
                        categorical_crossentropy_probs, huber, mean_absolute_error, mean_squared_error,
                        sparse_categorical_crossentropy, sparse_categorical_crossentropy_probs)


class Loss:
    """A named loss with its configuration; ``kind`` tells metrics and predict how to read the outputs."""
    kind = "regression"        # "multiclass", "binary" or "regression"
    fuses_with = None          # the final activation whose logits this loss can use

    def __init__(self, from_logits=None):
        if from_logits not in (None, True, False):
            raise ValueError(f"from_logits must be None, True or False. Received: from_logits={from_logits!r}")
        self.from_logits = from_logits
        self.mode = "direct"

    def bind(self, output_activation):
        """Choose how to read the model's outputs: "fused" (use the final activation's cached logits),
        "logits" or "probs" for the cross-entropies, "direct" for the rest."""
        if self.fuses_with is None:
            self.mode = "direct"
            return self.mode
        act = type(output_activation).__name__.lower() if output_activation is not None else None
        if act == self.fuses_with:
            if self.from_logits:
                raise ValueError(f"loss {self.name!r} has from_logits=True but the model ends in {act}: its "
                                 f"outputs are probabilities. Drop the final {act} or use from_logits=None")
            self.mode = "fused"
        else:
            self.mode = "probs" if self.from_logits is False else "logits"
        return self.mode

    def __call__(self, y_pred, y_true):
        return self.fn(y_pred, y_true)

    def check_targets(self, y, output_shape, dtype=np.float32):
        """Validate and convert targets for the whole dataset once (host numpy), before training; real-valued
        targets take ``dtype``, the model's (a float64 model keeps float64 targets)."""
        y = np.asarray(to_numpy(y))
        if y.size and not np.isfinite(y).all():
            raise ValueError(f"targets (labels) for loss {self.name!r} must be finite; received NaN or inf")
        return y.astype(dtype, copy=False)

    def get_config(self):
        return {} if self.fuses_with is None else {"from_logits": self.from_logits}

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


class _Smoothed(Loss):
    """A categorical cross-entropy with ``label_smoothing`` e in [0, 1): the targets move e of their mass evenly
    onto every class."""
    kind, fuses_with = "multiclass", "softmax"

    def __init__(self, from_logits=None, label_smoothing=0.0):
        super().__init__(from_logits)
        self.label_smoothing = number("label_smoothing", label_smoothing, lambda v: 0 <= v < 1, "a number in [0, 1)")

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


class SparseCategoricalCrossentropy(_Smoothed):
    """``label_smoothing`` e: each row's target is 1 - e on its label plus e / C on every class."""
    name = "sparse_categorical_crossentropy"

    def __call__(self, y_pred, y_true):
        fn = sparse_categorical_crossentropy_probs if self.mode == "probs" else sparse_categorical_crossentropy
        return fn(y_pred, y_true, self.label_smoothing)

    def check_targets(self, y, output_shape, dtype=np.float32):
        y = np.asarray(to_numpy(y))
        num_classes = output_shape[-1]
        expected = tuple(output_shape[:-1])
        if y.shape[1:] != expected:
            raise ValueError(f"labels for {self.name} must have shape (n,{''.join(f' {d},' for d in expected)}) "
                             f"with one class index per output; received labels of shape {y.shape} for model "
                             f"outputs of shape (n, {', '.join(map(str, output_shape))})")
        if y.size == 0:
            return y.astype(np.int64)
        if y.dtype.kind == "f":
            if not np.isfinite(y).all() or (y != np.round(y)).any():
                bad = y[~np.isfinite(y) | (y != np.round(y))].ravel()[0]
                raise ValueError(f"labels for {self.name} must be integer class indices; received {float(bad)!r}")
        elif y.dtype.kind not in "iub":
            raise ValueError(f"labels for {self.name} must be integers; received dtype {y.dtype}")
        lo, hi = y.min(), y.max()
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels for {self.name} must be in [0, {num_classes - 1}] (the model has "
                             f"{num_classes} outputs); received labels in [{lo}, {hi}]")
        return y.astype(np.int64)


class CategoricalCrossentropy(_Smoothed):
    """``label_smoothing`` e (Keras'): the targets become (1 - e) y + e / C."""
    name = "categorical_crossentropy"

    def __call__(self, y_pred, y_true):
        if self.label_smoothing:
            y_true = y_true * (1.0 - self.label_smoothing) + self.label_smoothing / y_true.shape[-1]
        fn = categorical_crossentropy_probs if self.mode == "probs" else categorical_crossentropy
        return fn(y_pred, y_true)

    def check_targets(self, y, output_shape, dtype=np.float32):
        y = super().check_targets(y, output_shape, dtype)
        if y.shape[1:] != tuple(output_shape):
            raise ValueError(f"targets for {self.name} must be one-hot or class probabilities of shape "
                             f"(n, {', '.join(map(str, output_shape))}); received shape {y.shape}. For integer "
                             f"labels use sparse_categorical_crossentropy")
        return y


class BinaryCrossentropy(Loss):
    name, kind, fuses_with = "binary_crossentropy", "binary", "sigmoid"

    def __call__(self, y_pred, y_true):
        fn = binary_crossentropy_probs if self.mode == "probs" else binary_crossentropy
        return fn(y_pred, y_true)

    def check_targets(self, y, output_shape, dtype=np.float32):
        y = super().check_targets(y, output_shape, dtype)
        if y.size != len(y) * int(np.prod(output_shape)):
            raise ValueError(f"targets for {self.name} must have {int(np.prod(output_shape))} value(s) per example "
                             f"(model outputs {tuple(output_shape)}); received shape {y.shape}")
        if y.size and (y.min() < 0 or y.max() > 1):
            raise ValueError(f"targets for {self.name} must be in [0, 1]; received values in [{y.min()}, {y.max()}]")
        return y


class _Regression(Loss):
    def check_targets(self, y, output_shape, dtype=np.float32):
        y = super().check_targets(y, output_shape, dtype)
        if y.size != len(y) * int(np.prod(output_shape)):
            raise ValueError(f"targets for {self.name} must have {int(np.prod(output_shape))} value(s) per example "
                             f"(model outputs {tuple(output_shape)}); received shape {y.shape}")
        return y.reshape((len(y),) + tuple(output_shape))


class MeanSquaredError(_Regression):
    name = "mse"
    fn = staticmethod(mean_squared_error)


class MeanAbsoluteError(_Regression):
    name = "mae"
    fn = staticmethod(mean_absolute_error)


class Huber(_Regression):
    name = "huber"

    def __init__(self, delta=1.0):
        super().__init__()
        if not delta > 0:
            raise ValueError(f"delta must be > 0. Received: delta={delta!r}")
        self.delta = float(delta)

    def __call__(self, y_pred, y_true):
        return huber(y_pred, y_true, self.delta)

    def get_config(self):
        return {"delta": self.delta}


LOSSES = Registry("loss", {cls.name: cls for cls in (SparseCategoricalCrossentropy, CategoricalCrossentropy,
                                                      BinaryCrossentropy, MeanSquaredError, MeanAbsoluteError, Huber)},
                  aliases={"mean_squared_error": "mse", "mean_absolute_error": "mae"})


def get(identifier):
    """A Loss from a name, a {"class_name": name, "config": {...}} dict, or a Loss (returned as is)."""
    if isinstance(identifier, Loss):
        return identifier
    config = {}
    if isinstance(identifier, dict):
        identifier, config = identifier.get("class_name"), identifier.get("config", {})
    return LOSSES.lookup(identifier, "loss")(**config)


def serialize(loss):
    return {"class_name": loss.name, "config": loss.get_config()}
