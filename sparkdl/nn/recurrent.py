"""SimpleRNN, LSTM, GRU with Keras semantics and weight layouts.

Input (batch, timesteps, features), zero initial state. ``kernel`` is (features, gates * units),
``recurrent_kernel`` (units, gates * units), gates side by side in Keras order (LSTM: i, f, c, o; GRU: z, r, h).
The time loop is a Python loop over steps; the input projection ``x @ kernel`` is one matmul for all steps
before the loop, and every weight gradient is one matmul over all steps after the backward loop.

Internally everything runs time-major, (steps, batch, ...), in processing order (reversed when
``go_backwards``), so each step reads and writes contiguous slices. ``h[0]`` is the zero initial state.
Activations are the layers of ``activations.py``, used through their elementwise ``f`` / ``df``; a gate block is
viewed as (batch, gates, units) so an activation over the last axis (softmax) sees one gate at a time, as in Keras.
"""
from . import activations, initializers
from .core import _positive_int
from .layer import Layer, register


def _bool(value, argument):
    if not isinstance(value, bool):
        raise ValueError(f"{argument} must be a bool. Received: {argument}={value!r}")
    return value


def _forget_bias(bias_initializer, units):
    """Keras's ``unit_forget_bias``: the bias initializer, with the forget-gate block (i, f, c, o) set to one."""
    base = initializers.get(bias_initializer)

    def init(rng, shape):
        bias = base(rng, shape)
        bias[units:2 * units] = 1.0
        return bias
    return init


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
        self.units = _positive_int(units, "units")
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


@register
class LSTM(_Gated):
    """Keras LSTM. Gates i, f, c, o: i = ra(z_i), f = ra(z_f), o = ra(z_o), g = act(z_c) with
    z = x_t @ kernel + h_{t-1} @ recurrent_kernel + bias; c_t = f * c_{t-1} + i * g; h_t = o * act(c_t).

    ``unit_forget_bias`` initializes the forget-gate bias to one (the bias initializer is wrapped at build time, so
    the config keeps only names).
    """

    gates = 4

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
                 unit_forget_bias=True, return_sequences=False, go_backwards=False, name=None):
        super().__init__(units, activation, use_bias, kernel_initializer, recurrent_initializer, bias_initializer,
                         return_sequences, go_backwards, name)
        self._gate_activation(recurrent_activation)
        self.unit_forget_bias = _bool(unit_forget_bias, "unit_forget_bias")

    def _bias_init(self):
        return _forget_bias(self.bias_initializer, self.units) if self.unit_forget_bias else self.bias_initializer

    def forward(self, x, training=False):
        act, ract = self.activation, self.recurrent_activation
        z = self._project(x)                    # (T, B, 4u) pre-activations, completed in place
        steps, batch, _ = z.shape
        z4 = z.reshape(steps, batch, 4, self.units)
        gates = self.xp.empty_like(z4)          # i, f, g, o after their activations
        c = self._states(steps, batch)
        act_c = self.xp.empty_like(c[1:])
        h = self._states(steps, batch)
        u = self.params["recurrent_kernel"]
        for t in range(steps):
            z[t] += h[t] @ u
            g = gates[t]
            g[...] = ract.f(z4[t])
            g[:, 2] = act.f(z4[t, :, 2])
            c[t + 1] = g[:, 1] * c[t] + g[:, 0] * g[:, 2]
            act_c[t] = act.f(c[t + 1])
            h[t + 1] = g[:, 3] * act_c[t]
        self._z4, self._gates, self._c, self._act_c, self._h = z4, gates, c, act_c, h
        return self._output(h)

    def backward(self, grad):
        act, ract = self.activation, self.recurrent_activation
        z4, gates, c, act_c, h = self._z4, self._gates, self._c, self._act_c, self._h
        u = self.params["recurrent_kernel"]
        seq, dh = self._output_grads(grad)
        dc = 0.0
        dgates = self.xp.empty_like(gates[0])
        dz4 = self.xp.empty_like(z4)
        for t in reversed(range(z4.shape[0])):
            if seq is not None:
                dh = dh + seq[t]
            g = gates[t]
            dc = dc + act.df(c[t + 1], act_c[t], dh * g[:, 3])
            dgates[:, 0] = dc * g[:, 2]
            dgates[:, 1] = dc * c[t]
            dgates[:, 2] = dc * g[:, 0]
            dgates[:, 3] = dh * act_c[t]
            dz4[t] = ract.df(z4[t], g, dgates)
            dz4[t, :, 2] = act.df(z4[t, :, 2], g[:, 2], dgates[:, 2])
            dc = dc * g[:, 1]
            dh = dz4[t].reshape(dh.shape[0], -1) @ u.T
        dz = dz4.reshape(dz4.shape[0], dz4.shape[1], -1)
        self._sum_over_steps(h[:-1], dz, out=self.grads["recurrent_kernel"])
        if self.use_bias:
            dz.sum(axis=(0, 1), out=self.grads["bias"])
        return self._input_grads(dz)

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


@register
class GRU(_Gated):
    """Keras GRU. Gates z, r, h: z = ra(x_z + h_{t-1} U_z), r = ra(x_r + h_{t-1} U_r) and
    h_t = z * h_{t-1} + (1 - z) * hh, where x_* = x_t @ kernel_* (+ input bias) and

    - ``reset_after=True`` (Keras's default, cuDNN's form): hh = act(x_h + r * (h_{t-1} U_h + b_rh)); the bias
      is (2, 3u): row 0 the input bias, row 1 the recurrent bias (added to h_{t-1} @ recurrent_kernel);
    - ``reset_after=False``: hh = act(x_h + (r * h_{t-1}) U_h); the bias is (3u,).
    """

    gates = 3

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
                 reset_after=True, return_sequences=False, go_backwards=False, name=None):
        super().__init__(units, activation, use_bias, kernel_initializer, recurrent_initializer, bias_initializer,
                         return_sequences, go_backwards, name)
        self._gate_activation(recurrent_activation)
        self.reset_after = _bool(reset_after, "reset_after")

    def _bias_shape(self):
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def _input_bias(self):
        return self.params["bias"][0] if self.reset_after else self.params["bias"]

    def forward(self, x, training=False):
        act, ract, xp = self.activation, self.recurrent_activation, self.xp
        z = self._project(x)                    # (T, B, 3u) pre-activations, completed in place
        steps, batch, _ = z.shape
        z3 = z.reshape(steps, batch, 3, self.units)
        gates = xp.empty_like(z3)               # z, r, hh after their activations
        h = self._states(steps, batch)
        u = self.params["recurrent_kernel"]
        u_zr, u_h = u[:, :2 * self.units], u[:, 2 * self.units:]
        inner_h = xp.empty_like(h[1:]) if self.reset_after else None
        for t in range(steps):
            g = gates[t]
            if self.reset_after:
                inner = h[t] @ u
                if self.use_bias:
                    inner += self.params["bias"][1]
                inner = inner.reshape(batch, 3, self.units)
                z3[t, :, :2] += inner[:, :2]
                g[:, :2] = ract.f(z3[t, :, :2])
                inner_h[t] = inner[:, 2]
                z3[t, :, 2] += g[:, 1] * inner_h[t]
            else:
                z3[t, :, :2] += (h[t] @ u_zr).reshape(batch, 2, self.units)
                g[:, :2] = ract.f(z3[t, :, :2])
                z3[t, :, 2] += (g[:, 1] * h[t]) @ u_h
            g[:, 2] = act.f(z3[t, :, 2])
            h[t + 1] = g[:, 2] + g[:, 0] * (h[t] - g[:, 2])
        self._z3, self._gates, self._h, self._inner_h = z3, gates, h, inner_h
        return self._output(h)

    def backward(self, grad):
        act, ract, xp = self.activation, self.recurrent_activation, self.xp
        z3, gates, h, inner_h = self._z3, self._gates, self._h, self._inner_h
        units = self.units
        u = self.params["recurrent_kernel"]
        u_zr, u_h = u[:, :2 * units], u[:, 2 * units:]
        seq, dh = self._output_grads(grad)
        dz3 = xp.empty_like(z3)
        dinner = xp.empty_like(z3) if self.reset_after else None  # gradient of h_{t-1} @ recurrent_kernel (+ b)
        dgates = xp.empty_like(gates[0, :, :2])
        for t in reversed(range(z3.shape[0])):
            if seq is not None:
                dh = dh + seq[t]
            g = gates[t]
            dz3[t, :, 2] = act.df(z3[t, :, 2], g[:, 2], dh * (1.0 - g[:, 0]))
            dgates[:, 0] = dh * (h[t] - g[:, 2])
            dh = dh * g[:, 0]
            if self.reset_after:
                dgates[:, 1] = dz3[t, :, 2] * inner_h[t]
                dz3[t, :, :2] = ract.df(z3[t, :, :2], g[:, :2], dgates)
                dinner[t, :, :2] = dz3[t, :, :2]
                dinner[t, :, 2] = dz3[t, :, 2] * g[:, 1]
                dh = dh + dinner[t].reshape(dh.shape[0], -1) @ u.T
            else:
                d_rh = dz3[t, :, 2] @ u_h.T     # gradient of r * h_{t-1}
                dgates[:, 1] = d_rh * h[t]
                dz3[t, :, :2] = ract.df(z3[t, :, :2], g[:, :2], dgates)
                dh = dh + d_rh * g[:, 1] + dz3[t, :, :2].reshape(dh.shape[0], -1) @ u_zr.T
        steps, batch = z3.shape[:2]
        dz = dz3.reshape(steps, batch, -1)
        du = self.grads["recurrent_kernel"]
        if self.reset_after:
            dinner = dinner.reshape(steps, batch, -1)
            self._sum_over_steps(h[:-1], dinner, out=du)
        else:
            du[:, :2 * units] = self._sum_over_steps(h[:-1], dz[..., :2 * units])
            du[:, 2 * units:] = self._sum_over_steps(gates[:, :, 1] * h[:-1], dz[..., 2 * units:])
        if self.use_bias:
            if self.reset_after:
                dz.sum(axis=(0, 1), out=self.grads["bias"][0])
                dinner.sum(axis=(0, 1), out=self.grads["bias"][1])
            else:
                dz.sum(axis=(0, 1), out=self.grads["bias"])
        return self._input_grads(dz)

    def get_config(self):
        return {**super().get_config(), "reset_after": self.reset_after}
