"""Sequential: a stack of layers, each feeding the next."""
from .layer import as_shape, check_layer, layer_from_config, layer_to_config
from .model import Model, register_model


@register_model
class Sequential(Model):
    """``Sequential([Dense(128, activation="relu"), Dense(10, activation="softmax")], input_shape=(64,))``.

    The input shape excludes the batch dimension. Without one, call ``build(input_shape)`` before use.
    """

    def __init__(self, layers=(), input_shape=None, name=None, seed=None, dtype="float32", backend="numpy"):
        super().__init__(name=name, seed=seed, dtype=dtype, backend=backend)
        self.input_shape = None if input_shape is None else as_shape(input_shape)
        for layer in layers:
            self.add(layer)

    def add(self, layer):
        if self.built:
            raise RuntimeError("cannot add layers to a built model")
        self.layers.append(check_layer(layer, f"Sequential layer {len(self.layers)}"))

    def _build_layers(self, input_shape):
        if input_shape is not None:
            self.input_shape = as_shape(input_shape)
        if self.input_shape is None:
            raise ValueError("Sequential needs input_shape (without the batch dimension), e.g. "
                             "Sequential(layers, input_shape=(784,)) or model.build((784,))")
        if not self.layers:
            raise ValueError("Sequential needs at least one layer")
        shape = self.input_shape
        upstream_params = False
        for i, layer in enumerate(self.layers):
            try:
                shape = layer._build(shape)
            except ValueError as e:
                raise ValueError(f"layer {i} ({type(layer).__name__}) cannot take input shape "
                                 f"(None, {', '.join(map(str, shape))}): {e}") from None
            layer.need_input_grad = upstream_params
            upstream_params = upstream_params or bool(layer.param_specs)
        self.output_shape = shape

    def _output_layer(self):
        return self.layers[-1]

    def _forward(self, x, training):
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def _backward(self, grad):
        for layer in reversed(self.layers):
            if grad is None:
                break
            grad = layer.backward(grad)
        return grad

    def get_config(self):
        return {"name": self.name, "input_shape": None if self.input_shape is None else list(self.input_shape),
                "dtype": self.dtype.name, "layers": [layer_to_config(layer) for layer in self.layers]}

    @classmethod
    def from_config(cls, config, **kwargs):
        config = dict(config)
        layers = [layer_from_config(spec) for spec in config.pop("layers")]
        config.update(kwargs)
        return cls(layers, **config)
