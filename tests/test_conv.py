"""Conv2D: the shared layer check over strides, paddings, layouts and both patch layouts; the forward pass
against a naive loop (itself checked against scipy); TensorFlow "same" padding; shapes, dtypes and errors."""
import re

import numpy as np
import pytest
from scipy.signal import correlate

from sparkdl.testing import check_layer, gradient_check
from sparkdl.nn import Dense, Flatten, Sequential
from sparkdl.nn import conv as conv_module
from sparkdl.nn.conv import Conv2D
from sparkdl.nn.pooling import AveragePooling2D, MaxPooling2D


def build(layer, input_shape, dtype="float64", seed=0):
    model = Sequential([layer], input_shape=input_shape, dtype=dtype, seed=seed).build()
    model.params[...] = np.random.default_rng(seed + 5).standard_normal(model.params.size) * 0.5
    return model


def naive_conv(x, kernel, bias, strides, padding):
    """NHWC correlation by explicit loops over output pixels, with TensorFlow's padding rule written out."""
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    sh, sw = strides
    if padding == "same":
        oh, ow = -(-h // sh), -(-w // sw)
        ph, pw = max((oh - 1) * sh + kh - h, 0), max((ow - 1) * sw + kw - w, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    y = np.zeros((n, oh, ow, f))
    for r in range(oh):
        for s in range(ow):
            patch = x[:, r * sh:r * sh + kh, s * sw:s * sw + kw, :]
            y[:, r, s, :] = np.einsum("nijc,ijcf->nf", patch, kernel) + bias
    return y


# ---- the shared check --------------------------------------------------------------------------------------
CONFIGS = [
    (dict(filters=2, kernel_size=3), (5, 5, 2)),
    (dict(filters=3, kernel_size=(3, 2), strides=2), (7, 6, 2)),                        # rectangular, stride 2
    (dict(filters=2, kernel_size=3, strides=2, padding="same"), (7, 5, 3)),             # odd sizes, same
    (dict(filters=2, kernel_size=(2, 3), strides=(1, 2), padding="same", activation="tanh"), (5, 6, 1)),
    (dict(filters=2, kernel_size=(4, 4), padding="same"), (6, 5, 2)),                   # even kernel: pad 1 / 2
    (dict(filters=3, kernel_size=3, padding="same", data_format="channels_first"), (2, 5, 4)),
    (dict(filters=2, kernel_size=3, use_bias=False, activation="sigmoid"), (4, 6, 2)),
    (dict(filters=2, kernel_size=2, strides=2), (4, 6, 2)),                             # windows tile the input
    (dict(filters=2, kernel_size=2, strides=3), (5, 7, 2)),                             # gaps between windows
    (dict(filters=2, kernel_size=1), (3, 4, 3)),
    # transposed patch layout (KW*C small next to OW), in both data formats, with and without bias
    (dict(filters=2, kernel_size=3, padding="same"), (3, 14, 1)),
    (dict(filters=3, kernel_size=(2, 3), strides=(2, 1), data_format="channels_first"), (1, 5, 15)),
    (dict(filters=2, kernel_size=3, use_bias=False, padding="same", activation="elu"), (3, 13, 2)),
    # 8+ input channels: the input gradient goes through per-position GEMMs
    (dict(filters=3, kernel_size=(3, 2), strides=(1, 2), padding="same"), (4, 5, 8)),
    (dict(filters=2, kernel_size=2, data_format="channels_first", use_bias=False), (9, 3, 4)),
    (dict(filters=2, kernel_size=(3, 1), padding="same"), (3, 16, 8)),                  # ... transposed patches
]


@pytest.mark.parametrize("kwargs,input_shape", CONFIGS)
def test_check_layer(kwargs, input_shape):
    check_layer(Conv2D(**kwargs), input_shape)


def test_configs_cover_both_patch_layouts_and_both_input_gradient_paths():
    layers = [build(Conv2D(**kw), shape).layers[0] for kw, shape in CONFIGS]
    assert {(layer._transposed, layer.in_channels >= 8) for layer in layers} == {(False, False), (True, False),
                                                                                 (False, True), (True, True)}


@pytest.mark.parametrize("kwargs,input_shape", [(dict(filters=3, kernel_size=3, padding="same"), (4, 14, 1)),
                                                 (dict(filters=2, kernel_size=(2, 3), strides=2), (5, 7, 3))])
def test_blocked_gemms(kwargs, input_shape, monkeypatch):
    """Small convolutions run their GEMMs over blocks of images: same results as one GEMM, same gradients."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4,) + input_shape)
    runs = []
    for block_bytes in (1 << 40, 1):
        monkeypatch.setattr(conv_module, "BLOCK_BYTES", block_bytes)
        model = build(Conv2D(**kwargs), input_shape)
        layer = model.layers[0]
        layer.need_input_grad = True
        y = model.forward(x)
        dx = model.backward(np.cos(y))
        runs.append((layer._blocks, y, dx, model.grads.copy()))
    (blocks_whole, *whole), (blocks_split, *split) = runs
    assert (blocks_whole, blocks_split) == (1, 4)
    for a, b in zip(whole, split):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    check_layer(Conv2D(**kwargs), input_shape, batch=4)   # still with 1-byte blocks


# ---- forward against references ----------------------------------------------------------------------------
def test_naive_reference_matches_scipy():
    rng = np.random.default_rng(0)
    x, k = rng.standard_normal((2, 6, 7, 3)), rng.standard_normal((3, 2, 3, 4))
    expected = np.stack([np.stack([sum(correlate(x[b, :, :, c], k[:, :, c, f], mode="valid") for c in range(3))
                                   for f in range(4)], axis=-1) for b in range(2)])
    np.testing.assert_allclose(naive_conv(x, k, 0.0, (1, 1), "valid"), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs,input_shape", [
    (dict(filters=4, kernel_size=3), (6, 7, 3)),
    (dict(filters=2, kernel_size=(3, 2), strides=2, padding="same"), (7, 8, 2)),
    (dict(filters=3, kernel_size=4, strides=(2, 3), padding="same"), (9, 10, 1)),
    (dict(filters=3, kernel_size=5), (12, 28, 1)),                       # transposed patch layout
    (dict(filters=2, kernel_size=3, use_bias=False), (5, 5, 2)),
])
def test_forward_matches_naive_loops(kwargs, input_shape):
    model = build(Conv2D(**kwargs), input_shape)
    layer = model.layers[0]
    x = np.random.default_rng(1).standard_normal((3,) + input_shape)
    bias = layer.params["bias"] if layer.use_bias else 0.0
    expected = naive_conv(x, layer.params["kernel"], bias, layer.strides, layer.padding)
    np.testing.assert_allclose(model.forward(x), expected, rtol=1e-10, atol=1e-10)


def test_channels_first_matches_channels_last():
    kw = dict(filters=3, kernel_size=(3, 2), strides=(2, 1), padding="same", activation="tanh")
    last, first = build(Conv2D(**kw), (7, 6, 2)), build(Conv2D(data_format="channels_first", **kw), (2, 7, 6))
    first.params[...] = last.params
    x = np.random.default_rng(2).standard_normal((2, 7, 6, 2))
    y = last.forward(x)
    np.testing.assert_allclose(first.forward(x.transpose(0, 3, 1, 2)), y.transpose(0, 3, 1, 2), rtol=1e-12)
    g = np.random.default_rng(3).standard_normal(y.shape)
    for m in (last, first):
        m.layers[0].need_input_grad = True
    dx_last, dx_first = last.backward(g), first.backward(g.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(dx_first, dx_last.transpose(0, 3, 1, 2), rtol=1e-12)
    np.testing.assert_allclose(first.grads, last.grads, rtol=1e-12)


def test_same_padding_puts_the_odd_pixel_bottom_right():
    """A 2x2 kernel with "same" padding on 3x3 pads nothing on top/left and one row/column at the bottom/right,
    so output (i, j) reads x[i:i+2, j:j+2]: a kernel with a single 1 in position (a, b) shifts by (a, b)."""
    x = np.arange(9.0).reshape(1, 3, 3, 1)
    for a, b in [(0, 0), (1, 1), (0, 1)]:
        model = build(Conv2D(1, 2, padding="same", use_bias=False), (3, 3, 1))
        model.params[...] = 0
        model.layers[0].params["kernel"][a, b, 0, 0] = 1
        shifted = np.zeros((3, 3))
        shifted[:3 - a, :3 - b] = x[0, a:, b:, 0]
        np.testing.assert_array_equal(model.forward(x)[0, :, :, 0], shifted)


@pytest.mark.parametrize("size,k,s,valid,same", [
    (7, 3, 2, 3, 4), (28, 5, 1, 24, 28), (6, 3, 3, 2, 2), (5, 5, 1, 1, 5), (1, 1, 3, 1, 1), (8, 4, 3, 2, 3)])
def test_output_shape_formula(size, k, s, valid, same):
    for padding, out in (("valid", valid), ("same", same)):
        model = Sequential([Conv2D(4, (k, 1), strides=(s, 1), padding=padding)], input_shape=(size, 3, 2)).build()
        assert model.output_shape == (out, 3, 4)
        model = Sequential([Conv2D(4, (1, k), strides=(1, s), padding=padding, data_format="channels_first")],
                           input_shape=(2, 3, size)).build()
        assert model.output_shape == (4, 3, out)


# ---- gradients, dtypes, contract -----------------------------------------------------------------------------
def test_lenet_stack_gradients():
    model = Sequential([Conv2D(3, 3, activation="tanh"), MaxPooling2D(), Conv2D(4, 2, padding="same"),
                        AveragePooling2D(padding="same"), Flatten(), Dense(3)],
                       input_shape=(9, 9, 1), dtype="float64", seed=0).build()
    x = np.random.default_rng(0).standard_normal((2, 9, 9, 1))
    errors = gradient_check(model, x)
    assert max(errors.values()) < 1e-6, errors


def test_float32_stays_float32_and_grads_are_overwritten():
    for kw, shape in [(dict(filters=4, kernel_size=3, padding="same"), (6, 6, 3)),
                      (dict(filters=4, kernel_size=3), (5, 16, 1))]:
        model = Sequential([Conv2D(activation="relu", **kw)], input_shape=shape, seed=0).build()
        layer = model.layers[0]
        layer.need_input_grad = True
        x = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
        y = model.forward(x, True)
        assert y.dtype == np.float32
        dx = model.backward(np.ones_like(y))
        assert dx.dtype == np.float32 and dx.shape == x.shape
        first = model.grads.copy()
        model.forward(x, True)
        model.backward(np.ones_like(y))
        np.testing.assert_array_equal(model.grads, first)   # written, not accumulated


def test_no_input_gradient_when_not_needed():
    model = build(Conv2D(2, 3, padding="same"), (5, 5, 2))
    x = np.random.default_rng(0).standard_normal((2, 5, 5, 2))
    g = np.random.default_rng(1).standard_normal((2, 5, 5, 2))
    layer = model.layers[0]
    assert layer.need_input_grad is False       # the first layer of a Sequential
    model.forward(x)
    assert layer.backward(g) is None
    without = model.grads.copy()
    layer.need_input_grad = True
    model.forward(x)
    assert layer.backward(g).shape == x.shape
    np.testing.assert_array_equal(model.grads, without)


def test_config_round_trip_fields():
    layer = Conv2D(8, 3, strides=2, padding="same", activation="relu", use_bias=False,
                   kernel_initializer="he_normal", data_format="channels_first", name="c1")
    assert layer.get_config() == {"name": "c1", "filters": 8, "kernel_size": [3, 3], "strides": [2, 2],
                                  "padding": "same", "activation": "relu", "use_bias": False,
                                  "kernel_initializer": "he_normal", "bias_initializer": "zeros",
                                  "data_format": "channels_first"}
    model = Sequential([Conv2D(8, (3, 2))], input_shape=(6, 6, 3)).build()
    assert model.layers[0].params["kernel"].shape == (3, 2, 3, 8)
    assert model.count_params() == 3 * 2 * 3 * 8 + 8


# ---- errors ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("input_shape", [(64,), (8, 8), (2, 8, 8, 3)])
def test_rank_mismatch(input_shape):
    with pytest.raises(ValueError, match=r"expects a rank-3 input .*Received: input_shape="
                       + re.escape(str(tuple(input_shape)))):
        Sequential([Conv2D(4, 3)], input_shape=input_shape).build()


def test_kernel_larger_than_input():
    with pytest.raises(ValueError, match="needs images of at least 5x5. Received: height, width = 4, 6"):
        Sequential([Conv2D(4, 5)], input_shape=(4, 6, 1)).build()
    Sequential([Conv2D(4, 5, padding="same")], input_shape=(4, 6, 1)).build()  # fine with padding


@pytest.mark.parametrize("kwargs,received", [
    (dict(filters=0), "filters=0"), (dict(filters=2.5), "filters=2.5"), (dict(filters=True), "filters=True"),
    (dict(kernel_size=0), "kernel_size=0"), (dict(kernel_size=(3,)), r"kernel_size=\(3,\)"),
    (dict(kernel_size=(3, 3, 3)), r"kernel_size=\(3, 3, 3\)"), (dict(kernel_size="3"), "kernel_size='3'"),
    (dict(kernel_size=(3, -1)), r"kernel_size=\(3, -1\)"), (dict(strides=0), "strides=0"),
    (dict(strides=(1, 1.5)), r"strides=\(1, 1.5\)"), (dict(padding="full"), "padding='full'"),
    (dict(data_format="NCHW"), "data_format='NCHW'"), (dict(activation="nope"), "'nope'"),
    (dict(kernel_initializer="bogus"), "kernel_initializer='bogus'"),
    (dict(bias_initializer=3), "bias_initializer=3"),
])
def test_bad_constructor_args(kwargs, received):
    args = {"filters": 2, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match="Received: " + received + "$"):
        Conv2D(**args)
