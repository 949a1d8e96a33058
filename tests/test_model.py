"""Sequential models end to end: flat buffers, training on real data, files, callbacks, errors."""
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import sparkdl
from sparkdl import io, optim
from sparkdl.datasets import load_digits
from sparkdl.nn import Dense, Dropout, Sequential, layer_from_config
from sparkdl.train import EarlyStopping, ModelCheckpoint
from sparkdl.testing import gradient_check


def mlp(seed=0, **kw):
    return Sequential([Dense(32, activation="relu"), Dropout(0.1), Dense(10, activation="softmax")],
                      input_shape=(64,), seed=seed, **kw)


def test_weights_are_views_of_one_flat_buffer():
    m = mlp().build()
    k = m.layers[0].params["kernel"]
    assert k.base is m.params or np.shares_memory(k, m.params)
    m.params[...] = 0.5
    assert (m.layers[2].params["bias"] == 0.5).all()
    assert m.count_params() == 64 * 32 + 32 + 32 * 10 + 10
    flat = m.get_flat_params()
    flat[:] = 1.0
    m.set_flat_params(flat)
    assert (m.layers[0].params["kernel"] == 1.0).all()
    with pytest.raises(ValueError, match=r"flat params must have shape \(\d+,\) for this model; received shape \(3,\)"):
        m.set_flat_params(np.zeros(3))
    assert sorted(m.get_weights()) == ["dense.bias", "dense.kernel", "dense_1.bias", "dense_1.kernel"]


def test_set_weights_is_loud_about_names_and_shapes():
    m = mlp().build()
    w = m.get_weights()
    w.pop("dense.bias")
    w["extra.kernel"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"missing \['dense.bias'\], unexpected \['extra.kernel'\]"):
        m.set_weights(w)
    w = m.get_weights()
    w["dense.bias"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"'dense.bias' must have shape \(32,\); received \(5,\)"):
        m.set_weights(w)


def test_same_seed_same_weights_different_seed_different():
    assert np.array_equal(mlp(seed=3).get_flat_params(), mlp(seed=3).get_flat_params())
    assert not np.array_equal(mlp(seed=3).get_flat_params(), mlp(seed=4).get_flat_params())


def test_sequential_gradient_check_float64():
    m = Sequential([Dense(5, activation="tanh"), Dense(4, activation="gelu"), Dense(3, activation="softmax")],
                   input_shape=(6,), dtype="float64", seed=0).build()
    x = np.random.default_rng(0).standard_normal((4, 6))
    errors = gradient_check(m, x)
    assert max(errors.values()) <= 1e-6, errors


def test_loss_gradient_check_through_model_float64():
    """d(loss)/d(params) of a compiled model (fused softmax + cross-entropy) against finite differences."""
    m = Sequential([Dense(5, activation="relu"), Dense(3, activation="softmax")], input_shape=(4,),
                   dtype="float64", seed=2)
    m.compile("sgd", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)

    def loss():
        return float(m.loss_and_grad(m.forward(x, True), y)[0])

    out = m.forward(x, True)
    m.backward(m.loss_and_grad(out, y)[1])
    analytic = m.grads.copy()
    from sparkdl.testing import numeric_grad, rel_error
    idx = np.flatnonzero(np.ones(m.params.size))
    assert rel_error(analytic, numeric_grad(loss, m.params, idx)) <= 1e-6


def test_mlp_learns_digits(tmp_path):
    xtr, ytr = load_digits("train")
    xte, yte = load_digits("test")
    m = Sequential([Dense(128, activation="relu"), Dense(64, activation="relu"), Dense(10, activation="softmax")],
                   input_shape=(64,), seed=0)
    m.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    history = m.fit(xtr, ytr, epochs=15, batch_size=32, validation_data=(xte, yte), verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    result = m.evaluate(xte, yte)
    assert result["accuracy"] >= 0.96, result
    # the file round trip predicts identically and keeps compile settings and optimizer state
    path = tmp_path / "mlp.npz"
    m.save(path)
    loaded = sparkdl.load_model(path)
    np.testing.assert_array_equal(loaded.predict(xte), m.predict(xte))
    assert loaded.evaluate(xte, yte) == result
    assert loaded.optimizer.iterations == m.optimizer.iterations
    np.testing.assert_array_equal(loaded.optimizer.get_state()["buffer"], m.optimizer.get_state()["buffer"])


def test_resumed_training_matches_uninterrupted(tmp_path):
    """Saving mid-training and continuing from the file gives the same params as not stopping."""
    xtr, ytr = load_digits("train")
    a = mlp(seed=5).compile(optim.Adam(0.01), "sparse_categorical_crossentropy")
    a.fit(xtr, ytr, epochs=1, batch_size=64, shuffle=False, verbose=0)
    a.save(tmp_path / "a.npz")
    b = sparkdl.load_model(tmp_path / "a.npz")
    for m in (a, b):
        m.layers[1].rate = 0.0  # dropout masks come from each model's own generator
        m.fit(xtr, ytr, epochs=1, batch_size=64, shuffle=False, verbose=0)
    np.testing.assert_allclose(a.get_flat_params(), b.get_flat_params(), rtol=1e-6, atol=1e-7)


def test_early_stopping_and_checkpoint(tmp_path):
    xtr, ytr = load_digits("train")
    xte, yte = load_digits("test")
    m = mlp().compile(optim.SGD(0.0), "sparse_categorical_crossentropy", ["accuracy"])  # nothing improves
    stop = EarlyStopping(monitor="val_loss", patience=1)
    ckpt = ModelCheckpoint(tmp_path / "ck-{epoch}.npz")
    h = m.fit(xtr, ytr, epochs=10, validation_data=(xte, yte), callbacks=[stop, ckpt], verbose=0)
    assert len(h.epoch) == 2 and stop.stopped_epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck-1.npz", "ck-2.npz"]
    assert sparkdl.load_model(tmp_path / "ck-2.npz").meta == {"epoch": 2}
    with pytest.raises(KeyError, match="val_accuracy"):
        mlp().compile("sgd", metrics=["accuracy"]).fit(
            xtr, ytr, epochs=2, verbose=0, callbacks=[EarlyStopping(monitor="val_accuracy")])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_loss_stops_and_keeps_last_good_weights():
    xtr, ytr = load_digits("train")
    m = Sequential([Dense(10)], input_shape=(64,), seed=0).compile(optim.SGD(1e30), "mse")
    before = m.get_flat_params()
    with pytest.raises(FloatingPointError, match="epoch 1"):
        m.fit(xtr * 1e20, np.ones((len(xtr), 10)), epochs=2, verbose=0)
    np.testing.assert_array_equal(m.get_flat_params(), before)


def test_bad_arguments_name_expected_and_received():
    with pytest.raises(ValueError, match=r"unknown layer class_name.*Received: 'Dense3'"):
        layer_from_config({"class_name": "Dense3", "config": {}})
    with pytest.raises(ValueError, match=r"unknown activation.*Received: 'relu6'"):
        Dense(3, activation="relu6")
    with pytest.raises(ValueError, match=r"units must be a positive integer. Received: units=0"):
        Dense(0)
    with pytest.raises(ValueError, match=r"unknown loss.*Received: loss='crossentropy'"):
        mlp().compile("sgd", "crossentropy")
    with pytest.raises(ValueError, match=r"unknown optimizer|Received"):
        mlp().compile("sgdx")
    m = mlp().compile("sgd")
    with pytest.raises(ValueError, match=r"x must have shape \(n, 64\).*received x of shape \(5, 63\)"):
        m.fit(np.zeros((5, 63)), np.zeros(5), verbose=0)
    with pytest.raises(ValueError, match=r"must be in \[0, 9\].*received labels in \[0, 12\]"):
        m.fit(np.zeros((5, 64)), np.array([0, 1, 2, 3, 12]), verbose=0)
    with pytest.raises(ValueError, match="same number of examples; received 5 and 4"):
        m.fit(np.zeros((5, 64)), np.zeros(4), verbose=0)
    with pytest.raises(ValueError, match="epochs must be a positive integer. Received: epochs=0"):
        m.fit(np.zeros((5, 64)), np.zeros(5), epochs=0, verbose=0)
    with pytest.raises(RuntimeError, match="compile"):
        mlp().fit(np.zeros((5, 64)), np.zeros(5))
    with pytest.raises(ValueError, match="needs input_shape"):
        Sequential([Dense(3)]).build()
    with pytest.raises(ValueError, match="layer names must be unique"):
        Sequential([Dense(3, name="a"), Dense(3, name="a")], input_shape=(2,)).build()


def test_summary_and_config_round_trip():
    m = mlp().build()
    text = m.summary(print_fn=None)
    assert "dense_1 (Dense)" in text and f"Trainable params: {m.count_params():,}" in text
    again = sparkdl.nn.model_from_config(m.to_json(), seed=0)
    assert again.get_config() == m.get_config()
    np.testing.assert_array_equal(again.get_flat_params(), m.get_flat_params())


def test_bad_model_files_are_rejected(tmp_path):
    m = mlp().compile("adam")
    good = tmp_path / "good.npz"
    m.save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable sparkdl model file"):
        io.load_model(tmp_path / "trunc.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a readable sparkdl model file"):
        io.load_model(tmp_path / "text.npz")
    np.savez(tmp_path / "foreign.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match=r"not a sparkdl model file: missing"):
        io.load_model(tmp_path / "foreign.npz")
    # a pickled object array inside an otherwise valid file is refused, never unpickled
    arrays = io.model_to_arrays(m)
    arrays["params"] = np.array([object()], dtype=object)
    np.savez(tmp_path / "pickle.npz", **arrays)
    with pytest.raises(ValueError, match="not a readable sparkdl model file"):
        io.load_model(tmp_path / "pickle.npz")
    arrays = io.model_to_arrays(m)
    arrays["params"] = arrays["params"][:-5]
    np.savez(tmp_path / "short.npz", **arrays)
    with pytest.raises(ValueError, match=r"params has \d+ values but the model config needs \d+"):
        io.load_model(tmp_path / "short.npz")
    arrays = io.model_to_arrays(m)
    arrays["sparkdl_format"] = np.array(99)
    np.savez(tmp_path / "v99.npz", **arrays)
    with pytest.raises(ValueError, match="format version 99"):
        io.load_model(tmp_path / "v99.npz")
    with zipfile.ZipFile(good) as z:
        assert all(not n.endswith(".pkl") for n in z.namelist())


def test_core_imports_without_pyspark_or_cupy():
    code = ("import sys\n"
            "for name in ('pyspark', 'cupy', 'cupyx'):\n"
            "    sys.modules[name] = None\n"
            "import sparkdl, sparkdl.nn, sparkdl.optim, sparkdl.losses, sparkdl.metrics, sparkdl.io, sparkdl.train\n"
            "import sparkdl.dist.modes, sparkdl.dist.procs, sparkdl.dist.options, sparkdl.dist.run\n"
            "assert sparkdl.dist.modes.modes() == ('jobs', 'barrier')\n"
            "import sparkdl.backend as b\n"
            "try:\n"
            "    b.get_xp('cupy')\n"
            "except RuntimeError as e:\n"
            "    assert 'cupy' in str(e)\n"
            "else:\n"
            "    raise SystemExit('cupy should be unavailable')\n"
            "m = sparkdl.Sequential([sparkdl.nn.Dense(2)], input_shape=(3,)).compile('sgd', 'mse')\n"
            "m.fit([[1.0, 2.0, 3.0]], [[0.0, 1.0]], verbose=0)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_small_cnn_learns_digits():
    from sparkdl.nn import Conv2D, Flatten, MaxPooling2D
    xtr, ytr = load_digits("train", flatten=False)
    xte, yte = load_digits("test", flatten=False)
    m = Sequential([Conv2D(16, 3, padding="same", activation="relu"), MaxPooling2D(2),
                    Conv2D(32, 3, padding="same", activation="relu"), Flatten(),
                    Dense(64, activation="relu"), Dense(10, activation="softmax")], input_shape=(8, 8, 1), seed=0)
    m.compile(optim.Adam(0.003), "sparse_categorical_crossentropy", ["accuracy"])
    m.fit(xtr, ytr, epochs=12, batch_size=32, verbose=0)
    assert m.evaluate(xte, yte)["accuracy"] >= 0.95


def test_a_worker_round_draws_its_dropout_masks_from_the_round_alone():
    # what makes a resumed distributed fit end with the weights of an uninterrupted one when the model has Dropout
    from sparkdl.dist import schedule
    from sparkdl.dist.worker import fit_round
    from sparkdl.nn import Dropout
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 6)).astype(np.float32), rng.integers(0, 3, 40)
    model = Sequential([Dense(8, activation="relu"), Dropout(0.5), Dense(3, activation="softmax")], input_shape=(6,),
                       seed=1).compile("adam", "sparse_categorical_crossentropy")
    start = model.get_flat_params(), model.optimizer.get_state()["buffer"].copy()
    batches = schedule.round_batches(np.arange(40), 8, 5, 0)

    def round_from_start(key, draws_before):
        model.rng.random(draws_before)     # what earlier rounds drew
        return fit_round(model, x, y, batches, start[0], model.get_flat_state(), start[1], 0, True,
                         rng_key=key).params
    a = round_from_start(schedule.round_key(7, 1, 12), 0)
    b = round_from_start(schedule.round_key(7, 1, 12), 1000)
    c = round_from_start(schedule.round_key(7, 1, 13), 0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
