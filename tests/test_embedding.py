import re

import numpy as np
import pytest
from sparkdl.testing import check_layer, gradient_check

from sparkdl.nn import Dense, Sequential, layer_to_config
from sparkdl.nn.embedding import Embedding
from sparkdl.nn.recurrent import LSTM


@pytest.mark.parametrize("input_shape", [(5,), (2, 3), ()])
def test_check_layer(input_shape):
    # 3 examples x 5 indices drawn from a vocabulary of 4: indices repeat, so the gradient must accumulate
    model = check_layer(Embedding(4, 3), input_shape, input_kind=("int", 4))
    assert model.output_shape == tuple(input_shape) + (3,)


def _model(input_dim=4, output_dim=2, input_shape=(3,)):
    model = Sequential([Embedding(input_dim, output_dim)], input_shape=input_shape, dtype="float64", seed=0).build()
    model.params[...] = np.random.default_rng(0).standard_normal(model.params.size)
    return model, model.layers[0]


def test_forward_looks_up_rows_and_backward_accumulates_repeated_indices():
    model, layer = _model()
    x = np.array([[1, 1, 2], [1, 0, 0]], dtype=np.float64)
    out = model.forward(x, True)
    np.testing.assert_array_equal(out, layer.params["embeddings"][x.astype(int)])
    grad = np.random.default_rng(1).standard_normal(out.shape)
    assert model.backward(grad) is None                    # indices get no gradient
    expected = np.zeros((4, 2))
    for idx, g in zip(x.astype(int).ravel(), grad.reshape(-1, 2)):
        expected[idx] += g
    np.testing.assert_allclose(layer.grads["embeddings"], expected, rtol=1e-12, atol=1e-12)
    # a second backward overwrites (does not add to) the gradient
    model.forward(x, True)
    model.backward(grad)
    np.testing.assert_allclose(layer.grads["embeddings"], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad, lo, hi", [([[0, 4, 1]], "0", "4"), ([[-1, 2, 3]], "-1", "3"),
                                         ([[np.nan, 1, 2]], "nan", "nan")])
def test_out_of_range_indices_name_min_and_max(bad, lo, hi):
    model, _ = _model()
    with pytest.raises(ValueError, match=re.escape("[0, 4)") + f".*min {lo} and max {hi}"):
        model.forward(np.array(bad, dtype=np.float64))


def test_default_initializer_is_keras_uniform():
    layer = Embedding(1000, 8)
    Sequential([layer], input_shape=(3,), seed=0).build()
    e = layer.params["embeddings"]
    assert np.abs(e).max() <= 0.05 and np.abs(e).max() > 0.045 and abs(float(e.mean())) < 0.005
    assert layer_to_config(layer)["config"]["embeddings_initializer"] == "uniform"
    other = Embedding(10, 2, embeddings_initializer="zeros")
    Sequential([other], input_shape=(3,), seed=0).build()
    assert not other.params["embeddings"].any()


@pytest.mark.parametrize("make, message", [
    (lambda: Embedding(0, 3), "Received: input_dim=0"),
    (lambda: Embedding(5, -1), "Received: output_dim=-1"),
    (lambda: Embedding(5, 3, embeddings_initializer="bogus"), "Received: embeddings_initializer='bogus'"),
])
def test_constructor_validation(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_embedding_lstm_dense_gradients():
    """The usual text model: the LSTM returns its input gradient to the Embedding, which ends the chain."""
    model = Sequential([Embedding(6, 4), LSTM(3, return_sequences=True), LSTM(2), Dense(2)],
                       input_shape=(5,), dtype="float64", seed=0).build()
    model.params[...] = np.random.default_rng(0).standard_normal(model.params.size) * 0.5
    x = np.random.default_rng(1).integers(0, 6, (3, 5)).astype(np.float64)
    errors = gradient_check(model, x, check_input=False)
    assert errors["params"] <= 1e-6, errors
