"""Building the sparkdl model from a Keras model config, for ``sparkdl.io.keras``: ``_Converter`` turns each
Keras layer spec into sparkdl layers (via ``keras_layers._LAYERS``) and collects its weights from a weight store,
``_sequential`` builds a Sequential from a Keras Sequential config, and ``_functional`` wires a GraphModel from a
functional config's inbound nodes, refusing shared layers, call arguments and several outputs.
"""
import numpy as np

from .keras_layers import _LAYERS, _MERGE, _Options
from ..nn import GraphModel, Input, Sequential


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
