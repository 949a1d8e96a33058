"""Keras model import: ``load_keras(path)`` reads a Keras 3 ``.keras`` file (a zip of ``config.json`` and
``model.weights.h5``) or a legacy HDF5 ``.h5`` file (``model.save("x.h5")``, Keras 2 or 3) into a sparkdl
Sequential or GraphModel, with its weights and, where the file has them, its compile settings. It reads the
file with json, zipfile and h5py only; Keras itself is never imported.

Each Keras layer becomes one sparkdl layer, followed by an activation layer where Keras's activation of that name
differs from sparkdl's (``leaky_relu``: slope 0.2 in Keras's function, 0.3 in sparkdl's default). Keras's
``gelu`` is the exact (erf) GELU: sparkdl's ``"gelu_exact"`` (its ``"gelu"`` is the tanh approximation). A layer class,
option or value sparkdl cannot reproduce exactly raises a ValueError that names the Keras layer, its class and
the option: never a silently different model. Options that change training only (regularizers, constraints,
recurrent dropout, frozen layers) are warned about, as the imported model predicts the same without them.

Weights: a ``.keras`` file stores each layer's variables as ``layers/<key>/vars/<i>`` (a recurrent layer's under
``cell/vars``), where ``<key>`` is NOT the layer's name but its class name in snake case, numbered per class in
the order of ``model.layers`` (``dense``, ``dense_1``, ...). A legacy file stores them under
``model_weights/<layer name>/`` at the paths its ``weight_names`` attribute lists, in the layer's order. Both
orders are Keras's variable order, which ``_LAYERS`` below maps onto sparkdl's weight names; Keras and sparkdl
share the layouts (Dense kernel (in, units), Conv2D kernel (kh, kw, in, filters), LSTM gates i, f, c, o and GRU
gates z, r, h side by side, GRU ``reset_after`` bias (2, 3 units)), so no array is transposed or reordered.
"""
import io as _io
import json
import os
import re
import warnings
import zipfile

import numpy as np

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# -- recognising a Keras file ---------------------------------------------------------------------------------


def keras_format(path):
    """"keras" (a zip holding config.json), "h5" (an HDF5 file) or None, from the file's first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except (OSError, TypeError):
        return None
    if head == HDF5_SIGNATURE:
        return "h5"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                return "keras" if "config.json" in z.namelist() else None
        except (zipfile.BadZipFile, OSError, ValueError):
            return None
    return None


def _text(value):
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _json(data, what, name):
    try:
        return json.loads(_text(data))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{name}: {what} is not valid JSON ({e})") from None


def _attr_list(group, key):
    """An HDF5 string-list attribute; Keras splits long ones into key0, key1, ..."""
    if key in group.attrs:
        return [_text(v) for v in group.attrs[key]]
    out, k = [], 0
    while f"{key}{k}" in group.attrs:
        out += [_text(v) for v in group.attrs[f"{key}{k}"]]
        k += 1
    return out


# -- weight stores --------------------------------------------------------------------------------------------


class _Keras3Weights:
    """``layers/<class in snake case, numbered per class>/vars/<i>`` of a .keras file's model.weights.h5."""

    def __init__(self, h5):
        self.root = h5["layers"] if "layers" in h5 else {}
        self.used = {}

    def take(self, class_name, layer_name):
        key = _snake(class_name)
        if key in self.used:
            self.used[key] += 1
            key = f"{key}_{self.used[key]}"
        else:
            self.used[key] = 0
        return [(None, a) for a in _vars(self.root[key])] if key in self.root else []


def _vars(group):
    """The group's vars/0, vars/1, ... then its sub-objects' (a recurrent layer's ``cell``)."""
    out = []
    if "vars" in group:
        out += [group["vars"][k][()] for k in sorted(group["vars"], key=int)]
    for k in sorted(group):
        if k != "vars" and hasattr(group[k], "keys"):
            out += _vars(group[k])
    return out


class _LegacyWeights:
    """``model_weights/<layer name>/<weight_names ...>`` of a legacy HDF5 file."""

    def __init__(self, group):
        self.root = group

    def take(self, class_name, layer_name):
        if layer_name not in self.root:
            return []
        group = self.root[layer_name]
        return [(path.split("/")[-1].split(":")[0], group[path][()]) for path in _attr_list(group, "weight_names")]


def _snake(name):
    """Keras's naming.to_snake_case: Conv2D -> conv2d, SimpleRNN -> simple_rnn, LeakyReLU -> leaky_re_lu."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


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
    from .. import nn
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
    from ..nn import Dense
    layer = Dense(o.get("units"), activation=act, use_bias=use_bias, name=o.name)
    return [layer, after], ["kernel"] + (["bias"] if use_bias else [])


def _conv2d(o):
    from ..nn import Conv2D
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
        from .. import nn
        layer = getattr(nn, cls_name)(o.get("pool_size", (2, 2)), strides=o.get("strides"),
                                      padding=o.require("padding", ("valid", "same"), "valid"),
                                      data_format=o.get("data_format") or "channels_last", name=o.name)
        return [layer], []
    return convert


def _global_avg(o):
    from ..nn import GlobalAveragePooling2D
    return [GlobalAveragePooling2D(data_format=o.get("data_format") or "channels_last",
                                   keepdims=bool(o.get("keepdims", False)), name=o.name)], []


def _flatten(o):
    from ..nn import Flatten
    o.require("data_format", ("channels_last", None), "channels_last")
    return [Flatten(name=o.name)], []


def _reshape(o):
    from ..nn import Reshape
    return [Reshape(o.get("target_shape"), name=o.name)], []


def _dropout(o):
    from ..nn import Dropout
    return [Dropout(o.get("rate"), name=o.name)], []


def _batch_norm(o):
    from ..nn import BatchNormalization
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
    from ..nn import LayerNormalization
    o.require("rms_scaling", (False,), False)
    center, scale = bool(o.get("center", True)), bool(o.get("scale", True))
    axis = o.get("axis", -1)
    layer = LayerNormalization(axis=axis[0] if isinstance(axis, list) and len(axis) == 1 else axis,
                               epsilon=o.get("epsilon", 1e-3), center=center, scale=scale, name=o.name)
    return [layer], ["gamma"] * scale + ["beta"] * center


def _embedding(o):
    from ..nn import Embedding
    o.require("mask_zero", (False,), False)
    return [Embedding(o.get("input_dim"), o.get("output_dim"), name=o.name)], ["embeddings"]


def _recurrent(cls_name):
    def convert(o):
        from .. import nn
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
    from .. import nn
    act, after = _activation(o)
    if after is None:
        return [nn.Activation(act, name=o.name)], []
    after.name = o.name
    return [after], []


def _relu(o):
    from ..nn import ReLU
    o.require("max_value", (None,), None)
    o.require("negative_slope", (0, 0.0), 0.0)
    o.require("threshold", (0, 0.0), 0.0)
    return [ReLU(name=o.name)], []


def _leaky_relu(o):
    from ..nn import LeakyReLU
    slope = o.get("negative_slope", o.get("alpha", 0.3))   # Keras 2 called it alpha
    return [LeakyReLU(negative_slope=slope, name=o.name)], []


def _elu(o):
    from ..nn import ELU
    return [ELU(alpha=o.get("alpha", 1.0), name=o.name)], []


def _softmax(o):
    from ..nn import Softmax
    o.require("axis", (-1, (-1,)), -1)
    return [Softmax(name=o.name)], []


def _add(o):
    from ..nn import Add
    return [Add(name=o.name)], []


def _concatenate(o):
    from ..nn import Concatenate
    return [Concatenate(axis=o.get("axis", -1), name=o.name)], []


_LAYERS = {"Dense": _dense, "Conv2D": _conv2d, "MaxPooling2D": _pool("MaxPooling2D"),
           "AveragePooling2D": _pool("AveragePooling2D"), "GlobalAveragePooling2D": _global_avg,
           "Flatten": _flatten, "Reshape": _reshape, "Dropout": _dropout, "BatchNormalization": _batch_norm,
           "LayerNormalization": _layer_norm, "Embedding": _embedding, "SimpleRNN": _recurrent("SimpleRNN"),
           "LSTM": _recurrent("LSTM"), "GRU": _recurrent("GRU"), "Activation": _activation_layer, "ReLU": _relu,
           "LeakyReLU": _leaky_relu, "ELU": _elu, "Softmax": _softmax, "Add": _add, "Concatenate": _concatenate}
_MERGE = ("Add", "Concatenate")


class _Converter:
    """Turns Keras layer specs into sparkdl layers, collecting their weights as ``{"layer.weight": array}``."""

    def __init__(self, weights, keras_names):
        self.weights = weights
        self.values = {}
        self.names = set(keras_names)

    def layer(self, spec):
        cls, config = spec.get("class_name"), spec.get("config") or {}
        name = config.get("name", spec.get("name"))
        if cls in ("Sequential", "Functional", "Model"):
            raise ValueError(f"Keras layer {name!r} ({cls}) is a nested model; sparkdl imports flat models only")
        if cls not in _LAYERS:
            raise ValueError(f"Keras layer {name!r} ({cls}) has no sparkdl counterpart; sparkdl imports "
                             f"{', '.join(sorted(_LAYERS))} and InputLayer")
        opts = _Options(cls, config)
        try:
            layers, var_names = _LAYERS[cls](opts)
        except (ValueError, TypeError) as e:
            if str(e).startswith("Keras layer"):
                raise
            raise ValueError(f"Keras layer {name!r} ({cls}): {e}") from None
        opts.done()
        layers = [layer for layer in layers if layer is not None]
        for extra in layers[1:]:
            k, base = 0, f"{name}_activation"
            while (extra_name := base if k == 0 else f"{base}_{k}") in self.names:
                k += 1
            extra.name = extra_name
            self.names.add(extra_name)
        stored = self.weights.take(cls, name)
        if len(stored) != len(var_names):
            raise ValueError(f"Keras layer {name!r} ({cls}): the file holds {len(stored)} weights for it; its config "
                             f"needs {len(var_names)} ({', '.join(var_names) or 'none'})")
        for (stored_name, array), var in zip(stored, var_names):
            if stored_name is not None and stored_name != var:
                raise ValueError(f"Keras layer {name!r} ({cls}): expected the weight {var!r} here, the file "
                                 f"has {stored_name!r}")
            self.values[f"{layers[0].name}.{var}"] = np.asarray(array, np.float32)
        return layers


def _fixed_shape(batch_shape, where):
    if not isinstance(batch_shape, (list, tuple)) or len(batch_shape) < 2:
        raise ValueError(f"{where}: the input shape must be (batch, ...) with at least one more dimension. "
                         f"Received: {batch_shape!r}")
    shape = tuple(batch_shape[1:])
    if any(d is None for d in shape):
        raise ValueError(f"{where}: input shape {tuple(batch_shape)} has a variable dimension (None) besides the "
                         f"batch; sparkdl models have fixed input shapes")
    return shape


def _input_layer(spec):
    opts = _Options("InputLayer", spec.get("config") or {})
    shape = opts.get("batch_shape", opts.get("batch_input_shape"))
    opts.done()
    return _fixed_shape(shape, f"Keras InputLayer {opts.name!r}")


def _sequential(config, conv, backend):
    from ..nn import Sequential
    if isinstance(config, list):  # Keras 1's Sequential config was the layer list
        config = {"layers": config}
    layers, shape = [], None
    for spec in config.get("layers") or []:
        if spec.get("class_name") == "InputLayer":
            shape = _input_layer(spec)
            continue
        c = spec.get("config") or {}
        first = c.get("batch_shape", c.get("batch_input_shape"))
        if shape is None and not layers and first is not None:
            shape = _fixed_shape(first, f"Keras layer {c.get('name')!r}")
        layers += conv.layer(spec)
    if shape is None and config.get("build_input_shape") is not None:
        shape = _fixed_shape(config["build_input_shape"], "the Keras Sequential's build_input_shape")
    if shape is None:
        raise ValueError("the Keras Sequential model has no input shape (no InputLayer, batch_input_shape or "
                         "build_input_shape): it was never built")
    return Sequential(layers, input_shape=shape, name=config.get("name"), backend=backend).build()


def _history(entry, layer):
    """The source layer name of one inbound tensor (Keras 3 tensor dict or Keras 2 [name, node, index, kwargs])."""
    if isinstance(entry, dict):
        entry = (entry.get("config") or {}).get("keras_history")
        kwargs = None
    else:
        kwargs = entry[3] if len(entry) > 3 else None
    if not isinstance(entry, (list, tuple)) or len(entry) < 3:
        raise ValueError(f"Keras layer {layer!r}: unreadable inbound tensor {entry!r}")
    if entry[1] != 0 or entry[2] != 0:
        raise ValueError(f"Keras layer {layer!r} takes output {entry[2]} of call {entry[1]} of layer {entry[0]!r}; "
                         f"sparkdl layers are called once and have one output (no shared layers)")
    if kwargs:
        raise ValueError(f"Keras layer {layer!r} is called with {kwargs!r}; sparkdl takes no call arguments")
    return entry[0]


def _inbound(node, layer, cls):
    """(names of the layers feeding ``layer``, whether it is called on a list)."""
    if isinstance(node, dict):   # Keras 3: {"args": [tensor or [tensors]], "kwargs": {...}}
        args, kwargs = node.get("args") or [], node.get("kwargs") or {}
        extra = {k: v for k, v in kwargs.items() if v is not None}
        if len(args) != 1 or extra:
            raise ValueError(f"Keras layer {layer!r} ({cls}) is called with {len(args)} positional arguments and "
                             f"keyword arguments {extra}; sparkdl layers take one tensor or one list of tensors")
        is_list = isinstance(args[0], list)
        return [_history(t, layer) for t in (args[0] if is_list else [args[0]])], is_list
    return [_history(t, layer) for t in node], cls in _MERGE   # Keras 2: [[name, node, index, kwargs], ...]


def _refs(value, what):
    """Layer names from input_layers / output_layers: [name, 0, 0] or [[name, 0, 0], ...]."""
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, list) and v and isinstance(v[0], str) for v in value):
        raise ValueError(f"the Keras model's {what} must be a list of [layer name, node, index]. Received: {value!r}")
    return [v[0] for v in value]


def _functional(config, conv, backend):
    from ..nn import GraphModel, Input
    tensors = {}
    for spec in config.get("layers") or []:
        cls, c = spec.get("class_name"), spec.get("config") or {}
        name = spec.get("name", c.get("name"))
        if cls == "InputLayer":
            tensors[name] = Input(_input_layer(spec), name=name)
            continue
        nodes = spec.get("inbound_nodes") or []
        if len(nodes) != 1:
            raise ValueError(f"Keras layer {name!r} ({cls}) is called {len(nodes)} times; sparkdl layers are called "
                             f"exactly once (no shared layers)")
        sources, is_list = _inbound(nodes[0], name, cls)
        layers = conv.layer(spec)
        missing = [s for s in sources if s not in tensors]
        if missing:
            raise ValueError(f"Keras layer {name!r} ({cls}) is fed by {missing}, which the config does not define "
                             f"before it")
        args = [tensors[s] for s in sources]
        out = layers[0](args if is_list else args[0])
        for extra in layers[1:]:
            out = extra(out)
        tensors[name] = out
    inputs, outputs = _refs(config.get("input_layers"), "input_layers"), _refs(config.get("output_layers"),
                                                                                "output_layers")
    if len(outputs) != 1:
        raise ValueError(f"the Keras model has {len(outputs)} outputs {outputs}; sparkdl models have one")
    return GraphModel([tensors[n] for n in inputs], tensors[outputs[0]], name=config.get("name"), backend=backend)


# -- compile settings ---------------------------------------------------------------------------------------------

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
        if k in ("from_logits", "delta"):
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


# -- entry point --------------------------------------------------------------------------------------------------

def _build(spec, compile_config, weights, name, backend):
    cls = spec.get("class_name") if isinstance(spec, dict) else None
    config = spec.get("config") if isinstance(spec, dict) else None
    if cls not in ("Sequential", "Functional", "Model") or not isinstance(config, (dict, list)):
        raise ValueError(f"{name}: the Keras model is a {cls!r}; sparkdl imports Sequential and functional "
                         f"(Functional / Model) models, not subclassed ones")
    layer_specs = config if isinstance(config, list) else config.get("layers") or []
    conv = _Converter(weights, [(s.get("config") or {}).get("name", s.get("name")) for s in layer_specs])
    model = (_sequential if cls == "Sequential" else _functional)(config, conv, backend)
    try:
        model.set_weights(conv.values)
    except ValueError as e:
        raise ValueError(f"{name}: the Keras weights do not fit the converted model: {e}") from None
    settings = _compile_settings(compile_config, name)
    if settings is not None:
        try:
            model.compile(**settings)
        except ValueError as e:
            raise ValueError(f"{name}: the Keras compile settings {settings} do not apply: {e}") from None
    return model


def load_keras(path, backend="numpy"):
    """A sparkdl model (Sequential or GraphModel, float32) from a Keras ``.keras`` or legacy ``.h5`` file, with its
    weights, BatchNormalization's moving statistics and, where the file has them, its compile settings
    (optimizer and learning rate, loss, metrics; no optimizer state)."""
    try:
        import h5py
    except ImportError:
        raise ImportError("reading Keras files needs h5py: pip install h5py (or sparkdl[keras])") from None
    name = repr(os.fspath(path))
    kind = keras_format(path)
    if kind is None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such Keras file: {name}")
        raise ValueError(f"{name} is not a Keras model file: expected a .keras zip holding config.json or an "
                         f"HDF5 .h5 file")
    try:
        if kind == "keras":
            with zipfile.ZipFile(path) as z:
                config = _json(z.read("config.json"), "config.json", name)
                if "model.weights.h5" not in z.namelist():
                    raise ValueError(f"{name}: the .keras zip has no model.weights.h5; found {z.namelist()}")
                data = z.read("model.weights.h5")
            with h5py.File(_io.BytesIO(data), "r") as h5:
                return _build(config, config.get("compile_config"), _Keras3Weights(h5), name, backend)
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                raise ValueError(f"{name} is an HDF5 file without a model_config attribute: not a Keras model file "
                                 f"(a save_weights file holds no architecture)")
            config = _json(f.attrs["model_config"], "model_config", name)
            training = _json(f.attrs["training_config"], "training_config", name) \
                if "training_config" in f.attrs else None
            group = f["model_weights"] if "model_weights" in f else f
            return _build(config, training, _LegacyWeights(group), name, backend)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"{name} is not a readable Keras file ({type(e).__name__}: {e})") from None
