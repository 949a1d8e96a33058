"""Barrier mode across hosts and under load: how the runtime scales and what it sends.

1. scale: N = 2, 3, 4, 6 workers, each on its own simulated host (a network namespace with its own hostname and
   /dev/shm, tests/simhosts.py; root only), the driver in this namespace, every worker a plain process
   (sparkdl.dist.procs: the runtime without Spark's launch costs). Per N: bytes per round at the driver
   (control, timing records, model fetches) and per worker (ring), round time, overhead fraction (round wall
   less the slowest worker's fitting time).
2. busy: local[2] Spark, barrier fits with a competing busy process on the machine, against local training
   (model.fit in one process) with the same busy process; interleaved, ``--repeats`` times.
3. local: local[2] Spark barrier fit (both workers on this host, shared memory) against local training.
4. spill: two plain-process workers on this host, their partitions in memory against spilled to memory-mapped
   files (memory_budget=0): each worker's peak resident memory, and the epoch time.

MLP 784-256-128-10 on real MNIST (../shared/data/mnist; MNIST-shaped random data without it), Adam(1e-3), batch 64
per worker, averaging every 5 minibatches, one BLAS thread per worker, one epoch per measurement.

    python bench/scale.py [--parts scale,busy,local,spill] [--workers 2,3,4,6] [--epochs 1] [--repeats 3]
                          [--mnist-dir DIR]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))   # simhosts.py

from sparkdl import datasets  # noqa: E402
from sparkdl.dist import modes as masters  # noqa: E402
from sparkdl.dist.options import Options  # noqa: E402
from sparkdl.dist.procs import ProcessLauncher  # noqa: E402
from sparkdl.dist.run import FitRun  # noqa: E402

sys.path.insert(0, HERE)
import spark_fit  # noqa: E402  (the same model, data and local baseline)

BATCH, FREQ = spark_fit.BATCH, spark_fit.FREQ


def block_bytes(model):
    return 4 * (model.params.size + model.state.size + model.optimizer.state_buffer.size)


def run_scale(x, y, n, epochs):
    import simhosts
    with simhosts.SimulatedHosts(n) as hosts:
        shards = [(x[i::n], y[i::n]) for i in range(n)]
        options = Options(num_workers=n, batch_size_per_worker=BATCH, averaging_frequency=FREQ, seed=0,
                          mode="barrier")
        model = spark_fit.mlp()
        run = FitRun(model, options, epochs, [], None, 0, 0)
        launcher = ProcessLauncher(shards, addresses=hosts.ips, prefixes=[hosts.prefix(i) for i in range(n)],
                                   driver_host=hosts.driver_ip, env={"OPENBLAS_NUM_THREADS": "1"})
        t0 = time.perf_counter()
        try:
            history = masters.get("barrier").fit(options, run, launcher)
        finally:
            launcher.close()
        wall = time.perf_counter() - t0
    stats, s = history.stats, block_bytes(model)
    rounds = stats.rounds[1:]   # the first round carries start-up
    walls = [r["wall_s"] for r in rounds]
    over = [r["wall_s"] - r["fit_s_max"] for r in rounds]
    sent = [w["sent"] for w in stats.workers if w["round"] > 0]
    summary = stats.summary()
    return {"workers": n, "groups": history.placement["groups"], "block_bytes": s, "fit_wall_s": wall,
            "rounds": len(stats.rounds), "round_ms_median": 1000 * statistics.median(walls),
            "overhead_fraction": summary["overhead_fraction"],
            "overhead_fraction_median": statistics.median(over) / statistics.median(walls),
            "driver_control_bytes_per_round": summary["driver_control_bytes_per_round"],
            "driver_control_bytes_max": summary["driver_control_bytes_max"],
            "driver_stats_bytes_per_round": summary["driver_stats_bytes_per_round"],
            "driver_model_bytes_per_fetch": max(r["driver_model_bytes"] for r in stats.rounds),
            "worker_bytes_per_round_median": statistics.median(sent),
            "worker_bytes_per_round_max": max(sent),
            "worker_bytes_bound": 2 * (n - 1) / n * s}


def run_spill(x, y, epochs):
    out = {}
    for budget in (None, 0):
        shards = [(x[i::2], y[i::2]) for i in range(2)]
        options = Options(num_workers=2, batch_size_per_worker=BATCH, averaging_frequency=FREQ, seed=0,
                          mode="barrier", memory_budget=budget)
        model = spark_fit.mlp()
        run = FitRun(model, options, epochs, [], None, 0, 0)
        launcher = ProcessLauncher(shards, env={"OPENBLAS_NUM_THREADS": "1"})
        try:
            history = masters.get("barrier").fit(options, run, launcher)
        finally:
            launcher.close()
        peak = max(w["memory"] for w in history.stats.workers)
        out["spilled" if budget == 0 else "in_memory"] = {
            "memory_mb": peak / 2 ** 20, "partition_mb": shards[0][0].nbytes / 2 ** 20,
            "wall_s": history.stats.summary()["wall_s"]}
    return out


def busy_process():
    return subprocess.Popen([sys.executable, "-c", "while True:\n    pass"])


def run_local_and_barrier(x, y, xte, yte, epochs, busy, label, repeats):
    """Local training and a local[2] barrier fit, interleaved (local, barrier, barrier, local) ``repeats`` times
    in one Spark session; the ratio is the median of the per-repetition ratios (the machine is shared)."""
    from sparkdl.spark import local_session
    from sparkdl.spark.data import numpy_to_dataframe
    import tempfile
    spark = local_session("local[2]", app_name="sparkdl-bench-scale")
    df = numpy_to_dataframe(spark, x, y, tempfile.mkdtemp(prefix="sparkdl-bench-")).cache()
    df.count()
    hog = busy_process() if busy else None
    reps = []
    try:
        for _ in range(repeats):
            local = [spark_fit.run_local(x, y, xte, yte, epochs, None)]
            barrier = [spark_fit.run_spark(spark, df, "barrier", xte, yte, epochs, None) for _ in range(2)]
            local.append(spark_fit.run_local(x, y, xte, yte, epochs, None))
            reps.append({"local_epoch_s": [r["epoch_s"] for r in local],
                         "barrier_epoch_s": [r["epoch_s"] for r in barrier],
                         "barrier_overhead_fraction": [r["overhead_fraction"] for r in barrier]})
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
        spark.stop()
    ratios = [sum(r["barrier_epoch_s"]) / sum(r["local_epoch_s"]) for r in reps]
    return {"case": label, "repetitions": reps, "barrier_over_local_each": ratios,
            "barrier_over_local": statistics.median(ratios),
            "local_epoch_s": statistics.median(v for r in reps for v in r["local_epoch_s"]),
            "barrier_epoch_s": statistics.median(v for r in reps for v in r["barrier_epoch_s"]),
            "barrier_overhead_fraction": statistics.median(v for r in reps for v in r["barrier_overhead_fraction"])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mnist-dir", default=datasets.default_mnist_dir())
    p.add_argument("--parts", default="scale,busy,local,spill")
    p.add_argument("--workers", default="2,3,4,6")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="busy, local: (local, barrier, barrier, local) repetitions")
    a = p.parse_args(argv)
    x, y, xte, yte, what = spark_fit.load(a.mnist_dir)
    parts = a.parts.split(",")
    out = {"data": what, "scale": [], "single_host": []}
    if "scale" in parts:
        import simhosts
        reason = simhosts.available()
        if reason:
            out["scale_skipped"] = reason
            print(f"scale: skipped ({reason})")
        for n in ([] if reason else [int(v) for v in a.workers.split(",")]):
            r = run_scale(x, y, n, a.epochs)
            out["scale"].append(r)
            print(f"N={n}: round {r['round_ms_median']:.1f} ms, overhead {100 * r['overhead_fraction']:.1f}% "
                  f"(median round {100 * r['overhead_fraction_median']:.1f}%), driver bytes/round: control "
                  f"{r['driver_control_bytes_per_round']:.0f} (max {r['driver_control_bytes_max']}), timing records "
                  f"{r['driver_stats_bytes_per_round']:.0f}; model per fetch {r['driver_model_bytes_per_fetch']}; "
                  f"per worker {r['worker_bytes_per_round_median']:.0f} B/round = "
                  f"{r['worker_bytes_per_round_median'] / r['worker_bytes_bound']:.3f} x 2(N-1)/N x S "
                  f"(S = {r['block_bytes']})", flush=True)
    for part, busy in (("busy", True), ("local", False)):
        if part in parts:
            r = run_local_and_barrier(x, y, xte, yte, a.epochs, busy, part, a.repeats)
            out["single_host"].append(r)
            print(f"{part}: local epoch {r['local_epoch_s']:.2f} s, barrier epoch {r['barrier_epoch_s']:.2f} s "
                  f"(medians), barrier / local = {r['barrier_over_local']:.2f} (median of "
                  f"{', '.join(f'{v:.2f}' for v in r['barrier_over_local_each'])}; barrier overhead "
                  f"{100 * r['barrier_overhead_fraction']:.1f}%)", flush=True)
    if "spill" in parts:
        out["spill"] = r = run_spill(x, y, a.epochs)
        print(f"spill: a worker's private memory (RssAnon, largest over its rounds) "
              f"{r['in_memory']['memory_mb']:.0f} MB with its {r['in_memory']['partition_mb']:.0f} MB partition in "
              f"memory, {r['spilled']['memory_mb']:.0f} MB spilled; training time "
              f"{r['in_memory']['wall_s']:.2f} s vs {r['spilled']['wall_s']:.2f} s", flush=True)
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()
