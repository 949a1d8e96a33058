"""Keras compile settings to sparkdl ones, for ``sparkdl.io.keras``: ``_compile_settings`` turns a ``.keras``
file's ``compile_config`` or a legacy file's ``training_config`` into ``model.compile`` keyword arguments
(optimizer with a constant learning rate, loss, metrics), refusing what sparkdl's optimizers and losses would
compute differently.
"""
import warnings

import numpy as np

from .keras_files import _snake

_OPTIMIZERS = {"sgd": ("SGD", ("momentum", "nesterov")),
               "adam": ("Adam", ("beta_1", "beta_2", "epsilon", "amsgrad")),
               "adamw": ("AdamW", ("beta_1", "beta_2", "epsilon", "amsgrad", "weight_decay")),
               "rmsprop": ("RMSprop", ("rho", "momentum", "epsilon", "centered")),
               "adagrad": ("Adagrad", ("initial_accumulator_value", "epsilon"))}
_OPTIMIZER_IGNORED = {"name", "ema_momentum", "ema_overwrite_frequency", "jit_compile", "is_legacy_optimizer"}
_LOSSES = {"sparse_categorical_crossentropy": "sparse_categorical_crossentropy",
           "categorical_crossentropy": "categorical_crossentropy", "binary_crossentropy": "binary_crossentropy",
           "mse": "mse", "mean_squared_error": "mse", "mae": "mae", "mean_absolute_error": "mae", "huber": "huber",
           "huber_loss": "huber"}
_METRICS = {"accuracy": "accuracy", "acc": "accuracy", "sparse_categorical_accuracy": "accuracy",
            "categorical_accuracy": "accuracy", "binary_accuracy": "accuracy", "mse": "mse",
            "mean_squared_error": "mse", "mae": "mae", "mean_absolute_error": "mae"}


def _float(value):
    """A float32-stored hyperparameter as the decimal it was written as (0.0020000000949949026 -> 0.002)."""
    return float(str(np.float32(value))) if isinstance(value, float) else value


def _optimizer(spec, name):
    if isinstance(spec, str):
        spec = {"class_name": spec, "config": {}}
    if not isinstance(spec, dict):
        raise ValueError(f"{name}: unreadable Keras optimizer {spec!r}")
    cls = str(spec.get("class_name", "")).split(">")[-1]   # Keras 2 wrote "Custom>Adam"
    if cls.lower() not in _OPTIMIZERS:
        raise ValueError(f"{name}: Keras optimizer {cls!r} is not supported; sparkdl maps "
                         f"{sorted(v[0] for v in _OPTIMIZERS.values())}")
    target, names = _OPTIMIZERS[cls.lower()]
    config = dict(spec.get("config") or {})
    out = {"learning_rate": config.pop("learning_rate", config.pop("lr", 0.001))}
    if not isinstance(out["learning_rate"], (int, float)):
        raise ValueError(f"{name}: Keras optimizer {cls} has learning_rate={out['learning_rate']!r}; sparkdl imports "
                         f"a constant learning rate only")
    decay = config.pop("weight_decay", None)
    if decay and target == "Adam":   # Keras applies weight_decay decoupled: Adam with it is AdamW
        target = "AdamW"
    if decay and target != "AdamW":
        raise ValueError(f"{name}: Keras optimizer {cls} has weight_decay={decay!r} (decoupled, Keras style); "
                         f"sparkdl's {target} folds weight_decay into the gradient (L2), which is not the same")
    if target == "AdamW":
        out["weight_decay"] = decay or 0.0
    if config.get("clipnorm") is not None:
        out["clipnorm"] = config.pop("clipnorm")
    for key, value in config.items():
        if key in names:
            out[key] = value
        elif key not in _OPTIMIZER_IGNORED and value not in (None, False, 0, 0.0):
            raise ValueError(f"{name}: Keras optimizer {cls} option {key}={value!r} is not supported by sparkdl")
    return {"class_name": target, "config": {k: _float(v) for k, v in out.items()}}


def _loss(spec, name):
    if isinstance(spec, list) and len(spec) == 1:
        spec = spec[0]
    config = {}
    if isinstance(spec, dict):
        cls = spec.get("class_name")
        config = dict(spec.get("config") or {})
        key = _snake(str(cls))
    elif isinstance(spec, str):
        cls = key = spec
    else:
        raise ValueError(f"{name}: Keras loss {spec!r} is not supported; sparkdl maps one loss of "
                         f"{sorted(_LOSSES)}")
    if key not in _LOSSES:
        raise ValueError(f"{name}: Keras loss {cls!r} is not supported; sparkdl maps {sorted(_LOSSES)}")
    target = _LOSSES[key]
    out = {}
    for k, v in config.items():
        if k in ("from_logits", "delta") or (k == "label_smoothing" and target == "categorical_crossentropy"):
            out[k] = v
        elif k in ("name", "dtype") or (k, v) in (("reduction", "sum_over_batch_size"), ("reduction", "auto"),
                                                  ("label_smoothing", 0), ("label_smoothing", 0.0), ("axis", -1)):
            continue
        elif v is not None:
            raise ValueError(f"{name}: Keras loss {cls} option {k}={v!r} is not supported by sparkdl")
    if target in ("mse", "mae", "huber"):
        out.pop("from_logits", None)
    else:   # Keras's default: the outputs are probabilities (sparkdl's None would guess from the last layer)
        out["from_logits"] = bool(out.get("from_logits", False))
    return {"class_name": target, "config": out}


def _metrics(spec, name):
    if spec is None:
        return []
    if isinstance(spec, dict) and "class_name" not in spec:
        raise ValueError(f"{name}: Keras metrics per output {spec!r} are not supported; sparkdl has one output")
    items = spec if isinstance(spec, list) else [spec]
    if len(items) == 1 and isinstance(items[0], list):   # Keras 2: one list per output
        items = items[0]
    out = []
    for m in items:
        key = _snake(str(m.get("class_name"))) if isinstance(m, dict) else m
        if key not in _METRICS:
            raise ValueError(f"{name}: Keras metric {m!r} is not supported; sparkdl maps {sorted(_METRICS)}")
        if _METRICS[key] not in out:
            out.append(_METRICS[key])
    return out


def _compile_settings(config, name):
    """``model.compile`` kwargs from a .keras compile_config or a legacy training_config; None if absent."""
    if not config:
        return None
    optimizer = config.get("optimizer", config.get("optimizer_config"))
    loss = config.get("loss")
    if loss is None:
        warnings.warn(f"{name}: the Keras model was compiled without a loss; it is loaded uncompiled", stacklevel=3)
        return None
    if config.get("loss_weights") not in (None, [], {}, [1.0]):
        raise ValueError(f"{name}: Keras loss_weights={config['loss_weights']!r} are not supported by sparkdl")
    metrics = _metrics(config.get("metrics"), name) + _metrics(config.get("weighted_metrics"), name)
    return {"optimizer": _optimizer(optimizer or "rmsprop", name), "loss": _loss(loss, name),
            "metrics": list(dict.fromkeys(metrics))}
