"""BatchNormalization and LayerNormalization (Keras 3 semantics).

Both compute ``xhat = (x - mean) / sqrt(var + epsilon)`` with the biased variance and return
``gamma * xhat + beta``. Axes follow Keras: they count the batch dimension, so ``axis=-1`` is the last axis
(channels_last) and ``axis=1`` the channels of an NCHW input; the batch axis itself (0) cannot be chosen.
"""
import numpy as np

from . import initializers
from .layer import Layer, register


def _full_axis(axis, rank, input_shape, layer):
    """``axis`` (batch counted, may be negative) as a positive index into an input of ``rank`` dims."""
    full = axis + rank if axis < 0 else axis
    if not 1 <= full < rank:
        raise ValueError(f"{layer} axis={axis} is out of range for input shape "
                         f"(None, {', '.join(map(str, input_shape))}); the batch axis cannot be normalized")
    return full


def _check_axis(axis):
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or axis == 0:
        raise ValueError(f"axis must be a non-zero int (0 is the batch axis). Received: axis={axis!r}")
    return int(axis)


class _Normalization(Layer):
    """The affine part both layers share: optional gamma (scale) and beta (center) over ``param_axes``."""

    def __init__(self, epsilon, center, scale, beta_initializer, gamma_initializer, name):
        super().__init__(name=name)
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0. Received: epsilon={epsilon!r}")
        self.epsilon = float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer = initializers.check(beta_initializer, "beta_initializer")
        self.gamma_initializer = initializers.check(gamma_initializer, "gamma_initializer")

    def _declare_affine(self, rank, input_shape, param_axes):
        """Declare gamma/beta over ``param_axes`` (full-rank indices); remember how they broadcast."""
        self._param_axes = tuple(sorted(param_axes))
        self._reduce_param = tuple(a for a in range(rank) if a not in self._param_axes)
        self._bshape = tuple(input_shape[a - 1] if a in self._param_axes else 1 for a in range(rank))
        shape = tuple(input_shape[a - 1] for a in self._param_axes)
        if self.scale:
            self.add_param("gamma", shape, self.gamma_initializer)
        if self.center:
            self.add_param("beta", shape, self.beta_initializer)

    def _gamma(self):
        return self.params["gamma"].reshape(self._bshape) if self.scale else None

    def _affine(self, xhat):
        y = xhat * self._gamma() if self.scale else xhat.copy()
        if self.center:
            y += self.params["beta"].reshape(self._bshape)
        return y

    def _affine_grads(self, grad, xhat):
        """Write d gamma and d beta; return (sum of grad, sum of grad * xhat) over the non-param axes."""
        sum_g = grad.sum(axis=self._reduce_param)
        sum_gx = (grad * xhat).sum(axis=self._reduce_param)
        if self.scale:
            self.grads["gamma"][...] = sum_gx.reshape(self.grads["gamma"].shape)
        if self.center:
            self.grads["beta"][...] = sum_g.reshape(self.grads["beta"].shape)
        return sum_g, sum_gx

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "center": self.center, "scale": self.scale,
                "beta_initializer": self.beta_initializer, "gamma_initializer": self.gamma_initializer}


@register
class BatchNormalization(_Normalization):
    """Normalize each channel (``axis``) over the batch and every other axis.

    Training (``training=True``) uses the batch mean and biased variance and updates the running statistics in
    place, as Keras 3 does (with the same biased variance, unlike PyTorch's unbiased one)::

        moving_mean     = moving_mean * momentum     + batch_mean * (1 - momentum)
        moving_variance = moving_variance * momentum + batch_var  * (1 - momentum)

    Inference uses the running statistics. They are non-trainable state (``model.state``), which distributed
    training averages along with the params.
    """

    @classmethod
    def examples(cls):
        return [(lambda: cls(momentum=0.9), (3, 2), {"batch": 4, "training": True}),
                (lambda: cls(axis=1), (3, 2, 2), {"batch": 4})]

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 name=None):
        super().__init__(epsilon, center, scale, beta_initializer, gamma_initializer, name)
        self.axis = _check_axis(axis)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1]. Received: momentum={momentum!r}")
        self.momentum = float(momentum)
        self.moving_mean_initializer = initializers.check(moving_mean_initializer, "moving_mean_initializer")
        self.moving_variance_initializer = initializers.check(moving_variance_initializer,
                                                              "moving_variance_initializer")

    def build(self, input_shape):
        rank = len(input_shape) + 1
        channel = _full_axis(self.axis, rank, input_shape, "BatchNormalization")
        self._declare_affine(rank, input_shape, [channel])
        self._last = channel == rank - 1   # channels last: the rows-and-tiles path below
        channels = (input_shape[channel - 1],)
        self.add_state("moving_mean", channels, self.moving_mean_initializer)
        self.add_state("moving_variance", channels, self.moving_variance_initializer)
        return input_shape

    part_sync = None   # (PartSync, part) while a threaded step runs (sparkdl.nn.replicas): whole-batch statistics

    def _whole_batch(self, sums, count):
        """(sums, count) added up over the parts of a threaded step; as they are otherwise."""
        if self.part_sync is None:
            return sums, count
        sync, part = self.part_sync
        flat = self.xp.concatenate([s.reshape(-1) for s in sums] + [self.xp.asarray([count], sums[0].dtype)])
        total = sync.allsum(part, flat)
        size = sums[0].size
        return [total[i * size:(i + 1) * size].reshape(s.shape) for i, s in enumerate(sums)], total[-1]

    def _mean(self, a):
        """The mean of ``a`` over the reduced axes (kept), over the whole batch."""
        if self.part_sync is None:
            return a.mean(axis=self._reduce_param, keepdims=True)
        s = a.sum(axis=self._reduce_param, keepdims=True)
        (s,), n = self._whole_batch([s], a.size // s.size)
        return s / n

    def forward(self, x, training=False):
        if self._last:
            return self._forward_last(x, training)
        if training:
            mean = self._mean(x)
            xhat = x - mean
            var = self._mean(xhat * xhat)
            if self.part_sync is None or self.part_sync[1] == 0:   # in a threaded step, the first part keeps them
                for name, batch in (("moving_mean", mean), ("moving_variance", var)):
                    moving = self.state[name]
                    moving *= self.momentum
                    moving += (1.0 - self.momentum) * batch.reshape(moving.shape)
        else:
            mean = self.state["moving_mean"].reshape(self._bshape)
            var = self.state["moving_variance"].reshape(self._bshape)
            xhat = x - mean
        inv = 1.0 / self.xp.sqrt(var + self.epsilon)
        xhat *= inv
        self._cache = (xhat, inv, training)
        return self._affine(xhat)

    def backward(self, grad):
        if self._last:
            return self._backward_last(grad)
        xhat, inv, training = self._cache
        sum_g, sum_gx = self._affine_grads(grad, xhat)
        if not self.need_input_grad:
            return None
        scale = inv * self._gamma() if self.scale else inv
        if not training:
            return grad * scale
        # d/dx of the batch statistics too: the usual batch-norm gradient, from the two sums above (over the
        # whole batch where the step runs in parts; the param grads above stay the part's, added up after)
        (sum_g, sum_gx), n = self._whole_batch([sum_g, sum_gx], xhat.size // sum_g.size)
        return scale * (grad - (sum_g.reshape(self._bshape) + xhat * sum_gx.reshape(self._bshape)) / n)

    # Channels last (the default axis=-1; NHWC after a Conv2D): every elementwise step runs on the input as rows
    # of the batch, (N, H*W*C), against per-channel values tiled to a row. Broadcasting a (C,) vector over
    # (..., C) instead makes numpy loop over C values at a time: 3x slower for a conv's 6 or 16 channels. The
    # per-channel sums are a column sum, then a sum over the row's H*W tiles. Where the batch statistics are
    # used, ``x - mean`` is kept and xhat never formed: its scale 1/sqrt(var + eps) goes into the tiles.

    def _sums(self, a):
        return a.sum(axis=0).reshape(-1, self._channels).sum(axis=0)

    def _tile(self, v):
        return self.xp.tile(v.reshape(-1), self._reps)

    def _forward_last(self, x, training):
        n_rows, c = x.shape[0], x.shape[-1]
        x2 = x.reshape(n_rows, -1)
        self._channels, self._reps = c, x2.shape[1] // c
        gamma = self.params["gamma"] if self.scale else None
        if training:
            count = n_rows * self._reps
            (s,), n = self._whole_batch([self._sums(x2)], count)
            mean = s / n
            d = x2 - self._tile(mean)
            (ss,), _ = self._whole_batch([self._sums(d * d)], count)
            var = ss / n
            if self.part_sync is None or self.part_sync[1] == 0:   # in a threaded step, the first part keeps them
                for name, batch in (("moving_mean", mean), ("moving_variance", var)):
                    moving = self.state[name]
                    moving *= self.momentum
                    moving += (1.0 - self.momentum) * batch
        else:
            mean, var, d = self.state["moving_mean"], self.state["moving_variance"], None
        inv = 1.0 / self.xp.sqrt(var + self.epsilon)
        scale = inv * gamma if self.scale else inv
        if d is not None:
            y = d * self._tile(scale)
            shift = self.params["beta"] if self.center else None
        else:
            y = x2 * self._tile(scale)
            shift = -mean * scale + (self.params["beta"] if self.center else 0.0)
        if shift is not None:
            y += self._tile(shift)
        self._cache = (d, x2, mean, inv, scale, training)
        return y.reshape(x.shape)

    def _backward_last(self, grad):
        d, x2, mean, inv, scale, training = self._cache
        g2 = grad.reshape(x2.shape)
        sum_g = self._sums(g2)
        t = g2 * (d if d is not None else x2 - self._tile(mean))
        sum_gx = self._sums(t) * inv   # the sum of grad * xhat
        if self.scale:
            self.grads["gamma"][...] = sum_gx
        if self.center:
            self.grads["beta"][...] = sum_g
        if not self.need_input_grad:
            return None
        dx = g2 * self._tile(scale)
        if training:   # d/dx of the batch statistics too (over the whole batch where the step runs in parts)
            (sum_g, sum_gx), n = self._whole_batch([sum_g, sum_gx], g2.size // sum_g.size)
            dx -= self._tile(scale * sum_g / n)
            dx -= self.xp.multiply(d, self._tile(scale * inv * sum_gx / n), out=t)
        return dx.reshape(grad.shape)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum,
                "moving_mean_initializer": self.moving_mean_initializer,
                "moving_variance_initializer": self.moving_variance_initializer}


@register
class LayerNormalization(_Normalization):
    """Normalize each example over ``axis`` (an int or a list of ints, default the last axis); gamma and beta
    have the shape of those axes. Training and inference compute the same thing."""

    @classmethod
    def examples(cls):
        return [(cls, (3, 4), {}), (lambda: cls(axis=[1, 3]), (2, 3, 2), {})]

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", name=None):
        super().__init__(epsilon, center, scale, beta_initializer, gamma_initializer, name)
        if isinstance(axis, (list, tuple)):
            if not axis:
                raise ValueError(f"axis must be an int or a non-empty list of ints. Received: axis={axis!r}")
            self.axis = [_check_axis(a) for a in axis]
        else:
            self.axis = _check_axis(axis)

    def build(self, input_shape):
        rank = len(input_shape) + 1
        axes = self.axis if isinstance(self.axis, list) else [self.axis]
        full = [_full_axis(a, rank, input_shape, "LayerNormalization") for a in axes]
        if len(set(full)) != len(full):
            raise ValueError(f"LayerNormalization axis lists the same axis twice for input shape "
                             f"(None, {', '.join(map(str, input_shape))}). Received: axis={self.axis!r}")
        self._declare_affine(rank, input_shape, full)
        return input_shape

    def forward(self, x, training=False):
        axes = self._param_axes
        xhat = x - x.mean(axis=axes, keepdims=True)
        inv = 1.0 / self.xp.sqrt((xhat * xhat).mean(axis=axes, keepdims=True) + self.epsilon)
        xhat *= inv
        self._cache = (xhat, inv)
        return self._affine(xhat)

    def backward(self, grad):
        xhat, inv = self._cache
        self._affine_grads(grad, xhat)
        if not self.need_input_grad:
            return None
        g = grad * self._gamma() if self.scale else grad
        axes = self._param_axes
        return inv * (g - g.mean(axis=axes, keepdims=True)
                      - xhat * (g * xhat).mean(axis=axes, keepdims=True))

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}
