"""Keras layer configs to sparkdl layers, for ``sparkdl.io.keras``: ``_Options`` reads a layer's config option by
option and refuses what sparkdl cannot reproduce (warning about training-only options), ``_activation`` maps
Keras's activation names onto sparkdl's, and ``_LAYERS`` maps each Keras class name to a converter that returns
the sparkdl layers for it and the sparkdl names of its Keras variables, in Keras's order.
"""
import re
import warnings
from .. import nn
from ..nn import Add, BatchNormalization, Concatenate, Conv2D, Dense, Dropout, ELU, Embedding, Flatten, GlobalAveragePooling2D, LayerNormalization, LeakyReLU, ReLU, Reshape, Softmax

# -- options ----------------------------------------------------------------------------------------------------

# keys with no effect on what sparkdl computes (initializers: the weights come from the file)
_IGNORED = {"name", "dtype", "batch_input_shape", "batch_shape", "input_shape", "seed", "implementation", "unroll",
            "use_cudnn", "input_length", "module", "registered_name", "unit_forget_bias"}
# keys that change training only: a warning when set
_TRAINING_ONLY = re.compile(r".*_(regularizer|constraint)$|^(dropout|recurrent_dropout|noise_shape)$")


class _Options:
    """A Keras layer's config, read option by option; ``done()`` refuses what was not read and is set."""

    def __init__(self, class_name, config):
        self.cls, self.config = class_name, dict(config)
        self.name = self.config.get("name")
        self.read = set()

    def get(self, key, default=None):
        self.read.add(key)
        return self.config.get(key, default)

    def error(self, key, value, why):
        return ValueError(f"Keras layer {self.name!r} ({self.cls}): {key}={value!r} is not supported; {why}")

    def require(self, key, allowed, default):
        value = self.get(key, default)
        norm = tuple(value) if isinstance(value, list) else value
        if norm not in allowed:
            raise self.error(key, value, f"sparkdl supports {' or '.join(map(repr, allowed))}")
        return value

    def done(self):
        if self.config.get("trainable") is False:
            warnings.warn(f"Keras layer {self.name!r} ({self.cls}) is frozen (trainable=False); sparkdl trains "
                          f"every layer", stacklevel=3)
        self.read.add("trainable")
        dtype = self.config.get("dtype")
        policy = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
        if self.cls != "InputLayer" and policy not in (None, "float32"):
            raise self.error("dtype", policy, "sparkdl imports float32 models")
        for key, value in self.config.items():
            if key in self.read or key in _IGNORED or key.endswith("_initializer"):
                continue
            if _TRAINING_ONLY.match(key):
                if value not in (None, 0, 0.0):
                    warnings.warn(f"Keras layer {self.name!r} ({self.cls}): {key}={value!r} changes training "
                                  f"only and is not imported", stacklevel=3)
                continue
            if value is not None and value is not False:
                raise self.error(key, value, "sparkdl has no such option")


_SAME_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax", "elu")
# Keras name -> sparkdl name, where they differ in name only: Keras's gelu is the exact (erf) GELU (keras.activations
# .gelu's approximate=False, which a saved config cannot change), sparkdl's "gelu" the tanh approximation
_RENAMED_ACTIVATIONS = {"gelu": "gelu_exact"}


def _activation(opts, key="activation"):
    """(the sparkdl activation name for the layer itself, an activation layer to follow it or None)."""
    value = opts.get(key, "linear")
    if isinstance(value, dict) and isinstance(value.get("config"), str):   # {"class_name": "function", ...}
        value = value["config"]
    if value is None or value in _SAME_ACTIVATIONS:
        return value or "linear", None
    if isinstance(value, str) and value in _RENAMED_ACTIVATIONS:
        return _RENAMED_ACTIVATIONS[value], None
    if value == "leaky_relu":   # keras.activations.leaky_relu's slope
        return "linear", nn.LeakyReLU(negative_slope=0.2)
    raise opts.error(key, value, f"sparkdl imports the Keras activations "
                                 f"{sorted(_SAME_ACTIVATIONS + tuple(_RENAMED_ACTIVATIONS) + ('leaky_relu',))}")


# -- layers: Keras config -> (sparkdl layers, sparkdl names of the Keras variables in order) ----------------------

def _dense(o):
    act, after = _activation(o)
    use_bias = o.require("use_bias", (True, False), True)
    layer = Dense(o.get("units"), activation=act, use_bias=use_bias, name=o.name)
    return [layer, after], ["kernel"] + (["bias"] if use_bias else [])


def _conv2d(o):
    o.require("dilation_rate", ((1, 1), 1), (1, 1))
    o.require("groups", (1,), 1)
    act, after = _activation(o)
    use_bias = o.require("use_bias", (True, False), True)
    layer = Conv2D(o.get("filters"), o.get("kernel_size"), strides=o.get("strides", (1, 1)),
                   padding=o.require("padding", ("valid", "same"), "valid"), activation=act, use_bias=use_bias,
                   data_format=o.get("data_format") or "channels_last", name=o.name)
    return [layer, after], ["kernel"] + (["bias"] if use_bias else [])


def _pool(cls_name):
    def convert(o):
        layer = getattr(nn, cls_name)(o.get("pool_size", (2, 2)), strides=o.get("strides"),
                                      padding=o.require("padding", ("valid", "same"), "valid"),
                                      data_format=o.get("data_format") or "channels_last", name=o.name)
        return [layer], []
    return convert


def _global_avg(o):
    return [GlobalAveragePooling2D(data_format=o.get("data_format") or "channels_last",
                                   keepdims=bool(o.get("keepdims", False)), name=o.name)], []


def _flatten(o):
    o.require("data_format", ("channels_last", None), "channels_last")
    return [Flatten(name=o.name)], []


def _reshape(o):
    return [Reshape(o.get("target_shape"), name=o.name)], []


def _dropout(o):
    return [Dropout(o.get("rate"), name=o.name)], []


def _batch_norm(o):
    axis = o.get("axis", -1)
    if isinstance(axis, list):
        if len(axis) != 1:
            raise o.error("axis", axis, "sparkdl normalizes over one channel axis")
        axis = axis[0]
    for key in ("renorm", "synchronized", "fused"):
        o.require(key, (False, None), False)
    o.require("virtual_batch_size", (None,), None)
    o.require("adjustment", (None,), None)
    o.get("renorm_momentum"), o.get("renorm_clipping")   # used only with renorm
    center, scale = bool(o.get("center", True)), bool(o.get("scale", True))
    layer = BatchNormalization(axis=axis, momentum=o.get("momentum", 0.99), epsilon=o.get("epsilon", 1e-3),
                               center=center, scale=scale, name=o.name)
    return [layer], ["gamma"] * scale + ["beta"] * center + ["moving_mean", "moving_variance"]


def _layer_norm(o):
    o.require("rms_scaling", (False,), False)
    center, scale = bool(o.get("center", True)), bool(o.get("scale", True))
    axis = o.get("axis", -1)
    layer = LayerNormalization(axis=axis[0] if isinstance(axis, list) and len(axis) == 1 else axis,
                               epsilon=o.get("epsilon", 1e-3), center=center, scale=scale, name=o.name)
    return [layer], ["gamma"] * scale + ["beta"] * center


def _embedding(o):
    o.require("mask_zero", (False,), False)
    return [Embedding(o.get("input_dim"), o.get("output_dim"), name=o.name)], ["embeddings"]


def _recurrent(cls_name):
    def convert(o):
        for key in ("return_state", "stateful", "time_major"):
            o.require(key, (False,), False)
        kwargs = {}
        act, after = _activation(o)
        if after is not None:
            raise o.error("activation", o.get("activation"), "sparkdl's recurrent layers take linear, relu, "
                                                             "sigmoid, tanh, softmax, elu or gelu")
        if cls_name != "SimpleRNN":
            ract, after = _activation(o, "recurrent_activation")
            if after is not None:
                raise o.error("recurrent_activation", o.get("recurrent_activation"), "as for activation")
            kwargs["recurrent_activation"] = ract
        if cls_name == "GRU":
            kwargs["reset_after"] = o.require("reset_after", (True, False), True)
        use_bias = o.require("use_bias", (True, False), True)
        layer = getattr(nn, cls_name)(o.get("units"), activation=act, use_bias=use_bias,
                                      return_sequences=o.require("return_sequences", (True, False), False),
                                      go_backwards=o.require("go_backwards", (True, False), False), name=o.name,
                                      **kwargs)
        return [layer], ["kernel", "recurrent_kernel"] + (["bias"] if use_bias else [])
    return convert


def _activation_layer(o):
    act, after = _activation(o)
    if after is None:
        return [nn.Activation(act, name=o.name)], []
    after.name = o.name
    return [after], []


def _relu(o):
    o.require("max_value", (None,), None)
    o.require("negative_slope", (0, 0.0), 0.0)
    o.require("threshold", (0, 0.0), 0.0)
    return [ReLU(name=o.name)], []


def _leaky_relu(o):
    slope = o.get("negative_slope", o.get("alpha", 0.3))   # Keras 2 called it alpha
    return [LeakyReLU(negative_slope=slope, name=o.name)], []


def _elu(o):
    return [ELU(alpha=o.get("alpha", 1.0), name=o.name)], []


def _softmax(o):
    o.require("axis", (-1, (-1,)), -1)
    return [Softmax(name=o.name)], []


def _add(o):
    return [Add(name=o.name)], []


def _concatenate(o):
    return [Concatenate(axis=o.get("axis", -1), name=o.name)], []


_LAYERS = {"Dense": _dense, "Conv2D": _conv2d, "MaxPooling2D": _pool("MaxPooling2D"),
           "AveragePooling2D": _pool("AveragePooling2D"), "GlobalAveragePooling2D": _global_avg,
           "Flatten": _flatten, "Reshape": _reshape, "Dropout": _dropout, "BatchNormalization": _batch_norm,
           "LayerNormalization": _layer_norm, "Embedding": _embedding, "SimpleRNN": _recurrent("SimpleRNN"),
           "LSTM": _recurrent("LSTM"), "GRU": _recurrent("GRU"), "Activation": _activation_layer, "ReLU": _relu,
           "LeakyReLU": _leaky_relu, "ELU": _elu, "Softmax": _softmax, "Add": _add, "Concatenate": _concatenate}
_MERGE = ("Add", "Concatenate")
