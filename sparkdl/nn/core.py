"""Dense, Flatten, Reshape, Dropout."""
import numpy as np

from . import activations, initializers
from ..checks import positive_int
from .layer import Layer, as_shape, register


class Affine(Layer):
    """What Dense and Conv2D share: a kernel, an optional bias, and an activation applied after them (which the
    model may fuse with the loss: ``output_activation``)."""

    def _affine(self, activation, use_bias, kernel_initializer, bias_initializer):
        self.activation_name = activation
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.check(kernel_initializer, "kernel_initializer")
        self.bias_initializer = initializers.check(bias_initializer, "bias_initializer")

    @property
    def output_activation(self):
        return self.activation

    def sublayers(self):
        return [self.activation]

    def affine_config(self):
        return {"activation": self.activation_name, "use_bias": self.use_bias,
                "kernel_initializer": self.kernel_initializer, "bias_initializer": self.bias_initializer}


@register
class Dense(Affine):
    """y = activation(x @ kernel + bias) over the last axis; kernel is (in, units)."""

    @classmethod
    def examples(cls):
        return [(lambda: cls(4, activation="tanh"), (5,), {}), (lambda: cls(3, use_bias=False), (2, 4), {})]

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", name=None):
        super().__init__(name=name)
        self.units = positive_int("units", units)
        self._affine(activation, use_bias, kernel_initializer, bias_initializer)

    def build(self, input_shape):
        self.add_param("kernel", (input_shape[-1], self.units), self.kernel_initializer)
        if self.use_bias:
            self.add_param("bias", (self.units,), self.bias_initializer)
        return input_shape[:-1] + (self.units,)

    def forward(self, x, training=False):
        self._x = x
        y = x @ self.params["kernel"]
        if self.use_bias:
            y += self.params["bias"]
        return self.activation.forward(y, training)

    def backward(self, grad):
        grad = self.activation.backward(grad)
        x2 = self._x.reshape(-1, self._x.shape[-1])
        g2 = grad.reshape(-1, self.units)
        self.xp.matmul(x2.T, g2, out=self.grads["kernel"])
        if self.use_bias:
            g2.sum(axis=0, out=self.grads["bias"])
        if not self.need_input_grad:
            return None
        return grad @ self.params["kernel"].T

    def get_config(self):
        return {**super().get_config(), "units": self.units, **self.affine_config()}


@register
class Flatten(Layer):
    """Each example as one axis: (..., ) -> (size,)."""

    @classmethod
    def examples(cls):
        return [(cls, (3, 2, 2), {})]

    def build(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, training=False):
        return x.reshape(x.shape[0], -1)

    def backward(self, grad):
        return grad.reshape((grad.shape[0],) + self.input_shape)


@register
class Reshape(Layer):
    """Reshape each example to ``target_shape`` (one dimension may be -1)."""

    @classmethod
    def examples(cls):
        return [(lambda: cls((3, 4)), (2, 6), {})]

    def __init__(self, target_shape, name=None):
        super().__init__(name=name)
        target = tuple(int(d) for d in target_shape)
        if target.count(-1) > 1 or any(d == 0 or d < -1 for d in target):
            raise ValueError(f"target_shape must be positive ints with at most one -1. "
                             f"Received: target_shape={target_shape!r}")
        self.target_shape = target

    def build(self, input_shape):
        n = int(np.prod(input_shape))
        known = int(np.prod([d for d in self.target_shape if d != -1]))
        shape = tuple(n // known if d == -1 else d for d in self.target_shape)
        if int(np.prod(shape)) != n:
            raise ValueError(f"Reshape cannot turn input shape {input_shape} ({n} values) into "
                             f"target_shape={self.target_shape}")
        return as_shape(shape, "target_shape")

    def forward(self, x, training=False):
        return x.reshape((x.shape[0],) + self.output_shape)

    def backward(self, grad):
        return grad.reshape((grad.shape[0],) + self.input_shape)

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}


@register
class Dropout(Layer):
    """Inverted dropout: in training, zero each value with probability ``rate`` and scale the rest by 1/(1-rate)."""

    @classmethod
    def examples(cls):
        return [(lambda: cls(0.4), (6,), {"training": True}), (lambda: cls(0.4), (6,), {})]

    def __init__(self, rate, name=None):
        super().__init__(name=name)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"rate must be in [0, 1). Received: rate={rate!r}")
        self.rate = float(rate)

    def forward(self, x, training=False):
        if not training or self.rate == 0.0:
            self._mask = None
            return x
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.rate
        self._mask = keep * x.dtype.type(1.0 / (1.0 - self.rate))
        return x * self._mask

    def backward(self, grad):
        return grad if self._mask is None else grad * self._mask

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}
