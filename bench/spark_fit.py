"""Distributed training on local[2]: single-process fit vs the jobs and barrier masters vs Spark's TorchDistributor.

MLP 784-256-128-10 on MNIST (real files when found, else MNIST-shaped random data), 2 workers, batch 64 per
worker, averaging every 5 minibatches, Adam(1e-3). Reports one-epoch wall time, the driver's per-round overhead
(round wall time minus the slowest worker's fitting time), the share of worker time spent fitting, and the
time to 97% test accuracy (evaluation time excluded), all measured in the same run; for each worker of the Spark
modes, its peak memory while training and before (issue 17), against its partition's bytes.

    python bench/spark_fit.py [--mnist-dir DIR] [--modes local,jobs,barrier,barrier-tcp,torch] [--max-epochs 5]

barrier: the workers (all on this host) average among themselves in shared memory; barrier-tcp: the same with
shared_memory=False, the workers averaging in a TCP ring on loopback (what one worker per host does).
"""
import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one BLAS thread per worker: 2 workers on 2 cores

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sparkdl import datasets, optim  # noqa: E402
from sparkdl.nn import Dense, Sequential  # noqa: E402
from sparkdl.train import Callback  # noqa: E402

from memory import status  # noqa: E402  (bench/memory.py, beside this file)

BATCH, FREQ, WORKERS, LR, TARGET = 64, 5, 2, 1e-3, 0.97


def load(mnist_dir):
    if mnist_dir:
        xtr, ytr = datasets.load_mnist(mnist_dir, "train")
        xte, yte = datasets.load_mnist(mnist_dir, "test")
        return xtr, ytr, xte, yte, "MNIST"
    rng = np.random.default_rng(0)
    return (rng.random((60000, 784), np.float32), rng.integers(0, 10, 60000), rng.random((10000, 784), np.float32),
            rng.integers(0, 10, 10000), "random MNIST-shaped (no accuracy target)")


def mlp():
    m = Sequential([Dense(256, activation="relu"), Dense(128, activation="relu"), Dense(10, activation="softmax")],
                   input_shape=(784,), seed=0)
    return m.compile(optim.Adam(LR), "sparse_categorical_crossentropy", ["accuracy"])


class Clock(Callback):
    """Per-epoch training time and test accuracy (evaluation time excluded); stops at the target."""

    def __init__(self, xte, yte, target):
        self.xte, self.yte, self.target = xte, yte, target
        self.epochs = []

    def on_train_begin(self, logs=None):
        self.t0, self.excluded = time.perf_counter(), 0.0
        self.workers = {w["worker"]: w.get("pid") for w in (logs or {}).get("workers", [])}
        self.loaded = {w: status(pid, "VmHWM") for w, pid in self.workers.items()}   # the one Spark pass, the load
        for pid in self.workers.values():
            reset_peak(pid)   # from here: training

    def on_epoch_end(self, epoch, logs=None):
        t = time.perf_counter()
        acc = self.model.evaluate(self.xte, self.yte, batch_size=2000)["accuracy"]
        self.epochs.append((t - self.t0 - self.excluded, acc))
        self.excluded += time.perf_counter() - t
        if self.target and acc >= self.target:
            self.model.stop_training = True

    def time_to_target(self):
        return next((t for t, a in self.epochs if self.target and a >= self.target), None)


def run_local(x, y, xte, yte, epochs, target):
    m = mlp()
    clock = Clock(xte, yte, target)
    m.fit(x, y, epochs=epochs, batch_size=BATCH, callbacks=[clock], verbose=0)
    return {"epoch_s": clock.epochs[0][0], "epochs": clock.epochs, "time_to_target_s": clock.time_to_target()}


def fit_spark(df, mode, clock, epochs):
    from sparkdl.spark import ParameterAveraging, SparkTrainer
    m = mlp()
    master = ParameterAveraging(num_workers=WORKERS, batch_size_per_worker=BATCH, averaging_frequency=FREQ,
                                mode=mode.split("-")[0], seed=0, shared_memory=mode != "barrier-tcp")
    for pid in python_workers():   # a reused Python worker's peak would be an earlier fit's
        reset_peak(pid)
    t0 = time.perf_counter()
    h = SparkTrainer(m, master).fit(df, epochs=epochs, callbacks=[clock], verbose=0)
    return m, h, time.perf_counter() - t0


def empty_worker_peaks(spark, df, mode):
    """Each worker's peak (VmHWM, MB) in the same fit of a tiny slice of the data (5 minibatches a worker): what a
    worker holds whatever its partition (the interpreter, pyarrow, numpy, sparkdl, the model, the averaging
    buffers), so that the data's share of the real fit's peak can be told apart from it."""
    tiny = spark.createDataFrame(df.limit(WORKERS * BATCH * FREQ).toPandas()).cache()
    clock = Clock(None, None, None)
    clock.on_epoch_end = lambda epoch, logs=None: None
    fit_spark(tiny, mode, clock, 1)
    tiny.unpersist()
    return {w: max(status(pid, "VmHWM") or 0, clock.loaded.get(w) or 0) / 2 ** 20 for w, pid in clock.workers.items()}


def run_spark(spark, df, mode, xte, yte, epochs, target):
    empty = empty_worker_peaks(spark, df, mode) if mode.startswith("barrier") else {}
    clock = Clock(xte, yte, target)
    m, h, wall = fit_spark(df, mode, clock, epochs)
    s = h.stats.summary()
    first = [r for r in h.stats.rounds if r["epoch"] == 0]
    return {"epoch_s": clock.epochs[0][0], "fit_wall_s": wall, "epochs": clock.epochs,
            "time_to_target_s": clock.time_to_target(), "rounds_per_epoch": len(first),
            "round_ms": 1000 * s["round_s_mean"], "overhead_ms": s["overhead_ms_mean"],
            "overhead_fraction": s["overhead_fraction"], "fit_fraction": s["fit_fraction"],
            "memory": worker_memory(clock, h.stats.config.get("rows"), m, empty),
            "status_mb": {w: {f: (status(pid, f) or 0) / 2 ** 20 for f in ("VmRSS", "RssAnon", "RssFile")}
                          for w, pid in clock.workers.items()}}   # after the fit: private and file-backed parts


def parent(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def python_workers():
    """The Python workers on this host: the processes a pyspark daemon forked."""
    daemons = set()
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmdline = f.read()
                if b"pyspark.daemon" in cmdline or b"\x00sparkdl_daemon\x00" in cmdline:
                    daemons.add(int(d))
        except (OSError, ValueError):
            continue
    return [pid for pid in daemons if parent(pid) in daemons]


def reset_peak(pid):
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:   # 5: the peak RSS (VmHWM) starts again from now
            f.write("5")
    except OSError:
        pass


def worker_memory(clock, rows, model, empty):
    """Per worker (issue 17): its peak resident memory (VmHWM) while it trained (from on_train_begin: partition
    loaded, model built) and before (the fit's one Spark pass over the data, which ran in the same Python workers,
    and the load), over what its process held when the pyspark daemon forked it (the daemon's VmRSS), against its
    partition's bytes (float32 features, float64 labels) plus the model's buffers (params, grads, layer state,
    optimizer state); and the fit's peak over ``empty``'s (the same worker's peak in a fit of a tiny slice), against
    the partition's bytes: what the data itself costs."""
    state = 4 * (2 * model.params.size + model.state.size + model.optimizer.state_buffer.size)
    out = {}
    for w, pid in sorted(clock.workers.items()):
        peak, base = status(pid, "VmHWM"), status(parent(pid), "VmRSS") if pid else None
        if peak is None or base is None:
            continue
        n = (rows or 0) // len(clock.workers)   # the partitions are of equal size here (60,000 rows, 2 workers)
        data = n * (784 * 4 + 8)
        before = clock.loaded.get(w) or 0
        out[w] = {"peak_mb": peak / 2 ** 20, "before_mb": before / 2 ** 20, "base_mb": base / 2 ** 20,
                  "partition_mb": data / 2 ** 20, "model_mb": state / 2 ** 20,
                  "ratio": (peak - base - state) / data if data else None,
                  "ratio_before": (before - base) / data if data else None,
                  "empty_mb": empty.get(w),
                  "ratio_data": (max(peak, before) / 2 ** 20 - empty[w]) / (data / 2 ** 20)
                  if data and empty.get(w) else None}
    return out


def torch_train(x, y, xte, yte, epochs, target, batch, lr):
    """Runs in each TorchDistributor process (DDP, gloo); rank r takes rows r::world of the same data."""
    import time as _time
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128), torch.nn.ReLU(),
                              torch.nn.Linear(128, 10))
    model = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xs, ys = torch.from_numpy(x[rank::world]), torch.from_numpy(y[rank::world].astype(np.int64))
    xt, yt = torch.from_numpy(xte), torch.from_numpy(yte.astype(np.int64))
    g = torch.Generator().manual_seed(rank)
    out, elapsed = [], 0.0
    steps = len(xs) // batch
    for epoch in range(epochs):
        t = _time.perf_counter()
        perm = torch.randperm(len(xs), generator=g)
        for i in range(steps):
            idx = perm[i * batch:(i + 1) * batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xs[idx]), ys[idx]).backward()
            opt.step()
        elapsed += _time.perf_counter() - t
        with torch.no_grad():
            acc = float((net(xt).argmax(1) == yt).float().mean())
        out.append((elapsed, acc))
        stop = torch.tensor([1 if target and acc >= target else 0])
        dist.broadcast(stop, 0)
        if stop.item():
            break
    dist.destroy_process_group()
    return out  # every rank holds the same (synchronised) weights and accuracy


def run_torch(df, xte, yte, epochs, target):
    from pyspark.ml.torch.distributor import TorchDistributor
    from sparkdl.spark.data import X, Y, batch_to_numpy, prepare
    t = prepare(df, "features", "label").select(X, Y).toArrow()   # the same DataFrame, collected once
    x, y = batch_to_numpy(t, 784)
    t0 = time.perf_counter()
    epochs_out = TorchDistributor(num_processes=WORKERS, local_mode=True, use_gpu=False).run(
        torch_train, x, y.astype(np.int64), xte, yte, epochs, target, BATCH, LR)
    wall = time.perf_counter() - t0
    ttt = next((t for t, a in epochs_out if target and a >= target), None)
    return {"epoch_s": epochs_out[0][0], "fit_wall_s": wall, "epochs": epochs_out, "time_to_target_s": ttt}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mnist-dir", default=datasets.default_mnist_dir())
    p.add_argument("--modes", default="local,jobs,barrier,barrier-tcp,torch")
    p.add_argument("--max-epochs", type=int, default=5)
    a = p.parse_args(argv)
    xtr, ytr, xte, yte, what = load(a.mnist_dir)
    target = TARGET if what == "MNIST" else None
    modes = a.modes.split(",")
    results = {}
    if "local" in modes:
        results["local"] = run_local(xtr, ytr, xte, yte, a.max_epochs, target)
    if set(modes) - {"local"}:
        from sparkdl.spark import local_session
        from sparkdl.spark.data import numpy_to_dataframe
        spark = local_session("local[2]", app_name="sparkdl-bench")
        df = numpy_to_dataframe(spark, xtr, ytr, tempfile.mkdtemp(prefix="sparkdl-bench-")).cache()
        df.count()
        for mode in ("jobs", "barrier", "barrier-tcp"):
            if mode in modes:
                results[mode] = run_spark(spark, df, mode, xte, yte, a.max_epochs, target)
        if "torch" in modes:
            try:
                import torch  # noqa: F401
                results["torch"] = run_torch(df, xte, yte, a.max_epochs, target)
            except ImportError:
                results["torch"] = {"skipped": "torch not installed"}
        spark.stop()
    print(f"data: {what}; MLP 784-256-128-10, {WORKERS} workers, batch {BATCH}/worker, averaging every {FREQ}")
    print(f"{'':11} {'epoch s':>8} {'round ms':>9} {'overhead ms':>12} {'overhead %':>11} {'fitting %':>10} "
          f"{'to 97% s':>9}")
    for k, r in results.items():
        if "skipped" in r:
            print(f"{k:11} {r['skipped']}")
            continue
        fmt = lambda v, f: format(v, f) if v is not None else "-"
        print(f"{k:11} {fmt(r['epoch_s'], '8.2f')} {fmt(r.get('round_ms'), '9.1f')} "
              f"{fmt(r.get('overhead_ms'), '12.1f')} {fmt(r.get('overhead_fraction') and 100 * r['overhead_fraction'], '11.1f')} "
              f"{fmt(r.get('fit_fraction') and 100 * r['fit_fraction'], '10.1f')} {fmt(r['time_to_target_s'], '9.2f')}")
    base = results.get("local", {}).get("epoch_s")
    if base:
        for k, r in results.items():
            if r.get("epoch_s"):
                print(f"epoch time {k} / local: {r['epoch_s'] / base:.2f}")
    for k, r in results.items():
        for w, m in (r.get("memory") or {}).items():
            if m["ratio"] is not None:
                print(f"{k} worker {w}: peak while training {m['peak_mb']:.0f} MB, before (Spark pass, load) "
                      f"{m['before_mb']:.0f} MB, {m['base_mb']:.0f} MB at its fork; partition {m['partition_mb']:.0f} "
                      f"MB, model and optimizer {m['model_mb']:.1f} MB: (training peak - fork - model) / partition = "
                      f"{m['ratio']:.2f}; (earlier peak - fork) / partition = {m['ratio_before']:.2f}")
                if m.get("ratio_data") is not None:
                    print(f"{k} worker {w}: the same worker's peak in a fit of {WORKERS * BATCH * FREQ} rows "
                          f"{m['empty_mb']:.0f} MB: (fit's peak - that) / partition = {m['ratio_data']:.2f}")
                st = r["status_mb"].get(w, {})
                print(f"{k} worker {w} after the fit: {st.get('RssAnon', 0):.0f} MB private (RssAnon), "
                      f"{st.get('RssFile', 0):.0f} MB file-backed (RssFile: libraries, the memory-mapped partition)")
    tt = {k: r.get("time_to_target_s") for k, r in results.items()}
    if tt.get("torch") and tt.get("barrier"):
        print(f"time to 97%: barrier / TorchDistributor = {tt['barrier'] / tt['torch']:.2f}")
    print(json.dumps({"data": what, "results": results}, default=float))


if __name__ == "__main__":
    main()
