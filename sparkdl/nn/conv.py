"""Conv2D as GEMMs over the im2col patch matrix (windows.py holds the geometry and the patch layouts).

forward:  y = patches @ [kernel; bias]              patches (N*OH*OW, KH*KW*C + 1), cached for backward
backward: d[kernel; bias] = patches.T @ g           both GEMMs over blocks of images for small layers
          dx = col2im(g @ kernel.T)                 the product laid out so that col2im's kh*kw adds stream
                                                    (see _input_grad), then one transpose to the data format.
"""
import numpy as np

from ..checks import positive_int
from .core import Affine
from .layer import register
from .windows import (DATA_FORMATS, PADDINGS, Windows, choice, from_nhwc, hwc_to_format, image_shape, pair,
                      to_nhwc)

# NumPy's BLAS runs the tall, narrow GEMMs of small convolutions (few taps and filters, e.g. LeNet's: 1.5-2.5x
# measured) much faster on blocks of patch rows that stay in cache, so those go through a batched matmul over
# blocks of whole images of about this size. Wide GEMMs, and CuPy, take the patch matrix whole.
BLOCK_BYTES = 256 * 1024
BLOCKED_MAX_WEIGHTS = 4096   # taps * filters at most


def _row_blocks(cols, transposed, blocks):
    """The patch matrix (rows, taps), stored as is or transposed, as (blocks, rows // blocks, taps) views."""
    if transposed:
        taps, rows = cols.shape
        return cols.reshape(taps, blocks, rows // blocks).transpose(1, 2, 0)
    rows, taps = cols.shape
    return cols.reshape(blocks, rows // blocks, taps)


@register
class Conv2D(Affine):
    """y = activation(correlate(x, kernel) + bias); kernel is (kh, kw, in_channels, filters) as in Keras.

    ``padding="same"`` follows TensorFlow (the odd padding pixel goes bottom/right). ``data_format`` is
    "channels_last" (NHWC, the default) or "channels_first" (NCHW in and out).
    """

    @classmethod
    def examples(cls):
        return [(lambda: cls(3, (2, 3), strides=(2, 1), data_format="channels_first"), (1, 5, 7), {}),
                (lambda: cls(2, 3, padding="same", activation="elu"), (5, 4, 8), {})]

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", data_format="channels_last",
                 name=None):
        super().__init__(name=name)
        self.filters = positive_int("filters", filters)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.strides = pair(strides, "strides")
        self.padding = choice(padding, PADDINGS, "padding")
        self.data_format = choice(data_format, DATA_FORMATS, "data_format")
        self._affine(activation, use_bias, kernel_initializer, bias_initializer)

    def build(self, input_shape):
        h, w, c = image_shape(input_shape, self.data_format, "Conv2D")
        self.windows = Windows((h, w), self.kernel_size, self.strides, self.padding, "Conv2D")
        self.in_channels = c
        self._transposed = self.windows.transposed_layout(c)
        self._blocks_for = (None, 1)   # (batch size, blocks) of the last forward
        self.add_param("kernel", self.kernel_size + (c, self.filters), self.kernel_initializer)
        if self.use_bias:
            self.add_param("bias", (self.filters,), self.bias_initializer)
        return hwc_to_format(self.windows.out_hw + (self.filters,), self.data_format)

    def forward(self, x, training=False):
        xp, win = self.xp, self.windows
        xpad = win.pad(xp, to_nhwc(x, self.data_format), self.dtype)
        if not self._transposed:
            xpad = xp.ascontiguousarray(xpad)  # runs of KW*C contiguous values (channels_first input is not)
        # the bias rides in the GEMM as a row of ones in the patches and a row of biases under the kernel
        self._cols = win.im2col(xp, xpad, self._transposed, ones=self.use_bias)
        weights = self.params["kernel"].reshape(-1, self.filters)
        if self.use_bias:
            weights = xp.concatenate((weights, self.params["bias"][None]))
        if self._blocks_for[0] != x.shape[0]:
            self._blocks_for = (x.shape[0], self._count_blocks(x.shape[0], weights.shape[0]))
        self._blocks = self._blocks_for[1]
        y = xp.matmul(_row_blocks(self._cols, self._transposed, self._blocks), weights)
        y = y.reshape((x.shape[0],) + win.out_hw + (self.filters,))
        return self.activation.forward(from_nhwc(y, self.data_format), training)

    def backward(self, grad):
        xp, f, blocks = self.xp, self.filters, self._blocks
        grad = to_nhwc(self.activation.backward(grad), self.data_format)   # (N, OH, OW, filters)
        cols = _row_blocks(self._cols, self._transposed, blocks)          # (blocks, rows, taps)
        partial = xp.matmul(cols.transpose(0, 2, 1), grad.reshape(blocks, -1, f))   # (blocks, taps, filters)
        if self.use_bias:  # the ones column of the patches turns the last row into the bias gradient
            dweights = partial.sum(axis=0) if blocks > 1 else partial[0]
            self.grads["kernel"].reshape(-1, f)[...] = dweights[:-1]
            self.grads["bias"][...] = dweights[-1]
        else:
            partial.sum(axis=0, out=self.grads["kernel"].reshape(-1, f))
        if not self.need_input_grad:
            return None
        return self._input_grad(grad)

    def _count_blocks(self, n, taps):
        """Into how many blocks of whole images the patch rows go for the GEMMs (see BLOCK_BYTES)."""
        if self.xp is not np or taps * self.filters > BLOCKED_MAX_WEIGHTS:
            return 1
        image_bytes = self.windows.out_hw[0] * self.windows.out_hw[1] * taps * np.dtype(self.dtype).itemsize
        per_block = min(n, max(1, BLOCK_BYTES // image_bytes))
        while n % per_block:  # whole, equal blocks
            per_block -= 1
        return n // per_block

    def _input_grad(self, grad):
        """col2im of dpatches = g @ kernel.T, computed straight into a layout where it streams (windows.col2im):
        (C, H, W, N) for few channels, else (H, W, N, C); either way one small GEMM per kernel position."""
        xp, win = self.xp, self.windows
        (kh, kw), (h, w), c, f = self.kernel_size, win.in_hw, self.in_channels, self.filters
        n, oh, ow = grad.shape[:3]
        kernel = self.params["kernel"]
        if c < 8:
            g_t = xp.ascontiguousarray(grad.transpose(3, 1, 2, 0)).reshape(f, -1)       # (F, OH*OW*N)
            d = xp.matmul(kernel.reshape(kh * kw, c, f), g_t).reshape(kh, kw, c, oh, ow, n)  # batched: faster
            dx = win.crop(win.col2im(xp, d, self.dtype))                                # (C, H, W, N)
            order = (3, 1, 2, 0) if self.data_format == "channels_last" else (3, 0, 1, 2)
        else:
            g_h = xp.ascontiguousarray(grad.transpose(1, 2, 0, 3)).reshape(-1, f)       # (OH*OW*N, F)
            d = xp.matmul(g_h, kernel.transpose(0, 1, 3, 2).reshape(kh * kw, f, c))
            dx = win.crop(win.col2im(xp, d.reshape(kh, kw, 1, oh, ow, n * c), self.dtype)).reshape(h, w, n, c)
            order = (2, 0, 1, 3) if self.data_format == "channels_last" else (2, 3, 0, 1)
        return xp.ascontiguousarray(dx.transpose(order))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": self.padding, **self.affine_config(),
                "data_format": self.data_format}
