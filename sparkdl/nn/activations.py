"""Activation layers (no weights). Dense, Conv2D and the recurrent layers hold one of these for ``activation=``.

When a model ends in softmax (sigmoid) and is compiled with a categorical (binary) cross-entropy, the loss is
computed from the logits this layer cached, and its ``backward`` passes the loss gradient through unchanged
(``fused_with_loss``): the exact, numerically stable gradient ``p - y`` instead of differentiating a clipped log.
"""
import math

from ..registry import Registry
from .layer import Layer, register

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# erf as rational functions (Cephes ndtr.c, S. L. Moshier): |x| < 1: x T(x^2) / U(x^2); 1 <= |x|:
# 1 - exp(-x^2) P(|x|) / Q(|x|), with |x| clipped to 6 (erfc(6) = 2e-17: erf is +-1 in float64 beyond).
# Largest error against math.erf: 3.3e-16 in float64; float32 inputs stay float32, within float32 rounding.
_ERF_T = (9.60497373987051638749e0, 9.00260197203842689217e1, 2.23200534594684319226e3,
          7.00332514112805075473e3, 5.55923013010394962768e4)
_ERF_U = (3.35617141647503099647e1, 5.21357949780152679795e2, 4.59432382970980127987e3,
          2.26290000613890934246e4, 4.92673942608635921086e4)
_ERFC_P = (2.46196981473530512524e-10, 5.64189564831068821977e-1, 7.46321056442269912687e0,
           4.86371970985681366614e1, 1.96520832956077098242e2, 5.26445194995477358631e2,
           9.34528527171957607540e2, 1.02755188689515710272e3, 5.57535335369399327526e2)
_ERFC_Q = (1.32281951154744992508e1, 8.67072140885989742329e1, 3.54937778887819891062e2,
           9.75708501743205489753e2, 1.82390916687909736289e3, 2.24633760818710981792e3,
           1.65666309194161350182e3, 5.57535340817727675546e2)


def _polynomial(x, coefficients, monic=False):
    """Horner: c0 x^n + ... + cn, or with monic=True x^(n+1) + c0 x^n + ... + cn."""
    y = x + coefficients[0] if monic else coefficients[0]
    for c in coefficients[1:]:
        y = y * x + c
    return y


def erf(x, xp):
    """The error function, elementwise, on the array module ``xp`` (numpy has none; cupy's own is used)."""
    if xp.__name__ == "cupy":
        from cupyx.scipy.special import erf as cupy_erf
        return cupy_erf(x)
    a = xp.abs(x)
    z = xp.minimum(a, 1.0)
    z = z * z
    near = x * _polynomial(z, _ERF_T) / _polynomial(z, _ERF_U, monic=True)
    b = xp.clip(a, 1.0, 6.0)
    far = 1.0 - xp.exp(-b * b) * _polynomial(b, _ERFC_P) / _polynomial(b, _ERFC_Q, monic=True)
    return xp.where(a < 1.0, near, xp.copysign(far, x))


class _Elementwise(Layer):
    """y = f(x), dy/dx evaluated elementwise from the cached input or output."""

    @classmethod
    def examples(cls):
        return [(cls, (3, 5), {"batch": 4})]

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
    """GELU, x * Phi(x) with Phi the standard normal CDF.

    ``approximate=True`` (the default, and what the activation name ``"gelu"`` means): the tanh approximation,
    PyTorch's ``approximate='tanh'``: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    ``approximate=False`` (the activation name ``"gelu_exact"``): the exact form, PyTorch's ``approximate='none'``
    and Keras's ``gelu``: 0.5 x (1 + erf(x / sqrt(2))), with the exact derivative
    Phi(x) + x exp(-x^2 / 2) / sqrt(2 pi).
    """

    def __init__(self, approximate=True, name=None):
        super().__init__(name=name)
        if approximate not in (True, False):
            raise ValueError(f"approximate must be True (tanh approximation) or False (exact, erf). "
                             f"Received: approximate={approximate!r}")
        self.approximate = bool(approximate)

    def f(self, x):
        if not self.approximate:
            return 0.5 * x * (1.0 + erf(x * _INV_SQRT_2, self.xp))
        return 0.5 * x * (1.0 + self.xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)))

    def df(self, x, y, g):
        xp = self.xp
        if not self.approximate:
            cdf = 0.5 * (1.0 + erf(x * _INV_SQRT_2, xp))
            return g * (cdf + x * xp.exp(-0.5 * x * x) * _INV_SQRT_2PI)
        t = xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x ** 3))
        dt = (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
        return g * (0.5 * (1.0 + t) + 0.5 * x * dt)

    def get_config(self):
        return {**super().get_config(), "approximate": self.approximate}


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


def _gelu_exact():
    return GELU(approximate=False)


# name -> a function of no arguments making the layer ("gelu" stays the tanh approximation, as saved models expect)
ACTIVATIONS = Registry("activation", {"linear": Linear, "relu": ReLU, "leaky_relu": LeakyReLU, "elu": ELU,
                                      "gelu": GELU, "gelu_exact": _gelu_exact, "sigmoid": Sigmoid, "tanh": Tanh,
                                      "softmax": Softmax})


def get(name):
    """A new activation layer for a name (None means linear)."""
    return ACTIVATIONS.lookup("linear" if name is None else name)()


@register
class Activation(Layer):
    """``Activation("relu")``: applies a named activation."""

    @classmethod
    def examples(cls):
        return [(lambda: cls("tanh"), (3, 5), {}), (lambda: cls("gelu_exact"), (4,), {})]

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
