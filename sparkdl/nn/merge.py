"""Layers called on a list of tensors (graph models): Add and Concatenate."""
import numpy as np

from .layer import Layer, register, shape_str


class _Merge(Layer):
    """Base for layers called on a list of at least two tensors; backward returns a list of gradients."""

    def build(self, input_shape):
        if not isinstance(input_shape, list) or len(input_shape) < 2:
            raise ValueError(f"{type(self).__name__} must be called on a list of at least 2 tensors. "
                             f"Received: input_shape={input_shape!r}")
        return self.merge_shape([tuple(s) for s in input_shape])


@register
class Add(_Merge):
    """Element-wise sum of inputs of one shape."""

    @classmethod
    def examples(cls):
        return [(cls, [(3, 2), (3, 2), (3, 2)], {})]

    def merge_shape(self, shapes):
        if len(set(shapes)) != 1:
            raise ValueError(f"Add needs inputs of the same shape. Received: input shapes "
                             f"{', '.join(map(shape_str, shapes))}")
        return shapes[0]

    def forward(self, xs, training=False):
        out = xs[0] + xs[1]
        for x in xs[2:]:
            out += x
        return out

    def backward(self, grad):
        return [grad] * len(self.input_shape)


@register
class Concatenate(_Merge):
    """Join inputs along ``axis`` (counting the batch axis, as Keras: -1 is the last); other dims must match."""

    @classmethod
    def examples(cls):
        return [(cls, [(2, 3), (2, 1)], {}), (lambda: cls(axis=1), [(2, 3), (1, 3)], {})]

    def __init__(self, axis=-1, name=None):
        super().__init__(name=name)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or axis == 0:
            raise ValueError(f"axis must be a non-zero int (0 is the batch axis). Received: axis={axis!r}")
        self.axis = int(axis)

    def merge_shape(self, shapes):
        rank = len(shapes[0]) + 1
        ax = self.axis + rank if self.axis < 0 else self.axis
        rest = {s[:ax - 1] + s[ax:] for s in shapes}
        if len({len(s) for s in shapes}) != 1 or not 1 <= ax < rank or len(rest) != 1:
            raise ValueError(f"Concatenate(axis={self.axis}) needs inputs of one rank that match on every other "
                             f"axis. Received: input shapes {', '.join(map(shape_str, shapes))}")
        self._ax = ax
        sizes = [s[ax - 1] for s in shapes]
        self._bounds = np.cumsum([0] + sizes)
        return shapes[0][:ax - 1] + (sum(sizes),) + shapes[0][ax:]

    def forward(self, xs, training=False):
        return self.xp.concatenate(xs, axis=self._ax)

    def backward(self, grad):
        lead = (slice(None),) * self._ax
        return [grad[lead + (slice(int(a), int(b)),)] for a, b in zip(self._bounds[:-1], self._bounds[1:])]

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}
