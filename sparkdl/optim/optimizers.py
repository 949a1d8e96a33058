"""The update rules, in order of increasing state. Each ``update`` works on whole flat buffers with in-place ``xp``
operations and at most the one ``_scratch`` temporary; ``grads`` may be overwritten (see ``base``).

Notation: ``p`` params, ``g`` gradient (after clipping), ``lr`` the current rate, ``t`` the 1-based step number.
"""
from sparkdl.optim.base import Optimizer
from ..checks import boolean, number


def _floor(epsilon, dtype):
    """epsilon, or the dtype's smallest normal number where it is 0: a zero denominator (the zero padding between
    weights in ``model.params``, or a weight whose gradient has always been 0) then gives a zero step, not 0/0;
    next to any non-zero root the floor is below half a unit in the last place, so nothing else changes."""
    import numpy as np
    return max(float(epsilon), float(np.finfo(dtype).tiny))


def _in_unit(name, value, closed=False):
    ok = (lambda v: 0 <= v <= 1) if closed else (lambda v: 0 <= v < 1)
    return number(name, value, ok, f"a number in [0, 1{']' if closed else ')'}")


def _non_negative(name, value):
    return number(name, value, lambda v: v >= 0, "a non-negative number")


class SGD(Optimizer):
    """Stochastic gradient descent with PyTorch ``torch.optim.SGD`` semantics (no dampening)::

        g = g + weight_decay * p                     # L2, folded into the gradient
        b = momentum * b + g                         # b starts at 0, so the first step gives b = g as in PyTorch
        d = g + momentum * b  if nesterov  else  b   # (d = g when momentum == 0: no slot is allocated)
        p = p - lr * d
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, clipnorm=None,
                 name=None):
        super().__init__(learning_rate, clipnorm, name)
        self.momentum = _in_unit("momentum", momentum, closed=True)
        self.nesterov = boolean("nesterov", nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError(f"nesterov=True needs momentum > 0. Received: momentum={momentum!r}")
        self.weight_decay = _non_negative("weight_decay", weight_decay)
        self.slot_names = ("momentum",) if self.momentum > 0 else ()

    def update(self, p, g, lr):
        xp, tmp = self.xp, self._scratch
        if self.weight_decay:
            g += xp.multiply(p, self.weight_decay, out=tmp)
        d = g
        if self.momentum:
            b = self.slots["momentum"]
            b *= self.momentum
            b += g
            if self.nesterov:
                g += xp.multiply(b, self.momentum, out=tmp)
            else:
                d = b
        p -= xp.multiply(d, lr, out=tmp)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class Adagrad(Optimizer):
    """Adagrad with Keras semantics (epsilon INSIDE the square root)::

        a = a + g**2                                 # a starts at initial_accumulator_value
        p = p - lr * g / sqrt(a + epsilon)
    """

    slot_names = ("accumulator",)

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, clipnorm=None, name=None):
        super().__init__(learning_rate, clipnorm, name)
        self.initial_accumulator_value = _non_negative("initial_accumulator_value", initial_accumulator_value)
        self.epsilon = _non_negative("epsilon", epsilon)
        if self.initial_accumulator_value + self.epsilon == 0:
            raise ValueError("initial_accumulator_value and epsilon cannot both be 0 (the first step divides by "
                             f"zero). Received: initial_accumulator_value=0, epsilon={epsilon!r}")

    def build(self, n, xp, dtype):
        super().build(n, xp, dtype)
        self.slots["accumulator"].fill(self.initial_accumulator_value)

    def update(self, p, g, lr):
        xp, tmp, a = self.xp, self._scratch, self.slots["accumulator"]
        a += xp.multiply(g, g, out=tmp)
        xp.sqrt(xp.add(a, self.epsilon, out=tmp), out=tmp)
        xp.divide(g, tmp, out=tmp)
        p -= xp.multiply(tmp, lr, out=tmp)

    def get_config(self):
        return {**super().get_config(), "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon}


class RMSprop(Optimizer):
    """RMSprop with Keras semantics (epsilon INSIDE the square root, lr applied before the momentum buffer)::

        v = rho * v + (1 - rho) * g**2
        centered:  mg = rho * mg + (1 - rho) * g;   denom = v - mg**2 + epsilon
        else:      denom = v + epsilon
        inc = lr * g / sqrt(denom)
        momentum > 0:  b = momentum * b + inc;  p = p - b
        else:          p = p - inc

    Slots: "velocity", plus "average_gradient" when centered and "momentum" when momentum > 0.
    (PyTorch puts epsilon outside the root and applies lr after the momentum buffer, so the two differ by
    epsilon's placement and, with momentum, whenever the rate changes between steps.)
    """

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, clipnorm=None,
                 name=None):
        super().__init__(learning_rate, clipnorm, name)
        self.rho = _in_unit("rho", rho)
        self.momentum = _in_unit("momentum", momentum, closed=True)
        self.epsilon = _non_negative("epsilon", epsilon)
        self.centered = boolean("centered", centered)
        self.slot_names = ("velocity",) + ("average_gradient",) * self.centered + ("momentum",) * (self.momentum > 0)

    def build(self, n, xp, dtype):
        super().build(n, xp, dtype)
        self._eps = _floor(self.epsilon, dtype)

    def update(self, p, g, lr):
        xp, tmp, v, rho = self.xp, self._scratch, self.slots["velocity"], self.rho
        v *= rho
        v += xp.multiply(xp.multiply(g, g, out=tmp), 1 - rho, out=tmp)
        if self.centered:
            mg = self.slots["average_gradient"]
            mg *= rho
            mg += xp.multiply(g, 1 - rho, out=tmp)
            xp.subtract(v, xp.multiply(mg, mg, out=tmp), out=tmp)
            tmp += self._eps
        else:
            xp.add(v, self._eps, out=tmp)
        xp.divide(g, xp.sqrt(tmp, out=tmp), out=tmp)
        tmp *= lr
        if self.momentum:
            b = self.slots["momentum"]
            b *= self.momentum
            b += tmp
            p -= b
        else:
            p -= tmp

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon,
                "centered": self.centered}


class Adam(Optimizer):
    """Adam with Keras semantics (Kingma & Ba, section 2's "efficient" form: bias correction folded into the rate,
    epsilon added to the UNcorrected sqrt(v))::

        g = g + weight_decay * p                     # L2 (PyTorch Adam); AdamW decays p instead
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        amsgrad:  v_max = max(v_max, v);  v = v_max
        lr_t = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
        p = p - lr_t * m / (sqrt(v) + epsilon)

    PyTorch computes ``lr / (1 - beta_1**t) * m / (sqrt(v) / sqrt(1 - beta_2**t) + eps)``: the same rule with
    ``eps_torch = epsilon / sqrt(1 - beta_2**t)``; both agree whenever epsilon is negligible next to sqrt(v).
    Slots: "m", "v", plus "v_max" with amsgrad.
    """

    slot_names = ("m", "v")
    decoupled_weight_decay = False

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.0,
                 amsgrad=False, clipnorm=None, name=None):
        super().__init__(learning_rate, clipnorm, name)
        self.beta_1 = _in_unit("beta_1", beta_1)
        self.beta_2 = _in_unit("beta_2", beta_2)
        self.epsilon = _non_negative("epsilon", epsilon)
        self.weight_decay = _non_negative("weight_decay", weight_decay)
        self.amsgrad = boolean("amsgrad", amsgrad)
        self.slot_names = ("m", "v", "v_max") if self.amsgrad else ("m", "v")

    def build(self, n, xp, dtype):
        super().build(n, xp, dtype)
        self._eps = _floor(self.epsilon, dtype)

    def update(self, p, g, lr):
        xp, tmp, m, v = self.xp, self._scratch, self.slots["m"], self.slots["v"]
        if self.weight_decay:
            if self.decoupled_weight_decay:
                p *= 1 - lr * self.weight_decay
            else:
                g += xp.multiply(p, self.weight_decay, out=tmp)
        m *= self.beta_1
        m += xp.multiply(g, 1 - self.beta_1, out=tmp)
        v *= self.beta_2
        v += xp.multiply(xp.multiply(g, g, out=tmp), 1 - self.beta_2, out=tmp)
        if self.amsgrad:
            v = xp.maximum(self.slots["v_max"], v, out=self.slots["v_max"])
        t = self.iterations + 1
        lr_t = lr * (1 - self.beta_2 ** t) ** 0.5 / (1 - self.beta_1 ** t)
        xp.sqrt(v, out=tmp)
        tmp += self._eps
        xp.divide(m, tmp, out=tmp)
        p -= xp.multiply(tmp, lr_t, out=tmp)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
                "weight_decay": self.weight_decay, "amsgrad": self.amsgrad}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter; PyTorch and Keras ``AdamW``): first
    ``p = p * (1 - lr * weight_decay)`` with the current (scheduled) rate, then the :class:`Adam` rule with
    no L2 term in the gradient."""

    decoupled_weight_decay = True

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, clipnorm=None, name=None):
        super().__init__(learning_rate, beta_1, beta_2, epsilon, weight_decay, amsgrad, clipnorm, name)
