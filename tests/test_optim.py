"""Optimizers and schedules: each rule checked by hand on a tiny float64 buffer, then config, state and convergence."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from sparkdl import optim
from sparkdl.optim import schedules

P0 = np.array([1.0, -2.0, 0.5, 3.0])
G1 = np.array([0.1, -0.4, 2.0, -1.5])
G2 = np.array([-0.3, 0.2, 1.0, 0.5])


def run(opt, grads_list, p0=P0, dtype="float64"):
    """Build ``opt`` for ``p0`` and apply each gradient; returns the params after every step."""
    p = p0.astype(dtype)
    opt.build(p.size, np, dtype)
    out = []
    for g in grads_list:
        opt.step(p, g.astype(dtype))
        out.append(p.copy())
    return out


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


# ---- hand-computed steps ----------------------------------------------------------------------------------
def test_sgd_plain():
    p1, p2 = run(optim.SGD(learning_rate=0.1), [G1, G2])
    close(p1, P0 - 0.1 * G1)
    close(p2, P0 - 0.1 * G1 - 0.1 * G2)


def test_sgd_momentum_first_buffer_is_the_gradient():
    p1, p2 = run(optim.SGD(learning_rate=0.1, momentum=0.9), [G1, G2])
    b1 = G1
    close(p1, P0 - 0.1 * b1)
    b2 = 0.9 * b1 + G2
    close(p2, p1 - 0.1 * b2)


def test_sgd_nesterov():
    p1, p2 = run(optim.SGD(learning_rate=0.1, momentum=0.9, nesterov=True), [G1, G2])
    b1 = G1
    close(p1, P0 - 0.1 * (G1 + 0.9 * b1))
    b2 = 0.9 * b1 + G2
    close(p2, p1 - 0.1 * (G2 + 0.9 * b2))


def test_sgd_weight_decay_is_added_to_the_gradient():
    p1, p2 = run(optim.SGD(learning_rate=0.1, momentum=0.5, weight_decay=0.01), [G1, G2])
    d1 = G1 + 0.01 * P0
    close(p1, P0 - 0.1 * d1)
    b2 = 0.5 * d1 + (G2 + 0.01 * p1)
    close(p2, p1 - 0.1 * b2)


def test_adagrad():
    p1, p2 = run(optim.Adagrad(learning_rate=0.1, initial_accumulator_value=0.1, epsilon=1e-7), [G1, G2])
    a1 = 0.1 + G1 ** 2
    close(p1, P0 - 0.1 * G1 / np.sqrt(a1 + 1e-7))
    a2 = a1 + G2 ** 2
    close(p2, p1 - 0.1 * G2 / np.sqrt(a2 + 1e-7))


def test_rmsprop_plain():
    p1, p2 = run(optim.RMSprop(learning_rate=0.01, rho=0.9, epsilon=1e-7), [G1, G2])
    v1 = 0.1 * G1 ** 2
    close(p1, P0 - 0.01 * G1 / np.sqrt(v1 + 1e-7))
    v2 = 0.9 * v1 + 0.1 * G2 ** 2
    close(p2, p1 - 0.01 * G2 / np.sqrt(v2 + 1e-7))


def test_rmsprop_centered_with_momentum():
    opt = optim.RMSprop(learning_rate=0.01, rho=0.8, momentum=0.5, epsilon=1e-3, centered=True)
    p1, p2 = run(opt, [G1, G2])
    assert opt.slot_names == ("velocity", "average_gradient", "momentum")
    v1, mg1 = 0.2 * G1 ** 2, 0.2 * G1
    b1 = 0.01 * G1 / np.sqrt(v1 - mg1 ** 2 + 1e-3)
    close(p1, P0 - b1)
    v2, mg2 = 0.8 * v1 + 0.2 * G2 ** 2, 0.8 * mg1 + 0.2 * G2
    b2 = 0.5 * b1 + 0.01 * G2 / np.sqrt(v2 - mg2 ** 2 + 1e-3)
    close(p2, p1 - b2)


def adam_reference(p, grads_list, lr, b1, b2, eps, l2=0.0, decoupled=0.0, amsgrad=False):
    """Adam written out step by step, Keras epsilon placement."""
    p, m, v, vmax, out = p.copy(), 0 * p, 0 * p, 0 * p, []
    for t, g in enumerate(grads_list, start=1):
        p = p * (1 - lr * decoupled)
        g = g + l2 * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        lr_t = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        p = p - lr_t * m / (np.sqrt(vmax if amsgrad else v) + eps)
        out.append(p)
    return out


def test_adam_bias_correction_over_two_steps():
    got = run(optim.Adam(learning_rate=0.01, epsilon=1e-3), [G1, G2])
    # step 1 by hand: m/(1-b1) = g and v/(1-b2) = g^2, so the step is lr*g/(|g| + eps/sqrt(1-b2))
    close(got[0], P0 - 0.01 * G1 / (np.abs(G1) + 1e-3 / math.sqrt(0.001)))
    for a, b in zip(got, adam_reference(P0, [G1, G2], 0.01, 0.9, 0.999, 1e-3)):
        close(a, b)


def test_adam_l2_weight_decay_and_amsgrad():
    grads = [G1, G2, -G1]
    for a, b in zip(run(optim.Adam(0.01, weight_decay=0.1, amsgrad=True), grads),
                    adam_reference(P0, grads, 0.01, 0.9, 0.999, 1e-7, l2=0.1, amsgrad=True)):
        close(a, b)


def test_adamw_decays_params_before_the_adam_step():
    opt = optim.AdamW(learning_rate=0.01, weight_decay=0.5, beta_1=0.8, beta_2=0.99)
    for a, b in zip(run(opt, [G1, G2]), adam_reference(P0, [G1, G2], 0.01, 0.8, 0.99, 1e-7, decoupled=0.5)):
        close(a, b)
    # with zero gradients only the decay moves the params
    (p1,) = run(optim.AdamW(learning_rate=0.1, weight_decay=0.2, epsilon=1.0), [0 * G1])
    close(p1, P0 * (1 - 0.1 * 0.2))


def test_clipnorm_scales_by_the_global_norm():
    norm = np.linalg.norm(G1)
    (p1,) = run(optim.SGD(learning_rate=1.0, clipnorm=1.0), [G1])
    close(p1, P0 - G1 / norm)
    (p1,) = run(optim.SGD(learning_rate=1.0, clipnorm=10 * norm), [G1])  # under the threshold: untouched
    close(p1, P0 - G1)


def test_float32_stays_float32_and_params_are_updated_in_place():
    for name in ["sgd", "adam", "adamw", "rmsprop", "adagrad"]:
        opt = optim.get(name)
        opt.clipnorm = 0.5
        p = P0.astype(np.float32)
        opt.build(p.size, np, np.float32)
        view = p[1:3]  # what a layer holds
        before = view.copy()
        g = G1.astype(np.float32)
        opt.step(p, g)
        assert p.dtype == np.float32 and g.dtype == np.float32 and opt.state_buffer.dtype == np.float32
        assert not np.array_equal(view, before), name  # the layer's view saw the update


def test_state_buffer_is_one_array_with_slot_views():
    opt = optim.Adam(amsgrad=True)
    opt.build(4, np, "float64")
    assert opt.state_buffer.shape == (12,)
    for i, name in enumerate(["m", "v", "v_max"]):
        assert np.shares_memory(opt.slots[name], opt.state_buffer)
        opt.slots[name][:] = i + 1
    close(opt.state_buffer, np.repeat([1.0, 2.0, 3.0], 4))
    sgd = optim.SGD()
    sgd.build(4, np, "float64")
    assert sgd.state_buffer.size == 0 and sgd.slots == {}
    ada = optim.Adagrad(initial_accumulator_value=0.3)
    ada.build(4, np, "float64")
    close(ada.state_buffer, np.full(4, 0.3))


# ---- schedules ----------------------------------------------------------------------------------------------
def test_step_decay():
    s = schedules.StepDecay(1.0, step_size=10, gamma=0.5)
    assert [s(0), s(9), s(10), s(25)] == [1.0, 1.0, 0.5, 0.25]


def test_exponential_decay():
    s = schedules.ExponentialDecay(0.1, decay_steps=100, decay_rate=0.5)
    assert s(0) == pytest.approx(0.1) and s(50) == pytest.approx(0.1 * 0.5 ** 0.5) and s(200) == pytest.approx(0.025)
    s = schedules.ExponentialDecay(0.1, decay_steps=100, decay_rate=0.5, staircase=True)
    assert s(99) == pytest.approx(0.1) and s(100) == pytest.approx(0.05)


def test_cosine_decay():
    s = schedules.CosineDecay(1.0, decay_steps=100, alpha=0.1)
    assert s(0) == pytest.approx(1.0)
    assert s(50) == pytest.approx(0.9 * 0.5 + 0.1)
    assert s(100) == pytest.approx(0.1) and s(1000) == pytest.approx(0.1)


def test_linear_warmup_shifts_the_wrapped_schedule():
    s = schedules.LinearWarmup(schedules.CosineDecay(1.0, 100), warmup_steps=10, start=0.2)
    assert s(0) == pytest.approx(0.2) and s(5) == pytest.approx(0.6) and s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.5)  # cosine at its step 50
    c = schedules.LinearWarmup(0.3, warmup_steps=4)
    assert [c(0), c(2), c(4), c(100)] == pytest.approx([0.0, 0.15, 0.3, 0.3])


def test_optimizer_follows_its_schedule():
    opt = optim.SGD(learning_rate=schedules.StepDecay(1.0, step_size=1, gamma=0.5))
    p1, p2, p3 = run(opt, [G1, G1, G1])
    close(p1, P0 - G1)  # the first step uses schedule(0)
    close(p3, P0 - 1.75 * G1)
    assert opt.current_learning_rate() == 0.125


@pytest.mark.parametrize("make, arg", [
    (lambda: schedules.StepDecay(0.1, step_size=0), "step_size"),
    (lambda: schedules.StepDecay(0.1, step_size=2.5), "step_size"),
    (lambda: schedules.StepDecay(-0.1, step_size=2), "initial_learning_rate"),
    (lambda: schedules.ExponentialDecay(0.1, 10, decay_rate=0), "decay_rate"),
    (lambda: schedules.ExponentialDecay(0.1, 10, 0.5, staircase="yes"), "staircase"),
    (lambda: schedules.CosineDecay(0.1, 10, alpha=2), "alpha"),
    (lambda: schedules.LinearWarmup(0.1, warmup_steps=-1), "warmup_steps"),
    (lambda: schedules.LinearWarmup("cosine", warmup_steps=3), "schedule"),
])
def test_bad_schedule_arguments(make, arg):
    with pytest.raises(ValueError, match=f"Received: {arg}="):
        make()


# ---- config and state ---------------------------------------------------------------------------------------
ALL = [
    optim.SGD(learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4, clipnorm=2.0),
    optim.Adagrad(learning_rate=0.02, initial_accumulator_value=0.2, epsilon=1e-6),
    optim.RMSprop(learning_rate=schedules.ExponentialDecay(0.01, 5, 0.9), momentum=0.5, centered=True),
    optim.Adam(learning_rate=schedules.LinearWarmup(schedules.CosineDecay(0.01, 20, alpha=0.1), 3, start=0.001),
               amsgrad=True, weight_decay=0.01),
    optim.AdamW(learning_rate=schedules.StepDecay(0.01, 2), weight_decay=0.1, clipnorm=1.0, name="w"),
]


@pytest.mark.parametrize("opt", ALL, ids=lambda o: type(o).__name__)
def test_config_round_trip(opt):
    data = json.loads(json.dumps(optim.serialize(opt)))
    again = optim.get(data)
    assert type(again) is type(opt) and again.get_config() == opt.get_config()
    assert type(opt).from_config(opt.get_config()).get_config() == opt.get_config()
    close(np.array(run(again, [G1, G2, G1])), np.array(run(opt, [G1, G2, G1])))


@pytest.mark.parametrize("opt", ALL, ids=lambda o: type(o).__name__)
def test_state_round_trip_continues_identically(opt):
    a, b = optim.get(optim.serialize(opt)), optim.get(optim.serialize(opt))
    pa = P0.copy()
    a.build(4, np, "float64")
    for g in [G1, G2, -G1]:
        a.step(pa, g.copy())
    b.build(4, np, "float64")
    state = a.get_state()
    assert state["iterations"] == 3 and state["buffer"] is not a.state_buffer
    b.set_state(state)
    pb = pa.copy()
    for g in [G2, G1]:
        a.step(pa, g.copy())
        b.step(pb, g.copy())
    np.testing.assert_array_equal(pa, pb)


def test_set_state_rejects_a_wrong_size():
    opt = optim.Adam()
    opt.build(4, np, "float64")
    with pytest.raises(ValueError, match=r"expected a 1-D buffer of 8 values. Received: shape \(12,\)"):
        opt.set_state({"iterations": 1, "buffer": np.zeros(12)})
    with pytest.raises(ValueError, match="keys"):
        opt.set_state({"buffer": np.zeros(8)})
    with pytest.raises(RuntimeError, match="build"):
        optim.SGD().get_state()


def test_get_by_name_and_unknown_names():
    for name, cls in [("sgd", optim.SGD), ("adam", optim.Adam), ("adamw", optim.AdamW),
                      ("rmsprop", optim.RMSprop), ("adagrad", optim.Adagrad), ("Adam", optim.Adam)]:
        assert type(optim.get(name)) is cls
    opt = optim.SGD()
    assert optim.get(opt) is opt
    with pytest.raises(ValueError, match=r"expected one of \['adagrad', 'adam', 'adamw', 'rmsprop', 'sgd'\]. "
                                         r"Received: 'adamax'"):
        optim.get("adamax")
    with pytest.raises(ValueError, match="Received: class_name='Nope'"):
        optim.get({"class_name": "Nope", "config": {}})
    with pytest.raises(ValueError, match="Received: 3"):
        optim.get(3)


@pytest.mark.parametrize("make, arg", [
    (lambda: optim.SGD(learning_rate=-1), "learning_rate"),
    (lambda: optim.SGD(learning_rate=float("nan")), "learning_rate"),
    (lambda: optim.SGD(learning_rate="fast"), "learning_rate"),
    (lambda: optim.SGD(momentum=-0.1), "momentum"),
    (lambda: optim.SGD(nesterov=True), "momentum"),
    (lambda: optim.SGD(nesterov=1, momentum=0.9), "nesterov"),
    (lambda: optim.SGD(weight_decay=-1e-3), "weight_decay"),
    (lambda: optim.SGD(clipnorm=0), "clipnorm"),
    (lambda: optim.Adam(beta_1=1.0), "beta_1"),
    (lambda: optim.Adam(beta_2=-0.5), "beta_2"),
    (lambda: optim.Adam(epsilon=-1e-8), "epsilon"),
    (lambda: optim.Adam(amsgrad=None), "amsgrad"),
    (lambda: optim.AdamW(weight_decay=-1), "weight_decay"),
    (lambda: optim.RMSprop(rho=1.5), "rho"),
    (lambda: optim.RMSprop(centered="no"), "centered"),
    (lambda: optim.Adagrad(initial_accumulator_value=-1), "initial_accumulator_value"),
    (lambda: optim.Adagrad(initial_accumulator_value=0, epsilon=0), "epsilon"),
    (lambda: optim.Adam(name=3), "name"),
])
def test_bad_hyperparameters(make, arg):
    with pytest.raises(ValueError, match=f"Received: .*{arg}="):
        make()


def test_learning_rate_error_ends_with_received():
    with pytest.raises(ValueError) as e:
        optim.Adam(learning_rate=-1)
    assert str(e.value).endswith("Received: learning_rate=-1")


def test_step_rejects_mismatched_buffers():
    opt = optim.SGD()
    opt.build(4, np, "float64")
    with pytest.raises(ValueError, match="built size 4"):
        opt.step(np.zeros(5), np.zeros(5))


# ---- convergence --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opt", [
    optim.SGD(learning_rate=0.05),
    optim.SGD(learning_rate=0.02, momentum=0.9, nesterov=True),
    optim.Adagrad(learning_rate=0.5),
    optim.RMSprop(learning_rate=0.01, centered=True, momentum=0.5),
    optim.Adam(learning_rate=schedules.CosineDecay(0.1, 1500, alpha=0.01)),
    optim.AdamW(learning_rate=0.05, weight_decay=1e-4, clipnorm=5.0),
], ids=lambda o: type(o).__name__)
def test_minimizes_a_least_squares_problem(opt):
    # f(p) = 0.5 * ||A p - b||^2, grad = A^T (A p - b); well conditioned so every rule gets close in 1500 steps
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20, 5)) / np.sqrt(20) + np.eye(20, 5)
    b = rng.standard_normal(20)
    best = np.linalg.lstsq(a, b, rcond=None)[0]
    p = np.zeros(5)
    opt.build(5, np, "float64")
    grads = np.empty(5)
    for _ in range(1500):
        np.matmul(a.T, a @ p - b, out=grads)
        opt.step(p, grads)
    np.testing.assert_allclose(p, best, atol=5e-3)


def test_imports_without_cupy_or_pyspark():
    # a fresh interpreter, so blocking the modules cannot leak into other tests
    code = ("import sys; sys.modules['cupy'] = None; sys.modules['pyspark'] = None; "
            "import numpy as np, sparkdl.optim as o; opt = o.get('adam'); opt.build(3, np, 'float32'); "
            "opt.step(np.ones(3, np.float32), np.ones(3, np.float32))")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("make", [lambda: optim.Adam(0.01, epsilon=0.0), lambda: optim.AdamW(0.01, epsilon=0.0),
                                  lambda: optim.RMSprop(0.01, epsilon=0.0),
                                  lambda: optim.RMSprop(0.01, epsilon=0.0, centered=True, momentum=0.9)])
def test_epsilon_zero_keeps_the_padding_between_weights_zero(make):
    """With epsilon=0 a zero denominator (the padding between the layers' weights in model.params, whose gradient is
    always 0) used to give 0/0 = NaN, which the averaging then reported as a non-finite model."""
    from sparkdl.nn import Dense, Sequential
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 5)).astype(np.float32), rng.integers(0, 3, 64)
    model = Sequential([Dense(7, activation="relu"), Dense(3, activation="softmax")], input_shape=(5,), seed=0)
    model.compile(make(), "sparse_categorical_crossentropy")
    padding = np.ones(model.params.size, bool)
    for _, lo, hi in model.param_ranges():
        padding[lo:hi] = False
    assert padding.any()                                   # the layout pads between layers
    first = float(model.train_on_batch(x, y)[0])
    for _ in range(20):
        last = float(model.train_on_batch(x, y)[0])
    assert np.isfinite(model.params).all() and not model.params[padding].any()
    assert last < first


def test_a_float64_model_keeps_float64_targets():
    from sparkdl.dist.run import label_dtype
    from sparkdl.nn import Dense, Sequential
    model = Sequential([Dense(1)], input_shape=(2,), dtype="float64", seed=0)
    model.compile("sgd", "mse")
    y = np.array([0.1, 1 / 3], np.float64)
    _, got = model.check_data(np.zeros((2, 2)), y)
    assert got.dtype == np.float64 and got.ravel().tolist() == y.tolist()    # not rounded through float32
    assert label_dtype("regression", np.float64) is np.float64 and label_dtype("multiclass", np.float64) is np.int32
