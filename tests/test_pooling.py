"""MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D: the shared layer check over strides, paddings and
layouts; forwards against naive loops; max-pool ties (one winner per window); "same" averages at the border."""
import re

import numpy as np
import pytest

from sparkdl.testing import check_layer
from sparkdl.nn import Sequential
from sparkdl.nn.pooling import AveragePooling2D, GlobalAveragePooling2D, MaxPooling2D


def build(layer, input_shape, dtype="float64"):
    model = Sequential([layer], input_shape=input_shape, dtype=dtype, seed=0).build()
    model.layers[0].need_input_grad = True
    return model


def naive_pool(x, pool, strides, padding, reduce):
    """NHWC pooling by loops over output pixels; "same" windows are clipped to the real pixels."""
    n, h, w, c = x.shape
    (ph, pw), (sh, sw) = pool, strides
    if padding == "same":
        oh, ow = -(-h // sh), -(-w // sw)
        top, left = max((oh - 1) * sh + ph - h, 0) // 2, max((ow - 1) * sw + pw - w, 0) // 2
    else:
        oh, ow, top, left = (h - ph) // sh + 1, (w - pw) // sw + 1, 0, 0
    y = np.zeros((n, oh, ow, c))
    for r in range(oh):
        for s in range(ow):
            r0, s0 = r * sh - top, s * sw - left
            y[:, r, s, :] = reduce(x[:, max(r0, 0):r0 + ph, max(s0, 0):s0 + pw, :], axis=(1, 2))
    return y


POOL_CONFIGS = [
    (dict(), (4, 6, 3)),                                             # the common 2x2 tiling
    (dict(pool_size=(3, 2), strides=(2, 1)), (7, 5, 2)),             # overlapping rows, rectangular
    (dict(pool_size=3, strides=2, padding="same"), (5, 7, 2)),        # overlapping, padded, odd sizes
    (dict(pool_size=2, padding="same"), (5, 5, 1)),                   # disjoint but padded
    (dict(pool_size=2), (5, 7, 2)),                                   # disjoint, leftover rows/columns dropped
    (dict(pool_size=(2, 3), strides=(3, 3)), (7, 8, 2)),              # gaps between windows
    (dict(pool_size=3, strides=1, padding="same", data_format="channels_first"), (2, 4, 5)),
    (dict(data_format="channels_first"), (3, 4, 6)),
]


@pytest.mark.parametrize("cls", [MaxPooling2D, AveragePooling2D])
@pytest.mark.parametrize("kwargs,input_shape", POOL_CONFIGS)
@pytest.mark.parametrize("training", [False, True])   # max pools that tile the image train on blocks
def test_check_layer(cls, kwargs, input_shape, training):
    check_layer(cls(**kwargs), input_shape, training=training)


@pytest.mark.parametrize("kwargs,input_shape", [
    (dict(), (3, 4, 5)), (dict(keepdims=True), (3, 4, 2)), (dict(data_format="channels_first"), (2, 3, 4)),
    (dict(data_format="channels_first", keepdims=True), (2, 3, 4))])
def test_global_average_check_layer(kwargs, input_shape):
    check_layer(GlobalAveragePooling2D(**kwargs), input_shape)


@pytest.mark.parametrize("cls,reduce", [(MaxPooling2D, np.max), (AveragePooling2D, np.mean)])
@pytest.mark.parametrize("kwargs,input_shape", POOL_CONFIGS)
def test_forward_matches_naive_loops(cls, reduce, kwargs, input_shape):
    layer = cls(**kwargs)
    model = build(layer, input_shape)
    x = np.random.default_rng(0).standard_normal((2,) + input_shape)
    first = layer.data_format == "channels_first"
    x_last = x.transpose(0, 2, 3, 1) if first else x
    expected = naive_pool(x_last, layer.pool_size, layer.strides, layer.padding, reduce)
    y = model.forward(x)
    np.testing.assert_allclose(y.transpose(0, 2, 3, 1) if first else y, expected, rtol=1e-12, atol=1e-12)


def test_float32_stays_float32():
    for layer in (MaxPooling2D(), AveragePooling2D(3, 2, padding="same"), GlobalAveragePooling2D()):
        model = build(layer, (6, 6, 2), dtype="float32")
        y = model.forward(np.ones((2, 6, 6, 2), np.float32))
        assert y.dtype == np.float32
        assert model.backward(np.ones_like(y)).dtype == np.float32


def test_no_input_gradient_when_not_needed():
    for layer in (MaxPooling2D(), AveragePooling2D(), GlobalAveragePooling2D()):
        model = Sequential([layer], input_shape=(4, 4, 2)).build()
        assert layer.need_input_grad is False        # nothing upstream has weights
        y = model.forward(np.ones((2, 4, 4, 2), np.float32))
        assert layer.backward(np.ones_like(y)) is None


# ---- max-pool ties -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("training", [False, True])
def test_max_pool_tie_sends_the_whole_gradient_to_the_first_maximum(training):
    model = build(MaxPooling2D(), (4, 4, 1))
    x = np.ones((1, 4, 4, 1))
    x[0, 2:, 2:, 0] = [[0, 5], [5, 5]]      # bottom-right window: three-way tie, first is (2, 3)
    g = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 2, 1)
    model.forward(x, training)
    dx = model.backward(g)[0, :, :, 0]
    expected = np.zeros((4, 4))
    expected[0, 0], expected[0, 2], expected[2, 0], expected[2, 3] = 1, 2, 3, 4
    np.testing.assert_array_equal(dx, expected)


def test_max_pool_ties_with_overlapping_windows_and_padding():
    model = build(MaxPooling2D(3, strides=1, padding="same"), (3, 3, 1))
    x = np.zeros((1, 3, 3, 1))              # every window is a tie of zeros (padding is -inf, never chosen)
    model.forward(x)
    dx = model.backward(np.ones((1, 3, 3, 1)))[0, :, :, 0]
    # window (r, s) covers rows r-1..r+1 and columns s-1..s+1 clipped to the image; its first real pixel in
    # row-major order, (max(r-1, 0), max(s-1, 0)), takes the whole gradient
    expected = np.zeros((3, 3))
    for r in range(3):
        for s in range(3):
            expected[max(r - 1, 0), max(s - 1, 0)] += 1
    np.testing.assert_array_equal(dx, expected)
    assert dx.sum() == 9


def test_max_pool_same_pads_with_minus_infinity():
    model = build(MaxPooling2D(2, padding="same"), (3, 3, 1))
    x = -np.arange(1.0, 10.0).reshape(1, 3, 3, 1)           # all negative: zero padding would win
    np.testing.assert_array_equal(model.forward(x)[0, :, :, 0], [[-1, -3], [-7, -9]])


# ---- average pooling at the border -----------------------------------------------------------------------------
def test_average_pool_same_averages_only_real_pixels():
    model = build(AveragePooling2D(2, padding="same"), (3, 3, 1))   # pads one row/column, bottom/right
    x = np.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    y = model.forward(x)[0, :, :, 0]
    np.testing.assert_allclose(y, [[(1 + 2 + 4 + 5) / 4, (3 + 6) / 2], [(7 + 8) / 2, 9]])
    g = np.zeros((1, 2, 2, 1))
    g[0, 1, 1, 0] = 1.0                                        # the corner window holds one real pixel
    dx = model.backward(g)[0, :, :, 0]
    expected = np.zeros((3, 3))
    expected[2, 2] = 1.0
    np.testing.assert_array_equal(dx, expected)


def test_average_pool_same_3x3_corner_counts():
    model = build(AveragePooling2D(3, strides=1, padding="same"), (3, 4, 1))
    y = model.forward(np.ones((1, 3, 4, 1)))
    np.testing.assert_allclose(y, 1.0)                          # would be 4/9 at corners if padding counted


def test_global_average_pool_values_and_shapes():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    np.testing.assert_allclose(build(GlobalAveragePooling2D(), (3, 4, 5)).forward(x), x.mean(axis=(1, 2)))
    model = build(GlobalAveragePooling2D(data_format="channels_first", keepdims=True), (3, 4, 5))
    assert model.output_shape == (3, 1, 1)
    np.testing.assert_allclose(model.forward(x), x.mean(axis=(2, 3), keepdims=True))
    dx = model.backward(np.ones((2, 3, 1, 1)))
    np.testing.assert_allclose(dx, np.full(x.shape, 1 / 20))


# ---- shapes, config, errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("size,k,s,valid,same", [(7, 2, 2, 3, 4), (8, 2, 2, 4, 4), (7, 3, 1, 5, 7), (5, 3, 2, 2, 3)])
def test_output_shape_formula(size, k, s, valid, same):
    for cls in (MaxPooling2D, AveragePooling2D):
        for padding, out in (("valid", valid), ("same", same)):
            model = Sequential([cls((k, 1), strides=(s, 1), padding=padding)], input_shape=(size, 3, 2)).build()
            assert model.output_shape == (out, 3, 2)


def test_strides_default_to_pool_size_and_config():
    layer = MaxPooling2D((3, 2), name="p")
    assert layer.get_config() == {"name": "p", "pool_size": [3, 2], "strides": [3, 2], "padding": "valid",
                                  "data_format": "channels_last"}
    assert AveragePooling2D(2, strides=1).get_config()["strides"] == [1, 1]
    assert GlobalAveragePooling2D(keepdims=True).get_config() == {"name": None, "data_format": "channels_last",
                                                                   "keepdims": True}


@pytest.mark.parametrize("cls", [MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D])
@pytest.mark.parametrize("input_shape", [(64,), (8, 8), (1, 8, 8, 3)])
def test_rank_mismatch(cls, input_shape):
    with pytest.raises(ValueError, match=cls.__name__ + r" expects a rank-3 input .*Received: input_shape="
                       + re.escape(str(tuple(input_shape)))):
        Sequential([cls()], input_shape=input_shape).build()


def test_pool_larger_than_input():
    with pytest.raises(ValueError, match="needs images of at least 3x3. Received: height, width = 2, 5"):
        Sequential([MaxPooling2D(3)], input_shape=(2, 5, 1)).build()


@pytest.mark.parametrize("cls", [MaxPooling2D, AveragePooling2D])
@pytest.mark.parametrize("kwargs,received", [
    (dict(pool_size=0), "pool_size=0"), (dict(pool_size=(2,)), r"pool_size=\(2,\)"),
    (dict(pool_size=2.0), "pool_size=2.0"), (dict(strides=(2, 0)), r"strides=\(2, 0\)"),
    (dict(padding="causal"), "padding='causal'"), (dict(data_format="NHWC"), "data_format='NHWC'"),
])
def test_bad_constructor_args(cls, kwargs, received):
    with pytest.raises(ValueError, match="Received: " + received + "$"):
        cls(**kwargs)


@pytest.mark.parametrize("kwargs,received", [(dict(data_format="nchw"), "data_format='nchw'"),
                                             (dict(keepdims="yes"), "keepdims='yes'")])
def test_global_average_bad_args(kwargs, received):
    with pytest.raises(ValueError, match="Received: " + received + "$"):
        GlobalAveragePooling2D(**kwargs)
