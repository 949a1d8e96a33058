import re

import numpy as np
import pytest
from sparkdl.testing import check_layer

from sparkdl.nn import Sequential, layer_from_config, layer_to_config
from sparkdl.nn.recurrent import GRU, LSTM, SimpleRNN

LAYERS = {
    "simple_rnn": lambda **kw: SimpleRNN(3, **kw),
    "simple_rnn_relu_no_bias": lambda **kw: SimpleRNN(2, activation="relu", use_bias=False, **kw),
    "simple_rnn_gelu_exact": lambda **kw: SimpleRNN(2, activation="gelu_exact", **kw),
    "lstm": lambda **kw: LSTM(2, **kw),
    "lstm_relu_tanh": lambda **kw: LSTM(3, activation="relu", recurrent_activation="tanh", **kw),
    "lstm_gelu_softmax_no_bias": lambda **kw: LSTM(2, activation="gelu", recurrent_activation="softmax",
                                                   use_bias=False, **kw),
    "gru": lambda **kw: GRU(3, **kw),
    "gru_reset_before": lambda **kw: GRU(2, reset_after=False, **kw),
    "gru_elu_no_bias": lambda **kw: GRU(2, activation="elu", use_bias=False, **kw),
}


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_check_layer(kind, return_sequences, go_backwards):
    layer = LAYERS[kind](return_sequences=return_sequences, go_backwards=go_backwards)
    model = check_layer(layer, (4, 3), batch=2)
    assert model.output_shape == ((4, layer.units) if return_sequences else (layer.units,))


# -- references written from the Keras equations, one step at a time ---------------------------------------------
def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


ACT = {"tanh": np.tanh, "sigmoid": sigmoid, "relu": lambda x: np.maximum(x, 0), "softmax": softmax}


def ref_simple_rnn(x, w, act="tanh"):
    h, out = np.zeros((len(x), w["recurrent_kernel"].shape[0])), []
    for t in range(x.shape[1]):
        h = ACT[act](x[:, t] @ w["kernel"] + h @ w["recurrent_kernel"] + w.get("bias", 0.0))
        out.append(h)
    return np.stack(out, axis=1)


def ref_lstm(x, w, act="tanh", ract="sigmoid"):
    u = w["recurrent_kernel"].shape[0]
    h, c, out = np.zeros((len(x), u)), np.zeros((len(x), u)), []
    for t in range(x.shape[1]):
        z = x[:, t] @ w["kernel"] + h @ w["recurrent_kernel"] + w.get("bias", 0.0)
        i, f, g, o = ACT[ract](z[:, :u]), ACT[ract](z[:, u:2 * u]), ACT[act](z[:, 2 * u:3 * u]), ACT[ract](z[:, 3 * u:])
        c = f * c + i * g
        h = o * ACT[act](c)
        out.append(h)
    return np.stack(out, axis=1)


def ref_gru(x, w, reset_after=True):
    k, rk = w["kernel"], w["recurrent_kernel"]
    u = rk.shape[0]
    b = w.get("bias", np.zeros((2, 3 * u)) if reset_after else np.zeros(3 * u))
    b_in, b_rec = (b[0], b[1]) if reset_after else (b, None)
    h, out = np.zeros((len(x), u)), []
    for t in range(x.shape[1]):
        xz = x[:, t] @ k + b_in
        x_z, x_r, x_h = xz[:, :u], xz[:, u:2 * u], xz[:, 2 * u:]
        if reset_after:
            inner = h @ rk + b_rec
            z, r = sigmoid(x_z + inner[:, :u]), sigmoid(x_r + inner[:, u:2 * u])
            hh = np.tanh(x_h + r * inner[:, 2 * u:])
        else:
            z, r = sigmoid(x_z + h @ rk[:, :u]), sigmoid(x_r + h @ rk[:, u:2 * u])
            hh = np.tanh(x_h + (r * h) @ rk[:, 2 * u:])
        h = z * h + (1 - z) * hh
        out.append(h)
    return np.stack(out, axis=1)


def _random_model(layer, input_shape=(5, 3), seed=0):
    model = Sequential([layer], input_shape=input_shape, dtype="float64", seed=seed).build()
    model.params[...] = np.random.default_rng(seed).standard_normal(model.params.size) * 0.7
    weights = {k.split(".", 1)[1]: v for k, v in model.get_weights().items()}
    return model, weights


REFERENCES = [
    (lambda **kw: SimpleRNN(3, **kw), ref_simple_rnn),
    (lambda **kw: SimpleRNN(3, activation="relu", use_bias=False, **kw), lambda x, w: ref_simple_rnn(x, w, "relu")),
    (lambda **kw: LSTM(3, **kw), ref_lstm),
    (lambda **kw: LSTM(2, activation="relu", recurrent_activation="tanh", **kw),
     lambda x, w: ref_lstm(x, w, "relu", "tanh")),
    (lambda **kw: LSTM(2, recurrent_activation="softmax", **kw), lambda x, w: ref_lstm(x, w, ract="softmax")),
    (lambda **kw: GRU(3, **kw), ref_gru),
    (lambda **kw: GRU(3, use_bias=False, **kw), ref_gru),
    (lambda **kw: GRU(3, reset_after=False, **kw), lambda x, w: ref_gru(x, w, reset_after=False)),
]


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("make, reference", REFERENCES)
def test_forward_matches_step_by_step_reference(make, reference, go_backwards):
    x = np.random.default_rng(1).standard_normal((4, 5, 3))
    model, weights = _random_model(make(return_sequences=True, go_backwards=go_backwards))
    expected = reference(x[:, ::-1] if go_backwards else x, weights)  # Keras: reversed input, output unflipped
    np.testing.assert_allclose(model.forward(x), expected, rtol=1e-12, atol=1e-12)
    last, _ = _random_model(make(go_backwards=go_backwards))
    np.testing.assert_allclose(last.forward(x), expected[:, -1], rtol=1e-12, atol=1e-12)


def test_lstm_and_gru_match_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).standard_normal((4, 5, 3))
    u = 3

    lstm, w = _random_model(LSTM(u, return_sequences=True))
    ref = torch.nn.LSTM(3, u, batch_first=True).double()
    with torch.no_grad():   # torch's gate order i, f, g, o is Keras's i, f, c, o; torch's weights are transposed
        ref.weight_ih_l0.copy_(torch.from_numpy(w["kernel"].T))
        ref.weight_hh_l0.copy_(torch.from_numpy(w["recurrent_kernel"].T))
        ref.bias_ih_l0.copy_(torch.from_numpy(w["bias"]))
        ref.bias_hh_l0.zero_()
        np.testing.assert_allclose(lstm.forward(x), ref(torch.from_numpy(x))[0].numpy(), rtol=1e-10, atol=1e-12)

    gru, w = _random_model(GRU(u, return_sequences=True))
    ref = torch.nn.GRU(3, u, batch_first=True).double()

    def r_z_n(m):  # Keras z, r, h -> torch r, z, n (torch's GRU is reset_after)
        return np.concatenate([m[..., u:2 * u], m[..., :u], m[..., 2 * u:]], axis=-1)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.from_numpy(r_z_n(w["kernel"]).T))
        ref.weight_hh_l0.copy_(torch.from_numpy(r_z_n(w["recurrent_kernel"]).T))
        ref.bias_ih_l0.copy_(torch.from_numpy(r_z_n(w["bias"][0])))
        ref.bias_hh_l0.copy_(torch.from_numpy(r_z_n(w["bias"][1])))
        np.testing.assert_allclose(gru.forward(x), ref(torch.from_numpy(x))[0].numpy(), rtol=1e-10, atol=1e-12)


# -- weights: Keras shapes, counts and initialization ----------------------------------------------------------------
@pytest.mark.parametrize("layer, shapes, count", [
    (SimpleRNN(4), {"kernel": (3, 4), "recurrent_kernel": (4, 4), "bias": (4,)}, 32),
    (LSTM(4), {"kernel": (3, 16), "recurrent_kernel": (4, 16), "bias": (16,)}, 128),
    (GRU(4), {"kernel": (3, 12), "recurrent_kernel": (4, 12), "bias": (2, 12)}, 108),
    (GRU(4, reset_after=False), {"kernel": (3, 12), "recurrent_kernel": (4, 12), "bias": (12,)}, 96),
    (LSTM(4, use_bias=False), {"kernel": (3, 16), "recurrent_kernel": (4, 16)}, 112),
])
def test_keras_weight_shapes_and_counts(layer, shapes, count):
    model = Sequential([layer], input_shape=(7, 3), seed=0).build()
    assert {k: v.shape for k, v in layer.params.items()} == shapes
    assert model.count_params() == count


def test_unit_forget_bias():
    u = 3
    for kwargs, expected in [({}, [0] * u + [1] * u + [0] * 2 * u),
                             ({"unit_forget_bias": False}, [0] * 4 * u),
                             ({"bias_initializer": "ones"}, [1] * 4 * u)]:
        layer = LSTM(u, **kwargs)
        Sequential([layer], input_shape=(5, 2), seed=0).build()
        np.testing.assert_array_equal(layer.params["bias"], expected)
    assert "unit_forget_bias" in layer_to_config(LSTM(u))["config"]


def test_initializers_are_keras_like():
    layer = LSTM(3, kernel_initializer="zeros")
    Sequential([layer], input_shape=(5, 2), seed=0).build()
    rk = layer.params["recurrent_kernel"].astype(np.float64)
    np.testing.assert_allclose(rk @ rk.T, np.eye(3), atol=1e-6)   # orthogonal rows
    assert not layer.params["kernel"].any()


# -- contract details ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: SimpleRNN(3, return_sequences=True), lambda: LSTM(2, return_sequences=True),
                                  lambda: GRU(2, return_sequences=True), lambda: GRU(2, reset_after=False)])
def test_backward_overwrites_gradients(make):
    model, _ = _random_model(make())
    for layer in model.layers:
        layer.need_input_grad = True
    x = np.random.default_rng(3).standard_normal((2, 5, 3))
    out = model.forward(x, True)
    g = np.random.default_rng(4).standard_normal(out.shape)
    dx1, grads1 = model.backward(g), model.grads.copy()
    model.forward(x, True)
    dx2 = model.backward(g)
    np.testing.assert_array_equal(model.grads, grads1)
    np.testing.assert_array_equal(dx1, dx2)


def test_no_input_gradient_for_first_layer():
    model, _ = _random_model(LSTM(2))
    x = np.random.default_rng(0).standard_normal((2, 5, 3))
    assert model.backward(np.ones_like(model.forward(x, True))) is None
    assert np.abs(model.grads).sum() > 0


def test_float32_dtype_is_kept():
    layer = GRU(3, return_sequences=True)
    model = Sequential([layer], input_shape=(4, 2), seed=0).build()
    out = model.forward(np.ones((2, 4, 2), np.float32), True)
    assert out.dtype == np.float32 and out.shape == (2, 4, 3)


@pytest.mark.parametrize("cls", [SimpleRNN, LSTM, GRU])
@pytest.mark.parametrize("input_shape", [(5,), (2, 3, 4)])
def test_rank_errors_name_expected_and_received_shape(cls, input_shape):
    with pytest.raises(ValueError, match=r"\(timesteps, features\).*" + re.escape(str(input_shape))):
        cls(2).build(input_shape)
    with pytest.raises(ValueError, match=r"\(timesteps, features\)"):
        Sequential([cls(2)], input_shape=input_shape).build()


@pytest.mark.parametrize("make, message", [
    (lambda: SimpleRNN(0), "Received: units=0"),
    (lambda: LSTM(2.5), "Received: units=2.5"),
    (lambda: GRU(2, reset_after="yes"), "Received: reset_after='yes'"),
    (lambda: LSTM(2, return_sequences=1), "Received: return_sequences=1"),
    (lambda: LSTM(2, unit_forget_bias=None), "Received: unit_forget_bias=None"),
    (lambda: SimpleRNN(2, recurrent_initializer="bogus"), "Received: recurrent_initializer='bogus'"),
    (lambda: LSTM(2, recurrent_activation="bogus"), "bogus"),
    (lambda: GRU(2, activation="bogus"), "bogus"),
])
def test_constructor_validation(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_config_round_trip_keeps_every_argument():
    layer = GRU(5, activation="relu", recurrent_activation="tanh", use_bias=False, kernel_initializer="he_normal",
                recurrent_initializer="glorot_normal", bias_initializer="ones", reset_after=False,
                return_sequences=True, go_backwards=True, name="g")
    config = layer_to_config(layer)
    assert config["config"] == {"name": "g", "units": 5, "activation": "relu", "recurrent_activation": "tanh",
                                "use_bias": False, "kernel_initializer": "he_normal",
                                "recurrent_initializer": "glorot_normal", "bias_initializer": "ones",
                                "reset_after": False, "return_sequences": True, "go_backwards": True}
    assert layer_to_config(layer_from_config(config)) == config

