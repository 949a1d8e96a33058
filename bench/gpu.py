"""GPU throughput: sparkdl on CuPy vs PyTorch CUDA on the same card, MLP 784-256-128-10 and a LeNet-style CNN,
batch 512, plain SGD, data resident on the device. Prints samples/s and the ratio sparkdl/torch.
Targets (issue): MLP >= 0.7x PyTorch, CNN >= 0.5x. Run by bench/gpu_check.sh on a device machine."""
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

BATCH, STEPS, WARMUP, REPEATS = 512, 50, 10, 5


def sparkdl_model(kind):
    from sparkdl import optim
    from sparkdl.nn import Conv2D, Dense, Flatten, MaxPooling2D, Sequential
    if kind == "mlp":
        layers, shape = [Dense(256, activation="relu"), Dense(128, activation="relu"), Dense(10)], (784,)
    else:
        layers = [Conv2D(6, 5, activation="relu"), MaxPooling2D(2), Conv2D(16, 5, activation="relu"), MaxPooling2D(2),
                  Flatten(), Dense(120, activation="relu"), Dense(84, activation="relu"), Dense(10)]
        shape = (28, 28, 1)
    m = Sequential(layers, input_shape=shape, seed=0, backend="cupy")
    return m.compile(optim.SGD(0.01), "sparse_categorical_crossentropy"), shape


def torch_model(kind):
    import torch
    nn = torch.nn
    if kind == "mlp":
        return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    return nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def time_sparkdl(kind):
    import cupy
    m, shape = sparkdl_model(kind)
    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.random((BATCH,) + shape, np.float32))
    y = cupy.asarray(rng.integers(0, 10, BATCH))
    for _ in range(WARMUP):
        m.train_on_batch(x, y)
    cupy.cuda.Device().synchronize()
    best = 0.0
    for _ in range(REPEATS):
        t = time.perf_counter()
        for _ in range(STEPS):
            m.train_on_batch(x, y)
        cupy.cuda.Device().synchronize()
        best = max(best, STEPS * BATCH / (time.perf_counter() - t))
    return best


def time_torch(kind):
    import torch
    import torch.nn.functional as F
    net = torch_model(kind).cuda()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    shape = (BATCH, 784) if kind == "mlp" else (BATCH, 1, 28, 28)
    x = torch.rand(shape, device="cuda")
    y = torch.randint(0, 10, (BATCH,), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
    for _ in range(WARMUP):
        step()
    torch.cuda.synchronize()
    best = 0.0
    for _ in range(REPEATS):
        t = time.perf_counter()
        for _ in range(STEPS):
            step()
        torch.cuda.synchronize()
        best = max(best, STEPS * BATCH / (time.perf_counter() - t))
    return best


def main():
    import cupy
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    out = {"device": name, "batch": BATCH}
    for kind in ("mlp", "cnn"):
        s = time_sparkdl(kind)
        try:
            t = time_torch(kind)
        except ImportError:
            t = None
        out[kind] = {"sparkdl_samples_s": s, "torch_samples_s": t, "ratio": s / t if t else None}
        print(f"{kind}: sparkdl {s:,.0f} samples/s, torch {t or float('nan'):,.0f} samples/s, "
              f"ratio {s / t if t else float('nan'):.2f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
