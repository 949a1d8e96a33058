"""The LSTM layer (Keras semantics and weight layout, gates i, f, c, o) on the shared recurrent machinery of
rnn.py, with ``_forget_bias``, the bias initializer of its ``unit_forget_bias``.
"""
from . import initializers
from .layer import register
from .rnn import _bool, _Gated


def _forget_bias(bias_initializer, units):
    """Keras's ``unit_forget_bias``: the bias initializer, with the forget-gate block (i, f, c, o) set to one."""
    base = initializers.get(bias_initializer)

    def init(rng, shape):
        bias = base(rng, shape)
        bias[units:2 * units] = 1.0
        return bias
    return init


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
