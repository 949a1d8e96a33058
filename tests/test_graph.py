"""GraphModel: whole-model float64 gradient checks (params and inputs) for residual, branching and multi-input
graphs, config and file round trips, training, and the wiring errors."""
import json

import numpy as np
import pytest

from sparkdl.testing import TOL, gradient_check, numeric_grad, rel_error
from sparkdl import io, optim
from sparkdl.nn import Activation, Dense, Flatten, Sequential
from sparkdl.nn.graph import GraphModel, InputBatch
from sparkdl.nn.layer import Input, Tensor
from sparkdl.nn.merge import Add, Concatenate
from sparkdl.nn.model import model_from_config
from sparkdl.nn.normalization import BatchNormalization, LayerNormalization


def residual(dtype="float64", seed=0, bn=False):
    """Dense -> Dense -> Add with the skip, then a head."""
    inp = Input((6,), name="features")
    h = Dense(6, activation="tanh")(inp)
    if bn:
        h = BatchNormalization()(h)
    h = Dense(6)(h)
    s = Activation("relu")(Add()([inp, h]))
    out = Dense(3, activation="softmax")(s)
    return GraphModel(inputs=inp, outputs=out, dtype=dtype, seed=seed)


def two_branch(dtype="float64", seed=0):
    """An image through Flatten, two Dense branches joined by Concatenate and by Add."""
    inp = Input((4, 3, 2), name="image")
    x = Flatten()(inp)
    y = Dense(5, activation="tanh")(x)
    z = Dense(5, activation="sigmoid")(x)
    c = Concatenate(axis=-1)([Add()([y, z]), y])
    out = Dense(2)(LayerNormalization()(c))
    return GraphModel(inp, out, dtype=dtype, seed=seed)


def two_inputs(dtype="float64", seed=0):
    a, b = Input((3,), name="a"), Input((2, 2), name="b")
    h = Concatenate()([Dense(4, activation="tanh")(a), Dense(4)(Flatten()(b))])
    out = Dense(2, activation="softmax")(Add()([h, Dense(8)(Flatten()(b))]))
    return GraphModel(inputs=[a, b], outputs=[out], dtype=dtype, seed=seed)


def randomize(model, seed=1):
    model.params[...] = np.random.default_rng(seed).standard_normal(model.params.size) * 0.5
    return model


def assert_grads(errors):
    for what, err in errors.items():
        assert err <= TOL, f"gradient w.r.t. {what}: relative error {err:.2e}"


# -- gradients ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("training", [False, True])
def test_residual_gradients(training):
    model = randomize(residual(bn=True))
    x = np.random.default_rng(2).standard_normal((5, 6))
    assert_grads(gradient_check(model, x, training=training))


def test_two_branch_gradients():
    model = randomize(two_branch())
    x = np.random.default_rng(3).standard_normal((3, 4, 3, 2))
    errors = gradient_check(model, x)
    assert set(errors) == {"params", "input"}
    assert_grads(errors)


def test_concatenate_inner_axis_and_three_way_add():
    inp = Input((3, 2))
    a, b = Dense(2)(inp), Dense(2, activation="tanh")(inp)
    c = Concatenate(axis=1)([a, b, inp])                 # (None, 9, 2)
    out = Dense(1)(Flatten()(Add()([c, c, Activation("tanh")(c)])))
    model = randomize(GraphModel(inp, out, dtype="float64"))
    assert c.shape == (9, 2) and model.input_shape == (3, 2) and model.output_shape == (1,)
    assert_grads(gradient_check(model, np.random.default_rng(4).standard_normal((4, 3, 2))))


def test_multi_input_gradients():
    model = randomize(two_inputs())
    rng = np.random.default_rng(5)
    x = {"a": rng.standard_normal((3, 3)), "b": rng.standard_normal((3, 2, 2))}
    assert_grads(gradient_check(model, x, check_input=False))
    r = rng.standard_normal((3, 2))
    for layer in model.layers:
        layer.need_input_grad = True
    model.forward(x)
    grad_in = model.backward(r)
    assert set(grad_in) == {"a", "b"}
    for name in ("a", "b"):
        numeric = numeric_grad(lambda: float((model.forward(x) * r).sum()), x[name], np.arange(x[name].size))
        assert rel_error(grad_in[name], numeric) <= TOL


def test_need_input_grad_and_execution_order():
    model = residual(bn=True)
    names = [layer.name for layer in model.layers]
    assert names == ["dense", "batch_normalization", "dense_1", "add", "activation", "dense_2"]
    assert [layer.need_input_grad for layer in model.layers] == [False, True, True, True, True, True]
    x = np.random.default_rng(6).standard_normal((4, 6)).astype(np.float32)
    r = np.random.default_rng(7).standard_normal((4, 3)).astype(np.float32)
    model.forward(x, True)
    model.backward(r)   # the first Dense skips its input gradient (Add still passes the skip's along: free)
    pruned = model.grads.copy()
    for layer in model.layers:
        layer.need_input_grad = True
    model.forward(x, True)
    assert model.backward(r).shape == x.shape
    np.testing.assert_array_equal(model.grads, pruned)
    branches = two_branch(dtype="float32")   # Flatten gets no gradient from either Dense, so it is skipped
    assert [layer.need_input_grad for layer in branches.layers][:3] == [False, False, False]
    xb = np.ones((2, 4, 3, 2), np.float32)
    assert branches.backward(np.ones_like(branches.forward(xb))) is None


def test_deep_chain_has_no_recursion_limit():
    inp = Input((2,))
    x = inp
    for _ in range(1500):
        x = Activation("linear")(x)
    model = GraphModel(inp, Dense(1)(x))
    assert len(model.layers) == 1501
    assert model.predict(np.ones((2, 2), np.float32)).shape == (2, 1)


# -- config, files, training ---------------------------------------------------------------------------
@pytest.mark.parametrize("make", [residual, two_branch, two_inputs])
def test_config_and_file_round_trip(make, tmp_path):
    model = make(dtype="float32", seed=3)
    config = model.get_config()
    assert json.loads(json.dumps(config)) == config
    rebuilt = model_from_config(model.to_json())
    assert rebuilt.get_config() == config
    assert [type(l) for l in rebuilt.layers] == [type(l) for l in model.layers]
    rebuilt.set_flat_params(model.get_flat_params())
    rng = np.random.default_rng(8)
    if len(model.inputs) == 1:
        x = rng.standard_normal((5,) + model.input_shape).astype(np.float32)
    else:
        x = {k: rng.standard_normal((5,) + s).astype(np.float32) for k, s in model.input_shapes.items()}
    np.testing.assert_array_equal(rebuilt.predict(x), model.predict(x))
    path = tmp_path / "graph.npz"
    io.save_model(model, path)
    loaded = io.load_model(path)
    assert isinstance(loaded, GraphModel) and loaded.get_config() == config
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_running_statistics_travel_in_the_file(tmp_path):
    model = residual(dtype="float32", bn=True)
    x = np.random.default_rng(9).standard_normal((16, 6)).astype(np.float32)
    model.forward(x, training=True)
    assert model.get_weights()["batch_normalization.moving_mean"].any()
    io.save_model(model, tmp_path / "bn.npz")
    loaded = io.load_model(tmp_path / "bn.npz")
    np.testing.assert_array_equal(loaded.get_flat_state(), model.get_flat_state())
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def _blobs(rng, n=96):
    y = rng.integers(0, 3, n)
    centers = rng.standard_normal((3, 6)) * 2
    return (centers[y] + rng.standard_normal((n, 6)) * 0.5).astype(np.float32), y


def test_fit_decreases_loss():
    rng = np.random.default_rng(10)
    x, y = _blobs(rng)
    model = residual(dtype="float32", seed=1, bn=True).compile(optim.Adam(learning_rate=0.01),
                                                              "sparse_categorical_crossentropy", ["accuracy"])
    history = model.fit(x, y, epochs=8, batch_size=16, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert model.evaluate(x, y)["accuracy"] > 0.9


def test_fit_predict_evaluate_with_dict_inputs():
    rng = np.random.default_rng(11)
    x6, y = _blobs(rng)
    x = {"a": x6[:, :3], "b": x6[:, 3:].repeat(2, axis=1)[:, :4].reshape(-1, 2, 2)}
    model = two_inputs(dtype="float32", seed=2).compile(optim.Adam(learning_rate=0.02),
                                                        "sparse_categorical_crossentropy", ["accuracy"])
    model2 = two_inputs(dtype="float32", seed=2)
    y2 = (y > 0).astype(np.int64)   # two outputs: a binary problem
    history = model.fit(x, y2, epochs=6, batch_size=16, validation_data=(x, y2), verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert "val_accuracy" in history.history
    assert model.predict(x, batch_size=7).shape == (96, 2)
    assert model2.predict(InputBatch(x)).shape == (96, 2)
    assert model.evaluate_sums(x, y2, batch_size=10).n == 96   # counted by rows, not by inputs


# -- errors ---------------------------------------------------------------------------------------------
def test_add_with_mismatched_shapes_names_both():
    inp = Input((3,))
    with pytest.raises(ValueError, match=r"Add needs inputs of the same shape. Received: input shapes "
                                         r"\(None, 4\), \(None, 5\)"):
        Add()([Dense(4)(inp), Dense(5)(inp)])


def test_merge_errors():
    inp = Input((3, 2))
    with pytest.raises(ValueError, match=r"Concatenate\(axis=-1\) needs inputs .* Received: input shapes "
                                         r"\(None, 3, 2\), \(None, 4\)"):
        Concatenate()([inp, Dense(4)(Flatten()(inp))])
    with pytest.raises(ValueError, match="must be called on a list of at least 2 tensors"):
        Add()(inp)
    with pytest.raises(ValueError, match="must be called on a list of at least 2 tensors"):
        Sequential([Add()], input_shape=(3,)).build()
    with pytest.raises(ValueError, match=r"Received: axis=0"):
        Concatenate(axis=0)


def test_layer_called_twice_is_refused():
    inp = Input((3,))
    dense = Dense(3)
    dense(inp)
    with pytest.raises(ValueError, match="can be called only once"):
        dense(inp)


def test_layer_on_an_array_is_refused():
    with pytest.raises(TypeError, match="symbolic tensor"):
        Dense(3)(np.zeros((2, 3)))


def test_output_not_connected_to_inputs():
    a, b = Input((3,), name="a"), Input((3,), name="b")
    out = Dense(2)(b)
    with pytest.raises(ValueError, match=r"depends on \[<Tensor Input name='b'"):
        GraphModel(a, out)
    c = Input((3,), name="c")
    with pytest.raises(ValueError, match=r"inputs \[<Tensor Input name='c'.* are not connected"):
        GraphModel([b, c], out)
    with pytest.raises(ValueError, match="at least one layer"):
        GraphModel(a, a)
    with pytest.raises(ValueError, match="exactly one output"):
        GraphModel(b, [out, out])
    with pytest.raises(ValueError, match="made by Input"):
        GraphModel(out, out)


def test_a_layer_lives_in_one_model():
    inp = Input((3,))
    out = Dense(2)(inp)
    GraphModel(inp, out)
    with pytest.raises(ValueError, match="already belongs to another GraphModel"):
        GraphModel(inp, out)


def test_names_must_be_unique():
    inp = Input((3,), name="dense")
    with pytest.raises(ValueError, match=r"an input and a layer share the name\(s\) \['dense'\]"):
        GraphModel(inp, Dense(2)(inp))
    a, b = Input((3,), name="x"), Input((3,), name="x")
    with pytest.raises(ValueError, match="two inputs named 'x'"):
        GraphModel([a, b], Add()([a, b]))
    a, b = Input((3,)), Input((3,), name="input")
    model = GraphModel([a, b], Add()([a, b]))
    assert model.input_names == ["input_1", "input"] and model.input_shape is None


def test_dict_input_errors():
    model = two_inputs(dtype="float32")
    good = {"a": np.zeros((4, 3)), "b": np.zeros((4, 2, 2))}
    with pytest.raises(ValueError, match=r"missing \['b'\], unexpected \['c'\]"):
        model.predict({"a": good["a"], "c": good["b"]})
    with pytest.raises(ValueError, match=r"x\['b'\] must have shape \(n, 2, 2\) for input 'b'; "
                                         r"received shape \(4, 4\)"):
        model.predict({"a": good["a"], "b": np.zeros((4, 4))})
    with pytest.raises(ValueError, match=r"same number of rows; received \{'a': 4, 'b': 3\}"):
        model.predict({"a": good["a"], "b": good["b"][:3]})
    with pytest.raises(ValueError, match="must be a dict"):
        model.predict(good["a"])


def test_tensor_repr_and_input_validation():
    inp = Input(4, name="v")
    assert isinstance(inp, Tensor) and inp.shape == (4,)
    assert repr(Dense(2, name="d")(inp)) == "<Tensor Dense name='d' shape=(None, 2)>"
    with pytest.raises(ValueError, match="Received: shape="):
        Input((0, 2))
    with pytest.raises(ValueError, match="Received: name=3"):
        Input((2,), name=3)
