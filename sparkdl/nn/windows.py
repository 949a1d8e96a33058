"""Sliding-window geometry shared by Conv2D and the pooling layers.

Inside, images are NHWC; ``channels_first`` layers transpose at their edges. Padding follows Keras/TensorFlow:
"valid" keeps only whole windows; "same" gives ceil(size / stride) outputs and pads
max((out - 1) * stride + k - size, 0) pixels in all, the odd one at the bottom/right.

The window at output (r, s) starts at padded pixel (r * sh, s * sw). For kernel position (i, j), the pixels it
reads across all outputs form one strided slice of the padded image (``Windows.slice``); layers loop over the
kh * kw kernel positions and do whole-array work on each slice.
"""
import numpy as np

PADDINGS = ("valid", "same")
DATA_FORMATS = ("channels_last", "channels_first")


def pair(value, argument):
    """(a, b) positive ints from an int or a pair of ints."""
    items = (value, value) if isinstance(value, (int, np.integer)) else value
    try:
        items = tuple(items)
    except TypeError:
        items = ()
    if len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0
                              for v in items):
        raise ValueError(f"{argument} must be a positive int or a pair of positive ints. "
                         f"Received: {argument}={value!r}")
    return int(items[0]), int(items[1])


def choice(value, choices, argument):
    if value not in choices:
        raise ValueError(f"{argument} must be one of {list(choices)}. Received: {argument}={value!r}")
    return value


def image_shape(input_shape, data_format, layer):
    """(height, width, channels) of a per-example image shape given in ``data_format``."""
    shape = tuple(input_shape)
    if len(shape) != 3:
        layout = "(height, width, channels)" if data_format == "channels_last" else "(channels, height, width)"
        raise ValueError(f"{layer} expects a rank-3 input {layout} per example (batch excluded). "
                         f"Received: input_shape={shape}")
    return shape if data_format == "channels_last" else (shape[1], shape[2], shape[0])


def to_nhwc(x, data_format):
    return x if data_format == "channels_last" else x.transpose(0, 2, 3, 1)


def from_nhwc(x, data_format):
    return x if data_format == "channels_last" else x.transpose(0, 3, 1, 2)


def hwc_to_format(shape, data_format):
    h, w, c = shape
    return (h, w, c) if data_format == "channels_last" else (c, h, w)


def _axis(size, k, stride, padding):
    """(output length, pad before, pad after) along one spatial axis."""
    if padding == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        return out, total // 2, total - total // 2
    return (size - k) // stride + 1, 0, 0


class Windows:
    """The windows of a ``kernel`` (kh, kw) sliding with ``strides`` over ``in_hw`` (h, w) images."""

    def __init__(self, in_hw, kernel, strides, padding, layer="layer"):
        (h, w), (kh, kw), (sh, sw) = in_hw, kernel, strides
        oh, top, bottom = _axis(h, kh, sh, padding)
        ow, left, right = _axis(w, kw, sw, padding)
        if oh <= 0 or ow <= 0:
            raise ValueError(f"{layer} with a {kh}x{kw} window and padding='valid' needs images of at least "
                             f"{kh}x{kw}. Received: height, width = {h}, {w}")
        self.in_hw, self.kernel, self.strides = (h, w), (kh, kw), (sh, sw)
        self.out_hw = (oh, ow)
        self.pads = ((top, bottom), (left, right))
        self.padded = top + bottom + left + right > 0
        self.padded_hw = (h + top + bottom, w + left + right)
        # windows never overlap: a gradient slice can be assigned instead of added
        self.disjoint = sh >= kh and sw >= kw
        # ...and they cover every (unpadded) pixel exactly once: no zero fill needed either
        self.tiles = not self.padded and (sh, sw) == (kh, kw) and (oh * kh, ow * kw) == (h, w)

    def positions(self):
        kh, kw = self.kernel
        return [(i, j) for i in range(kh) for j in range(kw)]

    def slice(self, i, j):
        """Index of the pixels kernel position (i, j) reads in a padded (N, Hp, Wp, C) image: (N, OH, OW, C).
        The same index serves any (lead, Hp, Wp, trail) layout."""
        (oh, ow), (sh, sw) = self.out_hw, self.strides
        return (slice(None), slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw), slice(None))

    def pad(self, xp, x, dtype, value=0.0):
        """``x`` (N, H, W, C) padded for these windows (``x`` itself when nothing is padded)."""
        if not self.padded:
            return x
        (top, _), (left, _) = self.pads
        n, h, w, c = x.shape
        out = xp.full((n,) + self.padded_hw + (c,), value, dtype=dtype)
        out[:, top:top + h, left:left + w, :] = x
        return out

    def crop(self, xpad):
        """The unpadded part of a padded (lead, Hp, Wp, trail) array."""
        if not self.padded:
            return xpad
        (top, _), (left, _) = self.pads
        h, w = self.in_hw
        return xpad[:, top:top + h, left:left + w, :]

    def grad_buffer(self, xp, lead, trail, dtype):
        """A padded (lead, Hp, Wp, trail) gradient to fill slice by slice (zeroed unless the slices tile it)."""
        return (xp.empty if self.tiles else xp.zeros)((lead,) + self.padded_hw + (trail,), dtype=dtype)

    def add_into(self, dxpad, i, j, part):
        """dxpad[window slice (i, j)] += part (a plain store when windows are disjoint)."""
        if self.disjoint:
            dxpad[self.slice(i, j)] = part
        else:
            dxpad[self.slice(i, j)] += part

    # -- im2col / col2im -----------------------------------------------------------------------------------
    # The patch matrix has one row per output pixel (n, oh, ow) and one column per kernel tap (kh, kw, c), plus a
    # column of ones when a bias rides along in the GEMM (adding a bias to a tall, narrow output separately is
    # slow). It is stored as is ("rows", each copy run is KW*C contiguous values) or transposed, (KH, KW, C, N,
    # OH, OW), whose copy runs along OW: far faster when KW*C is small (a 1- or 3-channel input layer).

    def transposed_layout(self, channels):
        return 2 * self.kernel[1] * channels <= self.out_hw[1]

    def im2col(self, xp, xpad, transposed, ones=False):
        """The patch matrix of padded NHWC ``xpad``, (N*OH*OW, KH*KW*C [+1]) or its transpose, contiguous."""
        n, c = xpad.shape[0], xpad.shape[3]
        (kh, kw), (oh, ow), (sh, sw) = self.kernel, self.out_hw, self.strides
        s0, s1, s2, s3 = xpad.strides
        rows, taps = n * oh * ow, kh * kw * c
        if transposed:
            shape, strides = (kh, kw, c, n, oh, ow), (s1, s2, s3, s0, sh * s1, sw * s2)
        else:
            shape, strides = (n, oh, ow, kh, kw, c), (s0, sh * s1, sw * s2, s1, s2, s3)
        windows = xp.lib.stride_tricks.as_strided(xpad, shape, strides)
        if not ones:
            return windows.reshape((taps, rows) if transposed else (rows, taps))  # the one copy
        if transposed:
            out = xp.empty((taps + 1, rows), dtype=xpad.dtype)
            out[taps] = 1
            out[:taps].reshape(shape)[...] = windows
        else:
            out = xp.empty((rows, taps + 1), dtype=xpad.dtype)
            out[:, taps] = 1
            item = out.itemsize
            row = (taps + 1) * item
            xp.lib.stride_tricks.as_strided(out, shape, (oh * ow * row, ow * row, row, kw * c * item, c * item,
                                                         item))[...] = windows
        return out

    def col2im(self, xp, d, dtype):
        """Sum per-kernel-position gradients back onto the padded image: ``d`` is (KH, KW, lead, OH, OW, trail)
        and the result (lead, Hp, Wp, trail). Conv2D picks a layout where ``d[i, j]`` is contiguous and the
        (OW, trail) runs it is added into are long, (C, ., ., N) or (1, ., ., N*C), so the kh*kw adds stream."""
        dxpad = self.grad_buffer(xp, d.shape[2], d.shape[5], dtype)
        for i, j in self.positions():
            self.add_into(dxpad, i, j, d[i, j])
        return dxpad
