"""The GRU layer (Keras semantics and weight layout, gates z, r, h, in the ``reset_after`` form or not) on the
shared recurrent machinery of rnn.py.
"""
from .layer import register
from .rnn import _bool, _Gated


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
