"""BatchNormalization and LayerNormalization: the shared layer check in both modes and layouts, the running
statistics against a hand computation (Keras 3 rule, biased variance), outputs against plain numpy."""
import numpy as np
import pytest

from sparkdl.testing import check_layer
from sparkdl.nn import Sequential
from sparkdl.nn.normalization import BatchNormalization, LayerNormalization


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("input_shape,axis", [((4,), -1), ((3, 3, 2), -1), ((3, 2, 2), 1), ((2, 3, 2), 2)])
def test_batch_norm_check_layer(training, input_shape, axis):
    check_layer(BatchNormalization(axis=axis, momentum=0.9), input_shape, batch=4, training=training)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("center,scale", [(False, True), (True, False), (False, False)])
def test_batch_norm_without_affine(training, center, scale):
    check_layer(BatchNormalization(center=center, scale=scale), (3, 2), batch=3, training=training)


def _bn_model(layer, input_shape, dtype="float64"):
    return Sequential([layer], input_shape=input_shape, dtype=dtype, seed=0).build()


def test_batch_norm_moving_statistics_by_hand():
    rng = np.random.default_rng(1)
    layer = BatchNormalization(momentum=0.8, epsilon=1e-3)
    model = _bn_model(layer, (2, 2, 3))
    assert model.count_params() == 6 and model.state.size >= 6
    mm, mv = np.zeros(3), np.ones(3)
    for _ in range(2):
        x = rng.standard_normal((5, 2, 2, 3)) * 3 + 1
        gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
        layer.params["gamma"][...], layer.params["beta"][...] = gamma, beta
        out = model.forward(x, training=True)
        mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))   # biased, as Keras 3
        np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-3) * gamma + beta, rtol=1e-12, atol=1e-12)
        mm, mv = mm * 0.8 + mean * 0.2, mv * 0.8 + var * 0.2
        np.testing.assert_allclose(layer.state["moving_mean"], mm, rtol=1e-12)
        np.testing.assert_allclose(layer.state["moving_variance"], mv, rtol=1e-12)
    weights = model.get_weights()   # the running stats are named state, next to the params
    np.testing.assert_allclose(weights["batch_normalization.moving_mean"], mm, rtol=1e-12)
    before = model.get_flat_state()
    out = model.forward(x, training=False)   # inference reads the running stats and leaves them alone
    np.testing.assert_allclose(out, (x - mm) / np.sqrt(mv + 1e-3) * gamma + beta, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(model.get_flat_state(), before)


def test_batch_norm_channels_first_statistics():
    layer = BatchNormalization(axis=1, momentum=0.0, center=False, scale=False)
    model = _bn_model(layer, (3, 2, 2))
    x = np.random.default_rng(2).standard_normal((4, 3, 2, 2))
    model.forward(x, training=True)
    np.testing.assert_allclose(layer.state["moving_mean"], x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(layer.state["moving_variance"], x.var(axis=(0, 2, 3)), rtol=1e-12)


def test_batch_norm_float32_and_no_input_grad():
    layer = BatchNormalization()
    model = _bn_model(layer, (4,), dtype="float32")
    x = np.random.default_rng(3).standard_normal((8, 4)).astype(np.float32)
    out = model.forward(x, training=True)
    assert out.dtype == np.float32 and model.state.dtype == np.float32
    assert layer.need_input_grad is False   # first layer of the model
    assert model.backward(np.ones_like(out)) is None
    np.testing.assert_allclose(layer.grads["beta"], 8.0)


def test_layer_norm_matches_numpy():
    layer = LayerNormalization(axis=[-2, -1], epsilon=1e-5)
    model = _bn_model(layer, (3, 4))
    x = np.random.default_rng(4).standard_normal((2, 3, 4))
    gamma, beta = layer.params["gamma"], layer.params["beta"]
    assert gamma.shape == beta.shape == (3, 4)
    gamma[...] = np.arange(12).reshape(3, 4) / 6
    mean, var = x.mean(axis=(1, 2), keepdims=True), x.var(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(model.forward(x), (x - mean) / np.sqrt(var + 1e-5) * gamma, rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_array_equal(model.forward(x, training=True), model.forward(x))


@pytest.mark.parametrize("input_shape,axis", [((5,), -1), ((3, 4), -1), ((3, 4), 1), ((2, 3, 2), [1, 3]),
                                              ((2, 3), [-1, -2])])
def test_layer_norm_check_layer(input_shape, axis):
    check_layer(LayerNormalization(axis=axis), input_shape)


def test_layer_norm_without_affine():
    check_layer(LayerNormalization(center=False, scale=False), (4,))


@pytest.mark.parametrize("make,message", [
    (lambda: BatchNormalization(momentum=1.5), "Received: momentum=1.5"),
    (lambda: BatchNormalization(epsilon=0), "Received: epsilon=0"),
    (lambda: BatchNormalization(axis=0), "Received: axis=0"),
    (lambda: BatchNormalization(axis=1.0), "Received: axis=1.0"),
    (lambda: BatchNormalization(gamma_initializer="nope"), "Received: gamma_initializer='nope'"),
    (lambda: BatchNormalization(moving_variance_initializer="nope"), "Received: moving_variance_initializer="),
    (lambda: LayerNormalization(axis=[]), "Received: axis=[]"),
    (lambda: LayerNormalization(axis=[1, 0]), "Received: axis=0"),
])
def test_constructor_errors(make, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        make()


def test_build_errors_name_the_shape():
    with pytest.raises(ValueError, match=r"axis=3 is out of range for input shape \(None, 4, 2\)"):
        Sequential([BatchNormalization(axis=3)], input_shape=(4, 2)).build()
    with pytest.raises(ValueError, match=r"axis=-3 is out of range"):
        Sequential([LayerNormalization(axis=-3)], input_shape=(4, 2)).build()
    with pytest.raises(ValueError, match="same axis twice"):
        Sequential([LayerNormalization(axis=[2, -1])], input_shape=(4, 2)).build()


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_channels_last_agrees_with_channels_first(training):
    """The channels-last path (rows of the batch against tiled per-channel values) against the general one, on
    the same numbers in NCHW: outputs, input gradient, gamma and beta gradients, running statistics."""
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, (5, 4, 3, 6))
    grad = rng.normal(size=x.shape)
    got = []
    for axis, xt, gt in ((-1, x, grad), (1, x.transpose(0, 3, 1, 2), grad.transpose(0, 3, 1, 2))):
        layer = BatchNormalization(axis=axis, momentum=0.7)
        _bn_model(layer, xt.shape[1:])
        layer.params["gamma"][...] = rng.normal(size=6) if not got else got[0][4]
        layer.params["beta"][...] = rng.normal(size=6) if not got else got[0][5]
        layer.need_input_grad = True
        y = layer.forward(xt, training=training)
        dx = layer.backward(gt)
        if axis == 1:
            y, dx = y.transpose(0, 2, 3, 1), dx.transpose(0, 2, 3, 1)
        got.append((y, dx, layer.grads["gamma"].copy(), layer.grads["beta"].copy(), layer.params["gamma"].copy(),
                    layer.params["beta"].copy(), layer.state["moving_mean"].copy(),
                    layer.state["moving_variance"].copy()))
    for a, b in zip(*got):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
