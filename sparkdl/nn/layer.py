"""The layer contract, the registry that turns configs back into layers, and calling a layer on symbolic tensors
(``Input``), which is how sparkdl.nn.graph wires a model.

A layer declares its weights in ``build`` (``add_param`` / ``add_state``); the model then lays every weight of
every layer out in one flat buffer and hands each layer views into it (``self.params[name]``,
``self.grads[name]``, ``self.state[name]``). ``forward`` caches what ``backward`` needs; ``backward`` writes the
parameter gradients into the gradient views (overwriting them) and returns the gradient of its input.
"""
import numpy as np

from ..registry import Registry

_REGISTRY = Registry("layer class_name")


def register(cls):
    """Class decorator: make a layer constructible from ``{"class_name": ..., "config": ...}``."""
    return _REGISTRY.register(cls)


def registered():
    """{class name: class} of every registered layer."""
    return dict(_REGISTRY)


def layer_from_config(spec):
    if not isinstance(spec, dict) or "class_name" not in spec:
        raise ValueError(f"a layer config must be a dict with 'class_name' and 'config'. Received: {spec!r}")
    return _REGISTRY.lookup(spec["class_name"]).from_config(dict(spec.get("config", {})))


def layer_to_config(layer):
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def as_shape(shape, what="input_shape"):
    """A tuple of positive ints (the batch dimension excluded)."""
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        out = tuple(int(d) for d in shape)
    except TypeError:
        raise ValueError(f"{what} must be a tuple of positive ints. Received: {what}={shape!r}") from None
    if any(d <= 0 for d in out) or len(out) != len(tuple(shape)):
        raise ValueError(f"{what} must be a tuple of positive ints. Received: {what}={shape!r}")
    return out


class Layer:
    """Base class. Subclasses store their arguments in ``__init__`` and override build/forward/backward."""

    @classmethod
    def examples(cls):
        """[(make, input_shape, options)]: layers (``make()``) that sparkdl.testing.check_layer checks on inputs of
        ``input_shape`` with ``options`` (its keyword arguments); every registered layer declares some."""
        return []

    def __init__(self, name=None):
        self.name = name
        self.built = False
        self.input_shape = None
        self.output_shape = None
        self.param_specs = []   # (name, shape, initializer) in declaration order
        self.state_specs = []
        self.params, self.grads, self.state = {}, {}, {}
        self.xp = np
        self.dtype = np.float32
        self.rng = None              # a backend random generator, set by the model (Dropout uses it)
        self.need_input_grad = True  # the model clears this where nothing upstream needs the input gradient

    # -- declaring weights -------------------------------------------------------------------------------
    def add_param(self, name, shape, initializer):
        self.param_specs.append((name, tuple(int(d) for d in shape), initializer))

    def add_state(self, name, shape, initializer):
        self.state_specs.append((name, tuple(int(d) for d in shape), initializer))

    # -- the contract -----------------------------------------------------------------------------------
    def build(self, input_shape):
        """Declare weights for ``input_shape`` (no batch dimension); return the output shape."""
        return input_shape

    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __call__(self, inputs):
        """Functional API: calling a layer on a symbolic tensor (or a list of them) records a graph node."""
        return connect(self, inputs)

    # -- helpers ----------------------------------------------------------------------------------------
    def sublayers(self):
        """Layers this one holds (an activation, the cells of a wrapper); they share its placement."""
        return []

    def place(self, xp, dtype, rng):
        """Set the array module, float dtype and random generator, here and in the sublayers."""
        self.xp, self.dtype, self.rng = xp, dtype, rng
        for sub in self.sublayers():
            sub.place(xp, dtype, rng)

    def _build(self, input_shape):
        """Called by models: build once, remember the shapes."""
        if self.built:
            raise ValueError(f"layer {self.name!r} is already part of a model; create a new layer instead")
        self.input_shape = input_shape
        self.output_shape = tuple(self.build(input_shape))
        self.built = True
        return self.output_shape

    def count_params(self):
        return sum(int(np.prod(s)) for _, s, _ in self.param_specs)

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


def check_layer(layer, where):
    if not isinstance(layer, Layer):
        raise TypeError(f"{where} must be a sparkdl layer; received {type(layer).__name__}: {layer!r}")
    return layer


# -- calling a layer on symbolic tensors (the functional API of sparkdl.nn.graph) ----------------------------
def shape_str(shape):
    return "(None, " + ", ".join(map(str, shape)) + ")"


class Tensor:
    """A symbolic tensor: an Input (``layer`` None) or the output of ``layer`` called on ``inbound``."""

    def __init__(self, shape, layer=None, inbound=(), is_list=False, name=None):
        self.shape = tuple(shape)     # without the batch dimension
        self.layer = layer
        self.inbound = tuple(inbound)
        self.is_list = is_list        # the layer was called on a list (Add, Concatenate)
        self._input_name = name
        self.model = None             # the GraphModel that owns this node's layer

    @property
    def name(self):
        return self._input_name if self.layer is None else self.layer.name

    def __repr__(self):
        kind = "Input" if self.layer is None else type(self.layer).__name__
        return f"<Tensor {kind} name={self.name!r} shape={shape_str(self.shape)}>"


def Input(shape, name=None):
    """A model input of ``shape`` (without the batch dimension)."""
    if name is not None and not isinstance(name, str):
        raise ValueError(f"Input name must be a str or None. Received: name={name!r}")
    return Tensor(as_shape(shape, "shape"), name=name)


def connect(layer, inputs):
    """Call ``layer`` on a symbolic tensor or a list of them: build it and return its output tensor.

    ``Layer.__call__`` delegates here."""
    is_list = isinstance(inputs, (list, tuple))
    tensors = list(inputs) if is_list else [inputs]
    if not tensors or not all(isinstance(t, Tensor) for t in tensors):
        raise TypeError(f"a layer is called on a symbolic tensor from Input(...) or on a list of them (run "
                        f"layers on arrays through a model). Received: {inputs!r}")
    if layer.built:
        raise ValueError(f"layer {layer.name or type(layer).__name__!r} was already called or belongs to a model; "
                         f"a layer can be called only once (shared layers are not supported): create a new layer")
    shape = [t.shape for t in tensors] if is_list else tensors[0].shape
    try:
        out_shape = layer._build(shape)
    except ValueError as e:
        shapes = ", ".join(shape_str(t.shape) for t in tensors)
        raise ValueError(f"{type(layer).__name__} (name={layer.name!r}) cannot take input shape "
                         f"{'[' + shapes + ']' if is_list else shapes}: {e}") from None
    return Tensor(out_shape, layer, tensors, is_list)


def topological(output):
    """Nodes the output depends on, each after its inbound tensors (depth-first, inbound order), no recursion."""
    order, done, stack = [], set(), [(output, False)]
    while stack:
        t, expanded = stack.pop()
        if id(t) in done:
            continue
        if expanded:
            done.add(id(t))
            order.append(t)
            continue
        stack.append((t, True))
        stack.extend((u, False) for u in reversed(t.inbound) if id(u) not in done)
    return order
