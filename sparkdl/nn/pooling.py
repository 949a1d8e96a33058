"""MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D.

Windowed pooling loops over the ph * pw pool positions, each a strided (N, OH, OW, C) slice of the (padded)
input (windows.py); with the default non-overlapping pools the slices partition the input, so the backward pass
stores each slice once into an uninitialised gradient. (Reducing a (N, OH, ph, OW, pw, C) reshape over axes 2
and 4 gives the same result but is 5-10x slower in NumPy for small channel counts.)
"""
import numpy as np

from .layer import Layer, register
from .windows import (DATA_FORMATS, PADDINGS, Windows, choice, from_nhwc, hwc_to_format, image_shape, pair,
                      to_nhwc)


class _Pooling2D(Layer):
    """The parts max and average pooling share: windows of ``pool_size`` every ``strides`` over height and width."""

    @classmethod
    def examples(cls):
        return [(lambda: cls(2), (5, 7, 2), {}),
                (lambda: cls(3, strides=1, padding="same", data_format="channels_first"), (2, 4, 5), {})]

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format="channels_last", name=None):
        super().__init__(name=name)
        self.pool_size = pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else pair(strides, "strides")
        self.padding = choice(padding, PADDINGS, "padding")
        self.data_format = choice(data_format, DATA_FORMATS, "data_format")

    def build(self, input_shape):
        name = type(self).__name__
        h, w, c = image_shape(input_shape, self.data_format, name)
        self.windows = Windows((h, w), self.pool_size, self.strides, self.padding, name)
        return hwc_to_format(self.windows.out_hw + (c,), self.data_format)

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": self.padding, "data_format": self.data_format}


@register
class MaxPooling2D(_Pooling2D):
    """Max over each window; "same" pads with -inf. The gradient of a window goes to its first maximum only
    (row-major order within the window), as an argmax would send it, never split among ties."""

    def forward(self, x, training=False):
        xp, win = self.xp, self.windows
        x = to_nhwc(x, self.data_format)
        self._blocks = None
        # pools that tile the image: each pool position's pixels as one block, for a backward pass that wants them
        if training and win.tiles and self.need_input_grad:
            n, (ph, pw), (oh, ow), c = x.shape[0], win.kernel, win.out_hw, x.shape[3]
            self._blocks = xp.ascontiguousarray(x.reshape(n, oh, ph, ow, pw, c).transpose(2, 4, 0, 1, 3, 5))
            xpad, parts = None, list(self._blocks.reshape(ph * pw, n, oh, ow, c))
        else:
            xpad = win.pad(xp, x, self.dtype, -np.inf)
            parts = [xpad[win.slice(i, j)] for i, j in win.positions()]
        y = parts[0].copy() if len(parts) == 1 else xp.maximum(parts[0], parts[1])
        for part in parts[2:]:
            xp.maximum(y, part, out=y)
        self._xpad, self._y = xpad, y
        return from_nhwc(y, self.data_format)

    def backward(self, grad):
        """Each window's gradient to its first maximum: per pool position, the windows whose maximum it holds and
        no earlier position did. Where the pools tile the image this runs on the forward's contiguous blocks (one
        copy back into the image's layout at the end); strided slices of few channels stream 5-10x slower."""
        if not self.need_input_grad:
            return None
        xp, win, xpad, y = self.xp, self.windows, self._xpad, self._y
        g = to_nhwc(grad, self.data_format)
        blocks = self._blocks
        if blocks is not None:
            parts, out = list(blocks.reshape((-1,) + y.shape)), xp.empty_like(blocks)
            targets = list(out.reshape((-1,) + y.shape))
        else:
            dxpad = win.grad_buffer(xp, xpad.shape[0], xpad.shape[3], self.dtype)
            parts = [xpad[win.slice(i, j)] for i, j in win.positions()]
            targets = [dxpad[win.slice(i, j)] for i, j in win.positions()]
        taken = None  # windows whose maximum an earlier position already claimed
        for k, (part, target) in enumerate(zip(parts, targets)):
            if k == len(parts) - 1 and taken is not None:
                first = ~taken
            else:
                first = part == y
                if taken is None:
                    taken = first
                else:
                    first = xp.greater(first, taken)  # first and not taken
                    taken |= first
            if win.disjoint:
                xp.multiply(g, first, out=target)
            else:
                target += g * first
        if blocks is not None:   # (PH, PW, N, OH, OW, C) blocks back into (N, H, W, C)
            n, oh, ph, ow, pw, c = (blocks.shape[i] for i in (2, 3, 0, 4, 1, 5))
            dx = xp.empty((n, oh, ph, ow, pw, c), self.dtype)
            dx.transpose(2, 4, 0, 1, 3, 5)[...] = out
            return from_nhwc(dx.reshape(n, oh * ph, ow * pw, c), self.data_format)
        return from_nhwc(win.crop(dxpad), self.data_format)


@register
class AveragePooling2D(_Pooling2D):
    """Mean over each window; with "same" padding only the real (unpadded) pixels are averaged, as in Keras."""

    def build(self, input_shape):
        out = super().build(input_shape)
        win = self.windows
        if win.padded:  # 1 / (number of real pixels) per output position, shape (OH, OW, 1)
            counts = [_real_counts(n, k, s, pads[0], o)
                      for n, k, s, pads, o in zip(win.in_hw, win.kernel, win.strides, win.pads, win.out_hw)]
            self._host_scale = (1.0 / np.outer(*counts))[:, :, None]
        else:
            self._host_scale = 1.0 / (win.kernel[0] * win.kernel[1])
        self._scale = None
        return out

    def _device_scale(self):
        if self._scale is None:
            s = self._host_scale
            self._scale = s if np.isscalar(s) else self.xp.asarray(s, dtype=self.dtype)
        return self._scale

    def forward(self, x, training=False):
        xp, win = self.xp, self.windows
        xpad = win.pad(xp, to_nhwc(x, self.data_format), self.dtype)
        parts = [xpad[win.slice(i, j)] for i, j in win.positions()]
        y = parts[0].copy() if len(parts) == 1 else parts[0] + parts[1]
        for part in parts[2:]:
            y += part
        y *= self._device_scale()
        self._n_c = (xpad.shape[0], xpad.shape[3])
        return from_nhwc(y, self.data_format)

    def backward(self, grad):
        if not self.need_input_grad:
            return None
        xp, win = self.xp, self.windows
        g = to_nhwc(grad, self.data_format) * self._device_scale()
        dxpad = win.grad_buffer(xp, *self._n_c, self.dtype)
        for i, j in win.positions():
            win.add_into(dxpad, i, j, g)
        return from_nhwc(win.crop(dxpad), self.data_format)


def _real_counts(size, k, stride, pad_before, out):
    """How many unpadded pixels each of the ``out`` windows along one axis covers."""
    starts = np.arange(out) * stride - pad_before
    return np.minimum(starts + k, size) - np.maximum(starts, 0)


@register
class GlobalAveragePooling2D(Layer):
    """Mean over height and width: (H, W, C) -> (C,), or (1, 1, C) with ``keepdims`` (channels_first alike)."""

    @classmethod
    def examples(cls):
        return [(cls, (3, 4, 5), {}), (lambda: cls(data_format="channels_first", keepdims=True), (2, 3, 4), {})]

    def __init__(self, data_format="channels_last", keepdims=False, name=None):
        super().__init__(name=name)
        self.data_format = choice(data_format, DATA_FORMATS, "data_format")
        if not isinstance(keepdims, (bool, np.bool_)):
            raise ValueError(f"keepdims must be a bool. Received: keepdims={keepdims!r}")
        self.keepdims = bool(keepdims)

    def build(self, input_shape):
        h, w, c = image_shape(input_shape, self.data_format, "GlobalAveragePooling2D")
        self._axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        self._scale = 1.0 / (h * w)
        return hwc_to_format((1, 1, c), self.data_format) if self.keepdims else (c,)

    def forward(self, x, training=False):
        return x.mean(axis=self._axes, keepdims=self.keepdims)

    def backward(self, grad):
        if not self.need_input_grad:
            return None
        n = grad.shape[0]
        g = grad.reshape((n,) + hwc_to_format((1, 1, grad.size // n), self.data_format))
        dx = self.xp.empty((n,) + self.input_shape, dtype=self.dtype)
        dx[...] = g * self._scale
        return dx

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format, "keepdims": self.keepdims}
