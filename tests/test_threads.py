"""compile(threads=N): each batch split across N threads, one optimizer step on the combined gradient."""
import threading

import numpy as np
import pytest

from sparkdl import optim
from sparkdl.datasets import load_digits
from sparkdl.nn import BatchNormalization, Dense, Dropout, Flatten, Sequential
from sparkdl.nn.conv import Conv2D
from sparkdl.nn.pooling import MaxPooling2D


def mlp(seed=0, dtype="float64", dropout=0.0):
    layers = [Dense(16, activation="relu")] + ([Dropout(dropout)] if dropout else []) + \
             [Dense(10, activation="softmax")]
    return Sequential(layers, input_shape=(12,), seed=seed, dtype=dtype)


def cnn(seed=0, dtype="float64"):
    return Sequential([Conv2D(3, 3, activation="relu"), MaxPooling2D(2), Conv2D(4, 3, activation="relu"),
                       Flatten(), Dense(10)], input_shape=(10, 10, 1), seed=seed, dtype=dtype)


def data(shape, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n,) + shape), rng.integers(0, 10, n)


def step_params(make, threads, x, y, optimizer="sgd", steps=1):
    m = make()
    m.compile(optimizer, "sparse_categorical_crossentropy", ["accuracy"], threads=threads)
    results = [m.train_on_batch(x, y) for _ in range(steps)]
    return m, results


@pytest.mark.parametrize("make,shape", [(mlp, (12,)), (cnn, (10, 10, 1))], ids=["mlp", "cnn"])
@pytest.mark.parametrize("n", [1, 2, 7, 32])
def test_threads_2_gives_the_same_step_as_threads_1(make, shape, n):
    x, y = data(shape, n)
    m1, r1 = step_params(make, 1, x, y, optimizer=optim.SGD(0.1, momentum=0.9), steps=3)
    m2, r2 = step_params(make, 2, x, y, optimizer=optim.SGD(0.1, momentum=0.9), steps=3)
    np.testing.assert_allclose(m2.params, m1.params, rtol=1e-12, atol=1e-13)
    for (l1, o1), (l2, o2) in zip(r1, r2):
        np.testing.assert_allclose(float(l2), float(l1), rtol=1e-12)
        np.testing.assert_allclose(o2, o1, rtol=1e-12, atol=1e-13)
        assert o2.shape == (n, 10)


def test_three_threads_and_adam():
    x, y = data((12,), 10)
    m1, _ = step_params(mlp, 1, x, y, optimizer="adam", steps=2)
    m3, _ = step_params(mlp, 3, x, y, optimizer="adam", steps=2)
    np.testing.assert_allclose(m3.params, m1.params, rtol=1e-12, atol=1e-13)


def test_replicas_share_the_flat_params_and_own_their_grads():
    x, y = data((10, 10, 1), 8)
    m, _ = step_params(cnn, 2, x, y)
    (r,) = m._replicas
    assert r.params is m.params and r.grads is not m.grads
    for a, b in zip(m.layers, r.layers):
        for k in a.params:
            assert np.shares_memory(a.params[k], b.params[k]) and not np.shares_memory(a.grads[k], b.grads[k])
    m.set_flat_params(np.zeros_like(m.params))   # replicas see writes to the model's buffer
    assert all((v == 0).all() for layer in r.layers for v in layer.params.values())


def test_fit_with_threads_learns_digits():
    x, y = load_digits()
    m = Sequential([Dense(32, activation="relu"), Dense(10, activation="softmax")], input_shape=(64,), seed=0)
    m.compile(optim.Adam(0.01), "sparse_categorical_crossentropy", ["accuracy"], threads=2)
    hist = m.fit(x, y, epochs=8, batch_size=33, verbose=0)
    assert hist.history["accuracy"][-1] > 0.9
    assert m.evaluate(x, y)["accuracy"] > 0.9


def test_parts_run_in_parallel_threads():
    seen = set()
    m = mlp()
    m.compile("sgd", threads=2)
    orig = type(m)._part_step

    def spy(self, *a):
        seen.add(threading.get_ident())
        return orig(self, *a)
    x, y = data((12,), 8)
    type(m)._part_step = spy
    try:
        m.train_on_batch(x, y)
    finally:
        type(m)._part_step = orig
    assert len(seen) == 2


def test_dropout_replica_has_its_own_generator():
    x, y = data((12,), 16)
    m, _ = step_params(lambda: mlp(dropout=0.5), 2, x, y)
    (r,) = m._replicas
    assert r.rng is not m.rng and r.layers[1].rng is r.rng and m.layers[1].rng is m.rng
    loss, out = m.train_on_batch(x, y)
    assert np.isfinite(float(loss))


def bn_mlp(seed=0, dtype="float64"):
    return Sequential([Dense(8), BatchNormalization(momentum=0.9), Dense(10, activation="softmax")],
                      input_shape=(12,), seed=seed, dtype=dtype)


def bn_cnn(seed=0, dtype="float64"):
    return Sequential([Conv2D(3, 3), BatchNormalization(), MaxPooling2D(2), Conv2D(4, 3, activation="relu"),
                       BatchNormalization(axis=1), Flatten(), Dense(10)], input_shape=(10, 10, 1), seed=seed,
                      dtype=dtype)


@pytest.mark.parametrize("make,shape", [(bn_mlp, (12,)), (bn_cnn, (10, 10, 1))], ids=["mlp", "cnn"])
@pytest.mark.parametrize("threads,n", [(2, 2), (2, 7), (3, 32)])
def test_batch_norm_under_threads_keeps_whole_batch_statistics(make, shape, threads, n):
    """The parts meet inside BatchNormalization: the batch mean and variance, the moving statistics and the input
    gradient are the whole batch's, so the step is threads=1's."""
    x, y = data(shape, n)
    m1, r1 = step_params(make, 1, x, y, optimizer=optim.SGD(0.1, momentum=0.9), steps=3)
    m2, r2 = step_params(make, threads, x, y, optimizer=optim.SGD(0.1, momentum=0.9), steps=3)
    np.testing.assert_allclose(m2.params, m1.params, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(m2.state, m1.state, rtol=1e-11, atol=1e-12)
    assert not np.allclose(m1.get_flat_state(), make().get_flat_state())   # the statistics moved
    for (l1, o1), (l2, o2) in zip(r1, r2):
        np.testing.assert_allclose(float(l2), float(l1), rtol=1e-11)
        np.testing.assert_allclose(o2, o1, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(m2.predict(x), m1.predict(x), rtol=1e-10, atol=1e-12)


def test_a_failing_part_raises_its_error_and_the_others_do_not_wait_for_it():
    x, y = data((12,), 8)
    m, _ = step_params(bn_mlp, 2, x, y)
    (r,) = m._replicas

    def broken(*a, **k):
        raise RuntimeError("part 1 failed")
    r.layers[0].forward = broken   # before the parts meet in BatchNormalization
    done = []
    t = threading.Thread(target=lambda: done.append(pytest.raises(RuntimeError, m.train_on_batch, x, y)))
    t.start()
    t.join(timeout=20)
    assert not t.is_alive() and done and "part 1 failed" in str(done[0].value)
    del r.layers[0].forward
    loss, _ = m.train_on_batch(x, y)   # the next step runs normally
    assert np.isfinite(float(loss))


def test_state_of_other_layers_and_bad_threads_are_refused():
    from sparkdl.nn.layer import Layer

    class Seen(Layer):   # a layer with state of its own, which the parts could not share
        def build(self, input_shape):
            self.add_state("seen", (1,), "zeros")
            return input_shape

        def forward(self, x, training=False):
            return x

    m = Sequential([Dense(8), Seen(name="seen"), BatchNormalization(), Dense(10)], input_shape=(12,))
    with pytest.raises(ValueError, match=r"threads=2 needs a model whose non-trainable state is in "
                                         r"BatchNormalization layers .*\['seen'\] hold state of their own"):
        m.compile("sgd", threads=2)
    m.compile("sgd", threads=1)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads must be a positive int"):
            mlp().compile("sgd", threads=bad)


def test_recompile_back_to_one_thread():
    x, y = data((12,), 8)
    m, _ = step_params(mlp, 2, x, y)
    m.compile("sgd", threads=1)
    assert m.threads == 1 and m._replicas is None
    m.train_on_batch(x, y)


def test_blas_threads_are_restored_after_the_step():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    x, y = data((12,), 8)
    step_params(mlp, 2, x, y)
    assert [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"] == before


def test_auto_splits_convolutional_models_only_and_holds_to_the_cpus_it_may_use():
    from sparkdl.backend import blas_threads, usable_cpus
    from sparkdl.dist.worker import worker_model
    x, y = data((10, 10, 1), 8)
    c = cnn()
    c.compile("sgd")   # threads="auto", the default, chooses at the first step
    assert c.threads == "auto"
    c.train_on_batch(x, y)
    assert c.parts() == min(2, usable_cpus()) and (c._replicas is not None) == (c.parts() > 1)
    m = mlp()
    m.compile("sgd")
    m.train_on_batch(*data((12,), 8))
    assert m.parts() == 1 and m._replicas is None   # an MLP's step is all GEMMs
    held = blas_threads(1)   # as a Spark worker holds BLAS to its share of the host
    try:
        c1 = cnn()
        c1.compile("sgd")
        c1.train_on_batch(x, y)
        assert c1.parts() == 1
    finally:
        if held is not None:
            held.restore_original_limits()
    w = worker_model(c.to_json(), '{"optimizer": "sgd", "loss": "sparse_categorical_crossentropy"}')
    assert w.threads == 1   # a distributed fit's parallelism is its workers
