"""The layer contract and the registry that turns configs back into layers.

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
        from .graph import connect
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
