"""Image augmentation as a layer, as Keras' preprocessing layers do it: it changes the images while the model
trains (in each worker, per minibatch, with the model's own seeded generator) and passes them through unchanged
in predict and evaluate (and in an ONNX export)."""
import numpy as np

from ..checks import boolean, number
from .layer import Layer, register


@register
class RandomShift(Layer):
    """Images (batch, height, width, channels), each moved by a random whole number of pixels, at most
    ``max_shift`` up or down and left or right (the uncovered border is zeros); with ``flip`` also mirrored left to
    right with probability 1/2 (not for digits). One gather for the whole batch, no per-image Python."""

    @classmethod
    def examples(cls):
        return [(lambda: cls(2, flip=True), (5, 6, 2), {"training": True}), (lambda: cls(1), (4, 4, 1), {})]

    def __init__(self, max_shift=2, flip=False, name=None):
        super().__init__(name=name)
        self.max_shift = number("max_shift", max_shift, lambda v: v >= 0, "a non-negative integer", cast=int)
        self.flip = boolean("flip", flip)

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"RandomShift takes images (height, width, channels); received input shape "
                             f"{tuple(input_shape)}")
        return tuple(input_shape)

    def forward(self, x, training=False):
        self._index = None
        if not training or (self.max_shift == 0 and not self.flip):
            return x
        xp, s = self.xp, self.max_shift
        n, h, w, _ = x.shape
        draw = lambda k: (self.rng.random(n) * k).astype(np.int64) if k > 1 else xp.zeros(n, np.int64)
        rows = xp.arange(h)[None, :] + s - (draw(2 * s + 1) - s)[:, None]          # (n, h) rows of the padded image
        cols = xp.arange(w)[None, :].repeat(n, 0)
        if self.flip:
            cols = xp.where((draw(2) == 1)[:, None], w - 1 - cols, cols)
        cols = cols + s - (draw(2 * s + 1) - s)[:, None]
        self._index = (xp.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :])
        padded = xp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)))
        return padded[self._index]

    def backward(self, grad):
        if self._index is None:
            return grad
        s = self.max_shift
        n, h, w, c = grad.shape
        padded = self.xp.zeros((n, h + 2 * s, w + 2 * s, c), grad.dtype)
        padded[self._index] = grad   # each output pixel comes from its own padded pixel: no index repeats
        return padded[:, s:s + h, s:s + w]

    def get_config(self):
        return {**super().get_config(), "max_shift": self.max_shift, "flip": self.flip}
