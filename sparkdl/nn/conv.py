"""Conv2D as one GEMM over the im2col patch matrix (see windows.py for the geometry and the two layouts)."""
from . import activations, initializers
from .core import _positive_int
from .layer import Layer, register
from .windows import (DATA_FORMATS, PADDINGS, Windows, choice, from_nhwc, hwc_to_format, image_shape, pair,
                      to_nhwc)


@register
class Conv2D(Layer):
    """y = activation(correlate(x, kernel) + bias); kernel is (kh, kw, in_channels, filters) as in Keras.

    ``padding="same"`` follows TensorFlow (the odd padding pixel goes bottom/right). ``data_format`` is
    "channels_last" (NHWC, the default) or "channels_first" (NCHW in and out).
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", data_format="channels_last",
                 name=None):
        super().__init__(name=name)
        self.filters = _positive_int(filters, "filters")
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.strides = pair(strides, "strides")
        self.padding = choice(padding, PADDINGS, "padding")
        self.data_format = choice(data_format, DATA_FORMATS, "data_format")
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

    def build(self, input_shape):
        h, w, c = image_shape(input_shape, self.data_format, "Conv2D")
        self.windows = Windows((h, w), self.kernel_size, self.strides, self.padding, "Conv2D")
        self.in_channels = c
        self.transposed = self.windows.transposed_layout(c)
        self.add_param("kernel", self.kernel_size + (c, self.filters), self.kernel_initializer)
        if self.use_bias:
            self.add_param("bias", (self.filters,), self.bias_initializer)
        return hwc_to_format(self.windows.out_hw + (self.filters,), self.data_format)

    def forward(self, x, training=False):
        xp, win = self.xp, self.windows
        xpad = win.pad(xp, to_nhwc(x, self.data_format), self.dtype)
        if not self.transposed:
            xpad = xp.ascontiguousarray(xpad)  # runs of KW*C contiguous values (channels_first input is not)
        self._cols = win.im2col(xp, xpad, self.transposed)
        kernel = self.params["kernel"].reshape(-1, self.filters)
        y = (self._cols.T if self.transposed else self._cols) @ kernel
        if self.use_bias:
            y += self.params["bias"]
        y = y.reshape((x.shape[0],) + win.out_hw + (self.filters,))
        return self.activation.forward(from_nhwc(y, self.data_format), training)

    def backward(self, grad):
        xp, win, cols = self.xp, self.windows, self._cols
        grad = self.activation.backward(grad)
        g = to_nhwc(grad, self.data_format).reshape(-1, self.filters)  # (N*OH*OW, filters)
        xp.matmul(cols if self.transposed else cols.T, g, out=self.grads["kernel"].reshape(-1, self.filters))
        if self.use_bias:  # a GEMV: much faster than g.sum(axis=0) over a tall, narrow g
            xp.matmul(xp.ones(g.shape[0], dtype=g.dtype), g, out=self.grads["bias"])
        if not self.need_input_grad:
            return None
        kernel = self.params["kernel"].reshape(-1, self.filters)
        dcols = kernel @ g.T if self.transposed else g @ kernel.T
        dxpad = win.col2im(xp, dcols, grad.shape[0], self.in_channels, self.dtype, self.transposed)
        return from_nhwc(win.crop(dxpad), self.data_format)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": self.padding, "activation": self.activation_name,
                "use_bias": self.use_bias, "kernel_initializer": self.kernel_initializer,
                "bias_initializer": self.bias_initializer, "data_format": self.data_format}
