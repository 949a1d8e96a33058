"""The numeric core on CuPy agrees with NumPy (float32, 1e-4). Skips cleanly without cupy or a GPU; run on a
device machine with ``bash bench/gpu_check.sh``."""
import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
try:
    if cupy.cuda.runtime.getDeviceCount() < 1:
        raise RuntimeError("no device")
except Exception as e:  # no driver, no device
    pytest.skip(f"no usable GPU: {e}", allow_module_level=True)

from sparkdl import losses, optim  # noqa: E402
from sparkdl.datasets import load_digits  # noqa: E402
from sparkdl.nn import (GRU, LSTM, AveragePooling2D, BatchNormalization, Conv2D, Dense, Dropout, Embedding,  # noqa: E402
                        Flatten, GlobalAveragePooling2D, LayerNormalization, MaxPooling2D, Sequential, SimpleRNN,
                        layer_from_config, layer_to_config)

pytestmark = pytest.mark.gpu
TOL = 1e-4

LAYERS = [
    (lambda: Dense(16, activation="relu"), (12,), "float"),
    (lambda: Dense(8, activation="gelu"), (3, 12), "float"),
    (lambda: Dense(8, activation="gelu_exact"), (3, 12), "float"),
    (lambda: Conv2D(8, 3, padding="same", activation="relu"), (10, 10, 3), "float"),
    (lambda: Conv2D(4, (3, 2), strides=2), (9, 8, 2), "float"),
    (lambda: Conv2D(4, 3, data_format="channels_first"), (2, 7, 7), "float"),
    (lambda: MaxPooling2D(2), (8, 8, 3), "float"),
    (lambda: MaxPooling2D(3, strides=2, padding="same"), (7, 7, 2), "float"),
    (lambda: AveragePooling2D(2, padding="same"), (7, 7, 2), "float"),
    (lambda: GlobalAveragePooling2D(), (5, 5, 3), "float"),
    (lambda: Flatten(), (4, 4, 2), "float"),
    (lambda: BatchNormalization(), (6,), "float"),
    (lambda: BatchNormalization(), (4, 4, 3), "float"),
    (lambda: LayerNormalization(), (5, 6), "float"),
    (lambda: Embedding(20, 6), (7,), "int"),
    (lambda: SimpleRNN(6, return_sequences=True), (5, 4), "float"),
    (lambda: LSTM(6), (5, 4), "float"),
    (lambda: GRU(6, return_sequences=True), (5, 4), "float"),
]


def _pair(make, shape):
    config = layer_to_config(make())
    cpu = Sequential([layer_from_config(config)], input_shape=shape, seed=0).build()
    gpu = Sequential([layer_from_config(config)], input_shape=shape, seed=0, backend="cupy").build()
    return cpu, gpu


def close(a, b, what):
    a, b = cupy.asnumpy(a) if isinstance(a, cupy.ndarray) else a, cupy.asnumpy(b) if isinstance(b, cupy.ndarray) else b
    assert np.shape(a) == np.shape(b), what
    if np.size(a) == 0:
        return
    scale = max(float(np.abs(a).max()), 1e-6)
    assert float(np.abs(a - b).max()) / scale <= TOL, what


@pytest.mark.parametrize("make,shape,kind", LAYERS, ids=[type(m()).__name__ + str(s) for m, s, _ in LAYERS])
@pytest.mark.parametrize("training", [False, True])
def test_layer_forward_and_gradients_match_numpy(make, shape, kind, training):
    cpu, gpu = _pair(make, shape)
    assert isinstance(gpu.params, cupy.ndarray)
    close(cpu.params, gpu.params, "initial weights (drawn on the host from the same seed)")
    rng = np.random.default_rng(1)
    x = (rng.integers(0, 20, (4,) + shape) if kind == "int" else rng.standard_normal((4,) + shape)).astype(np.float32)
    for m in (cpu, gpu):
        for layer in m.layers:
            layer.need_input_grad = kind != "int"
    out_c, out_g = cpu.forward(x, training), gpu.forward(cupy.asarray(x), training)
    assert isinstance(out_g, cupy.ndarray)
    close(out_c, out_g, "forward")
    g = rng.standard_normal(out_c.shape).astype(np.float32)
    gin_c, gin_g = cpu.backward(g), gpu.backward(cupy.asarray(g))
    close(cpu.grads, gpu.grads, "parameter gradients")
    if kind != "int":
        close(gin_c, gin_g, "input gradient")
    if cpu.state.size:
        close(cpu.state, gpu.state, "layer state")


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_optimizer_step_matches_numpy(name):
    rng = np.random.default_rng(2)
    p = rng.standard_normal(1000).astype(np.float32)
    gs = [rng.standard_normal(1000).astype(np.float32) for _ in range(3)]
    results = []
    for xp in (np, cupy):
        opt = optim.get({"class_name": name, "config": {"learning_rate": 0.01, "clipnorm": 5.0}})
        opt.build(1000, xp, np.float32)
        params = xp.asarray(p.copy())
        for g in gs:
            opt.step(params, xp.asarray(g.copy()))
        results.append((params, opt.state_buffer))
    close(results[0][0], results[1][0], f"{name} params")
    close(results[0][1], results[1][1], f"{name} state")


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_loss_matches_numpy(name):
    rng = np.random.default_rng(3)
    pred = rng.standard_normal((16, 5)).astype(np.float32)
    if name == "sparse_categorical_crossentropy":
        true = rng.integers(0, 5, 16).astype(np.float32)
    elif name == "binary_crossentropy":
        true = rng.integers(0, 2, (16, 5)).astype(np.float32)
    else:
        true = rng.random((16, 5)).astype(np.float32)
    loss = losses.get(name)
    loss.mode = "logits" if loss.fuses_with else "direct"
    (vc, gc), (vg, gg) = loss(pred, true), loss(cupy.asarray(pred), cupy.asarray(true))
    close(np.float32(vc), vg, "value")
    close(gc, gg, "gradient")


def test_training_on_the_gpu_learns_and_stays_on_the_device():
    xtr, ytr = load_digits("train")
    xte, yte = load_digits("test")
    m = Sequential([Dense(64, activation="relu"), Dropout(0.1), Dense(10, activation="softmax")], input_shape=(64,),
                   seed=0, backend="cupy").compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    m.fit(xtr, ytr, epochs=10, batch_size=32, verbose=0)
    assert isinstance(m.params, cupy.ndarray) and isinstance(m.optimizer.state_buffer, cupy.ndarray)
    assert m.evaluate(xte, yte)["accuracy"] >= 0.95
