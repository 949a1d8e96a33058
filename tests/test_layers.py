"""Every registered layer passes sparkdl.testing.check_layer on the examples it declares (config and file round
trips, shapes, dtypes, float64 finite-difference gradients): a new layer is checked as soon as it is registered."""
import contextlib

import numpy as np
import pytest

import sparkdl.nn  # noqa: F401  (registers every layer)
import sparkdl.nn.graph  # noqa: F401
from sparkdl import testing
from sparkdl.nn import Dense, Layer
from sparkdl.nn.layer import register, registered

NAMES = sorted(registered())


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_layer_passes_check_layer(name):
    assert testing.check_registered_layers([name]) >= 1


def test_the_registry_holds_every_layer_class_of_the_package():
    expected = {"Dense", "Flatten", "Reshape", "Dropout", "Activation", "ReLU", "GELU", "Softmax", "Conv2D",
                "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "BatchNormalization",
                "LayerNormalization", "Embedding", "SimpleRNN", "LSTM", "GRU", "Add", "Concatenate"}
    assert expected <= set(NAMES)


@contextlib.contextmanager
def registering(cls):
    from sparkdl.nn import layer
    register(cls)
    try:
        yield cls
    finally:
        del layer._REGISTRY[cls.__name__]


def test_a_registered_layer_without_examples_fails_the_check():
    class Doubling(Layer):
        def forward(self, x, training=False):
            return 2 * x

        def backward(self, grad):
            return 2 * grad

    with registering(Doubling):
        with pytest.raises(AssertionError, match="Doubling: a registered layer must declare examples"):
            testing.check_registered_layers(["Doubling"])


def test_check_layer_catches_a_wrong_gradient_and_a_wrong_shape():
    class Wrong(Dense):
        def backward(self, grad):
            return super().backward(grad) * 1.01

    class Short(Dense):
        def forward(self, x, training=False):
            return super().forward(x, training)[:, :-1]

    with registering(Wrong), registering(Short):
        with pytest.raises(AssertionError, match="Wrong: the gradient w.r.t. input has relative error"):
            testing.check_layer(Wrong(3), (4,))
        with pytest.raises(AssertionError, match=r"Short: output shape \(3, 2\), but build\(\) said \(3, 3\)"):
            testing.check_layer(Short(3), (4,))
    assert np.isfinite(testing.check_layer(Dense(3), (4,)).params).all()


def test_the_walkthrough_layer_of_docs_architecture_passes_check_layer():
    """The doc's example is real code: a newcomer who copies it gets a layer that passes."""
    import os
    import re
    path = os.path.join(os.path.dirname(__file__), "..", "docs", "architecture.md")
    with open(path) as f:
        code = re.search(r"```python\n(.*?)```", f.read(), re.S).group(1)
    namespace = {}
    exec(code.replace("from .layer import", "from sparkdl.nn.layer import"), namespace)
    from sparkdl.nn import layer
    try:
        assert testing.check_registered_layers(["Scale"]) == 2
    finally:
        del layer._REGISTRY["Scale"]


def test_random_shift_moves_each_image_within_its_bounds_in_training_only():
    from sparkdl.nn import RandomShift, Sequential
    x = np.random.default_rng(0).random((64, 7, 9, 2)).astype(np.float32) + 1   # no zeros of its own
    model = Sequential([RandomShift(2, flip=True)], input_shape=(7, 9, 2), seed=5).build()
    out = model.forward(x, True)
    seen = set()
    for img, src in zip(out, x):   # each output is its image moved by (dy, dx), maybe mirrored, zeros around
        found = [(dy, dx, f) for dy in range(-2, 3) for dx in range(-2, 3) for f in (False, True)
                 if np.array_equal(img, _shifted(src[:, ::-1] if f else src, dy, dx))]
        assert found, "an output is not a shift of its image"
        seen.update(found)
    assert len(seen) > 20                                    # 64 images draw many of the 50 moves
    np.testing.assert_array_equal(model.predict(x), x)       # inference: unchanged
    again = Sequential([RandomShift(2, flip=True)], input_shape=(7, 9, 2), seed=5).build()
    np.testing.assert_array_equal(again.forward(x, True), out)   # seeded
    with pytest.raises(ValueError, match=r"RandomShift takes images \(height, width, channels\)"):
        Sequential([RandomShift()], input_shape=(7, 9)).build()
    with pytest.raises(ValueError, match=r"max_shift must be a non-negative integer. Received: max_shift=-1"):
        RandomShift(-1)


def _shifted(img, dy, dx):
    h, w = img.shape[:2]
    out = np.zeros_like(img)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = img[max(-dy, 0):h - max(dy, 0),
                                                                    max(-dx, 0):w - max(dx, 0)]
    return out
