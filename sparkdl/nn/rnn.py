"""The recurrent layers' shared machinery and the plain recurrent layer: ``_Recurrent`` (arguments, weights, the
time-major projection of the inputs, outputs and gradients every recurrent layer shares), ``SimpleRNN`` on top of it,
and ``_Gated``, what LSTM (lstm.py) and GRU (gru.py) add for their gates; the conventions are recurrent.py's.
"""
from ..checks import positive_int
from . import activations, initializers
from .layer import Layer, register


def _bool(value, argument):
    if not isinstance(value, bool):
        raise ValueError(f"{argument} must be a bool. Received: {argument}={value!r}")
    return value


class _Recurrent(Layer):
    """The parts every recurrent layer shares: arguments, weights, time-major input and output handling."""

    @classmethod
    def examples(cls):
        return [(lambda: cls(3), (4, 3), {"batch": 2}),
                (lambda: cls(2, return_sequences=True, go_backwards=True), (4, 3), {"batch": 2})]

    gates = 1

    def __init__(self, units, activation, use_bias, kernel_initializer, recurrent_initializer, bias_initializer,
                 return_sequences, go_backwards, name):
        super().__init__(name=name)
        self.units = positive_int("units", units)
        self.activation_name = activation
        self.activation = activations.get(activation)
        self.use_bias = _bool(use_bias, "use_bias")
        self.kernel_initializer = initializers.check(kernel_initializer, "kernel_initializer")
        self.recurrent_initializer = initializers.check(recurrent_initializer, "recurrent_initializer")
        self.bias_initializer = initializers.check(bias_initializer, "bias_initializer")
        self.return_sequences = _bool(return_sequences, "return_sequences")
        self.go_backwards = _bool(go_backwards, "go_backwards")

    def sublayers(self):
        return [self.activation]

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"{type(self).__name__} expects an input shape (timesteps, features) per example; "
                             f"received input shape {tuple(input_shape)}")
        steps, features = input_shape
        n = self.gates * self.units
        self.add_param("kernel", (features, n), self.kernel_initializer)
        self.add_param("recurrent_kernel", (self.units, n), self.recurrent_initializer)
        if self.use_bias:
            self.add_param("bias", self._bias_shape(), self._bias_init())
        return (steps, self.units) if self.return_sequences else (self.units,)

    def _bias_shape(self):
        return (self.gates * self.units,)

    def _bias_init(self):
        return self.bias_initializer

    # -- shared forward / backward pieces -------------------------------------------------------------------
    def _project(self, x):
        """x (B, T, F) -> (T, B, gates*units): x_t @ kernel (+ bias) for every step in one matmul."""
        xs = x.transpose(1, 0, 2)
        self._xs = self.xp.ascontiguousarray(xs[::-1] if self.go_backwards else xs)
        steps, batch, features = self._xs.shape
        z = (self._xs.reshape(steps * batch, features) @ self.params["kernel"]).reshape(steps, batch, -1)
        if self.use_bias:
            z += self._input_bias()
        return z

    def _input_bias(self):
        return self.params["bias"]

    def _states(self, steps, batch):
        """(T + 1, B, units) zeros: h[0] is the initial state, h[t + 1] the state after step t."""
        return self.xp.zeros((steps + 1, batch, self.units), self.dtype)

    def _output(self, h):
        if self.return_sequences:
            return self.xp.ascontiguousarray(h[1:].transpose(1, 0, 2))
        return h[-1]

    def _output_grads(self, grad):
        """(per-step output gradients (T, B, u) or None, the gradient reaching the last state)."""
        if self.return_sequences:
            return grad.transpose(1, 0, 2), self.xp.zeros((grad.shape[0], grad.shape[2]), grad.dtype)
        return None, grad

    def _input_grads(self, dz):
        """Write the kernel gradient from the pre-activation gradients dz (T, B, n); return the input gradient."""
        steps, batch, n = dz.shape
        dz2 = dz.reshape(steps * batch, n)
        self.xp.matmul(self._xs.reshape(steps * batch, -1).T, dz2, out=self.grads["kernel"])
        if not self.need_input_grad:
            return None
        dx = (dz2 @ self.params["kernel"].T).reshape(steps, batch, -1)
        return (dx[::-1] if self.go_backwards else dx).transpose(1, 0, 2)

    def _sum_over_steps(self, a, b, out=None):
        """The sum over steps of a[t].T @ b[t] for a (T, B, m), b (T, B, n), as one matmul."""
        return self.xp.matmul(a.reshape(-1, a.shape[-1]).T, b.reshape(-1, b.shape[-1]), out=out)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation_name,
                "use_bias": self.use_bias, "kernel_initializer": self.kernel_initializer,
                "recurrent_initializer": self.recurrent_initializer, "bias_initializer": self.bias_initializer,
                "return_sequences": self.return_sequences, "go_backwards": self.go_backwards}


@register
class SimpleRNN(_Recurrent):
    """h_t = activation(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias)."""

    def __init__(self, units, activation="tanh", use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros", return_sequences=False,
                 go_backwards=False, name=None):
        super().__init__(units, activation, use_bias, kernel_initializer, recurrent_initializer, bias_initializer,
                         return_sequences, go_backwards, name)

    def forward(self, x, training=False):
        a = self._project(x)                    # pre-activations, completed in place step by step
        h = self._states(a.shape[0], a.shape[1])
        u = self.params["recurrent_kernel"]
        for t in range(a.shape[0]):
            a[t] += h[t] @ u
            h[t + 1] = self.activation.f(a[t])
        self._a, self._h = a, h
        return self._output(h)

    def backward(self, grad):
        a, h, u = self._a, self._h, self.params["recurrent_kernel"]
        seq, dh = self._output_grads(grad)
        da = self.xp.empty_like(a)
        for t in reversed(range(a.shape[0])):
            if seq is not None:
                dh = dh + seq[t]
            da[t] = self.activation.df(a[t], h[t + 1], dh)
            dh = da[t] @ u.T
        self._sum_over_steps(h[:-1], da, out=self.grads["recurrent_kernel"])
        if self.use_bias:
            da.sum(axis=(0, 1), out=self.grads["bias"])
        return self._input_grads(da)


class _Gated(_Recurrent):
    """What LSTM and GRU add to a recurrent layer: gates through ``recurrent_activation``."""

    def _gate_activation(self, recurrent_activation):
        self.recurrent_activation_name = recurrent_activation
        self.recurrent_activation = activations.get(recurrent_activation)

    def sublayers(self):
        return [self.activation, self.recurrent_activation]

    def get_config(self):
        return {**super().get_config(), "recurrent_activation": self.recurrent_activation_name}
