"""Activation layers (no weights). Dense, Conv2D and the recurrent layers hold one of these for ``activation=``.

When a model ends in softmax (sigmoid) and is compiled with a categorical (binary) cross-entropy, the loss is
computed from the logits this layer cached, and its ``backward`` passes the loss gradient through unchanged
(``fused_with_loss``): the exact, numerically stable gradient ``p - y`` instead of differentiating a clipped log.
"""
import math

from .layer import Layer, register

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


class _Elementwise(Layer):
    """y = f(x), dy/dx evaluated elementwise from the cached input or output."""

    def __init__(self, name=None):
        super().__init__(name=name)
        self.fused_with_loss = False
        self.logits = None
        self._cache = None

    @property
    def output_activation(self):
        return self

    def forward(self, x, training=False):
        y = self.f(x)
        self.logits = x if self.fused_with_loss else None
        self._cache = (x, y)
        return y

    def backward(self, grad):
        if self.fused_with_loss:
            return grad
        x, y = self._cache
        return self.df(x, y, grad)


@register
class Linear(_Elementwise):
    def f(self, x):
        return x

    def df(self, x, y, g):
        return g


@register
class ReLU(_Elementwise):
    def f(self, x):
        return self.xp.maximum(x, 0)

    def df(self, x, y, g):
        return g * (x > 0)


@register
class LeakyReLU(_Elementwise):
    def __init__(self, negative_slope=0.3, name=None):
        super().__init__(name=name)
        if not negative_slope >= 0:
            raise ValueError(f"negative_slope must be >= 0. Received: negative_slope={negative_slope}")
        self.negative_slope = float(negative_slope)

    def f(self, x):
        return self.xp.where(x > 0, x, x * self.negative_slope)

    def df(self, x, y, g):
        return self.xp.where(x > 0, g, g * self.negative_slope)

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


@register
class ELU(_Elementwise):
    def __init__(self, alpha=1.0, name=None):
        super().__init__(name=name)
        self.alpha = float(alpha)

    def f(self, x):
        xp = self.xp
        return xp.where(x > 0, x, self.alpha * xp.expm1(xp.minimum(x, 0)))

    def df(self, x, y, g):
        return self.xp.where(x > 0, g, g * (y + self.alpha))

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


@register
class GELU(_Elementwise):
    """GELU, tanh approximation (PyTorch's ``approximate='tanh'``): 0.5 x (1 + tanh(c (x + 0.044715 x^3)))."""

    def f(self, x):
        return 0.5 * x * (1.0 + self.xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)))

    def df(self, x, y, g):
        t = self.xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x ** 3))
        dt = (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
        return g * (0.5 * (1.0 + t) + 0.5 * x * dt)


@register
class Sigmoid(_Elementwise):
    def f(self, x):
        xp = self.xp
        e = xp.exp(-xp.abs(x))  # stable for large |x|
        return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    def df(self, x, y, g):
        return g * y * (1.0 - y)


@register
class Tanh(_Elementwise):
    def f(self, x):
        return self.xp.tanh(x)

    def df(self, x, y, g):
        return g * (1.0 - y * y)


@register
class Softmax(_Elementwise):
    """Softmax over the last axis."""

    def f(self, x):
        xp = self.xp
        e = xp.exp(x - x.max(axis=-1, keepdims=True))
        e /= e.sum(axis=-1, keepdims=True)
        return e

    def df(self, x, y, g):
        return y * (g - (g * y).sum(axis=-1, keepdims=True))


ACTIVATIONS = {"linear": Linear, "relu": ReLU, "leaky_relu": LeakyReLU, "elu": ELU, "gelu": GELU,
               "sigmoid": Sigmoid, "tanh": Tanh, "softmax": Softmax}


def get(name):
    """A new activation layer for a name (None means linear)."""
    if name is None:
        name = "linear"
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation; expected one of {sorted(ACTIVATIONS)}. Received: {name!r}")
    return ACTIVATIONS[name]()


@register
class Activation(Layer):
    """``Activation("relu")``: applies a named activation."""

    def __init__(self, activation, name=None):
        super().__init__(name=name)
        self.activation = get(activation)
        self.activation_name = activation

    @property
    def output_activation(self):
        return self.activation

    def sublayers(self):
        return [self.activation]

    def forward(self, x, training=False):
        return self.activation.forward(x, training)

    def backward(self, grad):
        return self.activation.backward(grad)

    def get_config(self):
        return {**super().get_config(), "activation": self.activation_name}
