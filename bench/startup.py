"""The fixed cost of a fit (issue 19): start-up to the end of round 1, time to 97% against TorchDistributor, and a
CrossValidator against the bare training loops it holds.

1. startup: MLP 784-256-128-10 on MNIST (real files when found, else MNIST-shaped random data), local[2], the
   training DataFrame already cached, 2 workers, batch 64 per worker, averaging every 5 minibatches, Adam(1e-3).
   Per mode (barrier, jobs), in a fresh process each (a fresh Spark application): the first fit, then
   ``--repeats`` more fits on the same DataFrame (a fresh model each, 1 epoch). For each fit, the time from calling
   ``SparkTrainer.fit`` to the end of round 1 with its steps, as sparkdl records them (``history.stats.startup``).
   Targets: a first fit <= 1.5 s, a repeated fit <= 0.5 s.
   evaluate: ``SparkTrainer.evaluate`` and ``predict`` (with a full pass over its output) on the cached MNIST test
   set, the first call of a Spark application and repeated ones, against the same model on the numpy arrays.
2. torch: wall time from the call to its return, to 97% MNIST test accuracy (checked at each epoch end, up to
   ``--max-epochs``), same model, optimizer, batch and 2 workers: a sparkdl barrier fit (validation_df = the test
   set, a callback stopping at val_accuracy >= 0.97; the first fit of its Spark application) against Spark's
   TorchDistributor (local_mode, 2 processes, CPU, DistributedDataParallel over gloo, each process on its half of
   the training set, rank 0 testing at each epoch end, the data read from .npy files). Start-ups included: that
   is the point. Target: sparkdl / TorchDistributor <= 0.3.
3. cv: pyspark.ml CrossValidator (3 folds, a ParamGridBuilder of 2 learning rates, the folds given by a fold
   column) over sparkdl.ml.DeepClassifier (its default MLP, 2 workers) on the bundled 8x8 digits, against the bare
   training loops it holds (model.fit on the numpy arrays of each fold's training part, the same network, epochs
   and batch size; and the refit of the best learning rate on all the rows that CrossValidator does after).
   Target: CrossValidator / bare loops <= 2.

    python bench/startup.py [--parts startup,evaluate,torch,cv] [--repeats 2] [--max-epochs 8] [--cv-epochs 10]
                            [--mnist-dir DIR]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one BLAS thread per worker: 2 workers on 2 cores

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from sparkdl import datasets  # noqa: E402
from sparkdl.train import Callback  # noqa: E402

import spark_fit  # noqa: E402  (the same model and data)

BATCH, FREQ, WORKERS, LR, TARGET = spark_fit.BATCH, spark_fit.FREQ, spark_fit.WORKERS, spark_fit.LR, spark_fit.TARGET
SHARED = os.path.join(HERE, "..", "..", "shared", "data", "mnist")
SHARED_MNIST = os.path.abspath(SHARED) if os.path.isdir(SHARED) else None
FIRST_TARGET_S, REPEAT_TARGET_S, TORCH_RATIO_TARGET, CV_RATIO_TARGET = 1.5, 0.5, 0.3, 2.0


def master(mode):
    from sparkdl.spark import ParameterAveraging
    return ParameterAveraging(num_workers=WORKERS, batch_size_per_worker=BATCH, averaging_frequency=FREQ, mode=mode,
                              seed=0)


def session():
    from sparkdl.spark import local_session
    return local_session("local[2]", app_name="sparkdl-bench-startup")


def cached_frame(spark, x, y):
    from sparkdl.spark.data import numpy_to_dataframe
    df = numpy_to_dataframe(spark, x, y, tempfile.mkdtemp(prefix="sparkdl-bench-")).cache()
    df.count()
    return df


def met(value, target):
    return "met" if value is not None and value <= target else "not met"


# -- 1. start-up --------------------------------------------------------------------------------------------------
def startup_fits(mode, mnist_dir, repeats):
    """In this process: a fresh Spark application, the cached DataFrame, then 1 + repeats one-epoch fits."""
    from sparkdl.spark import SparkTrainer
    xtr, ytr, _, _, what = spark_fit.load(mnist_dir)
    spark = session()
    df = cached_frame(spark, xtr, ytr)
    fits = []
    for i in range(1 + repeats):
        model = spark_fit.mlp()
        t0 = time.perf_counter()
        h = SparkTrainer(model, master(mode)).fit(df, epochs=1, verbose=0)
        wall = time.perf_counter() - t0
        steps = [(name, float(s)) for name, s in (h.stats.startup or [])]
        fits.append({"mode": h.mode, "startup_s": sum(s for _, s in steps), "steps": steps, "fit_wall_s": wall,
                     "loss": h.history["loss"][-1]})
        print(f"  {mode} fit {i + 1}: {fits[-1]['startup_s']:.2f} s to the end of round 1, fit {wall:.2f} s",
              file=sys.stderr, flush=True)
    spark.stop()
    return {"data": what, "fits": fits}


def run_startup(mnist_dir, repeats, modes):
    """Each mode in its own process, so that each first fit is the first of its Spark application."""
    out = {}
    for mode in modes:
        cmd = [sys.executable, os.path.abspath(__file__), "--startup-child", mode, "--repeats", str(repeats),
               "--mnist-dir", mnist_dir or "none"]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if r.returncode:
            out[mode] = {"skipped": f"the {mode} process failed (exit {r.returncode})"}
            continue
        res = json.loads(r.stdout.strip().splitlines()[-1])
        fits = res["fits"]
        first, rest = fits[0], fits[1:]
        names = [n for n, _ in first["steps"]]
        rep = None
        if rest:
            rep = {"startup_s": statistics.median(f["startup_s"] for f in rest),
                   "all_s": [f["startup_s"] for f in rest],
                   "steps": [(n, statistics.median(dict(f["steps"]).get(n, 0.0) for f in rest)) for n in names]}
        out[mode] = {"data": res["data"], "mode": first["mode"], "first": first, "repeated": rep, "fits": fits,
                     "first_target": met(first["startup_s"], FIRST_TARGET_S),
                     "repeated_target": met(rep["startup_s"], REPEAT_TARGET_S) if rep else None}
    return out


def print_startup(res):
    for mode, r in res.items():
        if "skipped" in r:
            print(f"start-up, {mode}: skipped: {r['skipped']}")
            continue
        first, rep = r["first"], r["repeated"]
        print(f"start-up, {mode} mode ({r['data']}): first fit {first['startup_s']:.2f} s to the end of round 1 "
              f"(target <= {FIRST_TARGET_S} s: {r['first_target']}), fit {first['fit_wall_s']:.1f} s")
        for n, s in first["steps"]:
            print(f"    {n:60} {s:6.2f} s")
        if rep:
            print(f"  repeated fits: median {rep['startup_s']:.2f} s (" + ", ".join(f"{s:.2f}" for s in rep["all_s"])
                  + f") (target <= {REPEAT_TARGET_S} s: {r['repeated_target']})")
            for n, s in rep["steps"]:
                print(f"    {n:60} {s:6.2f} s")


# -- evaluate and predict -----------------------------------------------------------------------------------------
def evaluate_calls(mnist_dir, repeats):
    """In this process: a fresh Spark application, the MNIST test set cached (array<float>), then 1 + repeats
    calls each of ``SparkTrainer.evaluate`` and of ``SparkTrainer.predict`` followed by a full pass over its
    output (a noop write), against the same model's evaluate and predict on the numpy arrays in this process."""
    from sparkdl.spark import SparkTrainer
    _, _, xte, yte, what = spark_fit.load(mnist_dir)
    spark = session()
    df = cached_frame(spark, xte, yte)
    trainer = SparkTrainer(spark_fit.mlp(), master("barrier"))
    out = {"data": what, "rows": len(xte), "evaluate_s": [], "predict_s": [], "bare_evaluate_s": [],
           "bare_predict_s": []}
    for _ in range(1 + repeats):
        t = time.perf_counter()
        trainer.evaluate(df)
        out["evaluate_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        trainer.predict(df).write.format("noop").mode("overwrite").save()
        out["predict_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        trainer.model.evaluate(xte, yte)
        out["bare_evaluate_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        trainer.model.predict(xte)
        out["bare_predict_s"].append(time.perf_counter() - t)
        print(f"  evaluate {out['evaluate_s'][-1]:.2f} s, predict + a pass over it {out['predict_s'][-1]:.2f} s "
              f"(in this process: {out['bare_evaluate_s'][-1]:.2f}, {out['bare_predict_s'][-1]:.2f} s)",
              file=sys.stderr, flush=True)
    spark.stop()
    return out


def run_evaluate(mnist_dir, repeats):
    cmd = [sys.executable, os.path.abspath(__file__), "--evaluate-child", "--repeats", str(repeats),
           "--mnist-dir", mnist_dir or "none"]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if r.returncode:
        return {"skipped": f"the evaluate process failed (exit {r.returncode})"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def print_evaluate(r):
    if "skipped" in r:
        print(f"evaluate/predict: skipped: {r['skipped']}")
        return
    for name in ("evaluate", "predict"):
        calls, bare = r[f"{name}_s"], statistics.median(r[f"bare_{name}_s"])
        print(f"{name} on the cached MNIST test set ({r['data']}, {r['rows']} rows, local[2]): first call "
              f"{calls[0]:.2f} s, then " + ", ".join(f"{c:.2f}" for c in calls[1:]) + f" s; the same model on the "
              f"numpy arrays in one process: {bare:.2f} s" + (" (predict: with a full pass over its output)"
                                                              if name == "predict" else ""))


# -- 2. time to 97% against TorchDistributor -----------------------------------------------------------------------
class StopAt(Callback):
    """Stops at the epoch end whose val_accuracy reaches the target; notes when each epoch ended."""

    def __init__(self, target):
        self.target, self.epochs = target, []

    def on_epoch_end(self, epoch, logs=None):
        acc = (logs or {}).get("val_accuracy")
        self.epochs.append((time.perf_counter(), acc))
        if self.target and acc is not None and acc >= self.target:
            self.model.stop_training = True


def run_sparkdl_to_target(spark, df, test_df, max_epochs, target):
    from sparkdl.spark import SparkTrainer
    stop = StopAt(target)
    model = spark_fit.mlp()
    t0 = time.perf_counter()
    h = SparkTrainer(model, master("barrier")).fit(df, epochs=max_epochs, validation_df=test_df, callbacks=[stop],
                                                   verbose=0)
    wall = time.perf_counter() - t0
    epochs = [(t - t0, a) for t, a in stop.epochs]
    return {"mode": h.mode, "wall_s": wall, "epochs": epochs,
            "reached": bool(target and epochs and epochs[-1][1] is not None and epochs[-1][1] >= target),
            "startup_s": sum(s for _, s in (h.stats.startup or []))}


def torch_fn(data_dir, max_epochs, target, batch, lr):
    """Runs in each TorchDistributor process: DDP over gloo, rank r on rows r::world, rank 0 tests each epoch."""
    import os as _os
    import time as _time
    import numpy as _np
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    began = _time.time()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    load = lambda name: _np.load(_os.path.join(data_dir, name + ".npy"), mmap_mode="r")
    xs, ys = (torch.from_numpy(_np.array(load(n)[rank::world])) for n in ("xtr", "ytr"))
    xt, yt = (torch.from_numpy(_np.array(load(n))) for n in ("xte", "yte"))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128), torch.nn.ReLU(),
                              torch.nn.Linear(128, 10))
    model = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(rank)
    ready, epochs = _time.time(), []
    for _ in range(max_epochs):
        perm = torch.randperm(len(xs), generator=g)
        for i in range(len(xs) // batch):
            idx = perm[i * batch:(i + 1) * batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xs[idx]), ys[idx]).backward()
            opt.step()
        acc = -1.0
        if rank == 0:
            with torch.no_grad():
                acc = float((net(xt).argmax(1) == yt).float().mean())
        flag = torch.tensor([acc])
        dist.broadcast(flag, 0)
        acc = float(flag.item())
        epochs.append((_time.time(), acc))
        if target and acc >= target:
            break
    dist.destroy_process_group()
    return {"began": began, "ready": ready, "epochs": epochs}


def run_torch_to_target(xtr, ytr, xte, yte, max_epochs, target):
    from pyspark.ml.torch.distributor import TorchDistributor
    with tempfile.TemporaryDirectory(prefix="sparkdl-bench-torch-") as d:
        for name, a in (("xtr", xtr), ("ytr", ytr.astype(np.int64)), ("xte", xte), ("yte", yte.astype(np.int64))):
            np.save(os.path.join(d, name + ".npy"), a)
        t0, c0 = time.perf_counter(), time.time()
        out = TorchDistributor(num_processes=WORKERS, local_mode=True, use_gpu=False).run(
            torch_fn, d, max_epochs, target, BATCH, LR)
        wall = time.perf_counter() - t0
    epochs = [(t - c0, a) for t, a in out["epochs"]]
    return {"wall_s": wall, "epochs": epochs, "function_began_s": out["began"] - c0, "ready_s": out["ready"] - c0,
            "reached": bool(target and epochs and epochs[-1][1] >= target)}


def run_torch_part(spark, xtr, ytr, xte, yte, what, max_epochs):
    target = TARGET if what == "MNIST" else None
    epochs = max_epochs if target else 1   # random data: one epoch each, no accuracy target
    df, test_df = cached_frame(spark, xtr, ytr), cached_frame(spark, xte, yte)
    out = {"data": what, "target": target, "max_epochs": epochs}
    out["sparkdl"] = run_sparkdl_to_target(spark, df, test_df, epochs, target)
    try:
        import torch  # noqa: F401
        out["torch"] = run_torch_to_target(xtr, ytr, xte, yte, epochs, target)
    except ImportError as e:
        out["torch"] = {"skipped": f"torch not installed ({e}; pip install -e '.[bench]')"}
    except Exception as e:   # TorchDistributor failed: say why, the other parts still run
        out["torch"] = {"skipped": f"TorchDistributor failed: {type(e).__name__}: {str(e)[-1500:]}"}
    for d in (df, test_df):
        d.unpersist()
    s, t = out["sparkdl"], out["torch"]
    if "skipped" not in t:
        out["ratio"] = s["wall_s"] / t["wall_s"]
        out["ratio_target"] = met(out["ratio"], TORCH_RATIO_TARGET) if s["reached"] and t["reached"] else \
            "not comparable (a side did not reach the target)" if target else "no accuracy target (random data)"
    return out


def print_torch(r):
    goal = f"to {r['target']:.0%} test accuracy" if r["target"] else "for 1 epoch (random data, no accuracy target)"
    print(f"time {goal}, wall time from the call to its return, {WORKERS} workers, batch {BATCH}/worker:")
    s = r["sparkdl"]
    print(f"  sparkdl barrier fit:  {s['wall_s']:6.1f} s  ({s['startup_s']:.2f} s to the end of round 1; epochs at "
          + ", ".join(f"{t:.1f} s acc {a:.4f}" for t, a in s["epochs"] if a is not None) + ")"
          + ("" if s["reached"] or not r["target"] else "  TARGET NOT REACHED"))
    t = r["torch"]
    if "skipped" in t:
        print(f"  TorchDistributor: skipped: {t['skipped']}")
        return
    print(f"  TorchDistributor:     {t['wall_s']:6.1f} s  (train function began at {t['function_began_s']:.1f} s, "
          f"model ready at {t['ready_s']:.1f} s; epochs at "
          + ", ".join(f"{e:.1f} s acc {a:.4f}" for e, a in t["epochs"]) + ")"
          + ("" if t["reached"] or not r["target"] else "  TARGET NOT REACHED"))
    print(f"  sparkdl / TorchDistributor = {r['ratio']:.2f} (target <= {TORCH_RATIO_TARGET}: {r['ratio_target']})")


# -- 3. CrossValidator against its bare training loops --------------------------------------------------------------
def run_cv(spark, epochs, folds=3, lrs=(0.01, 0.003), batch=32):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
    from sparkdl import optim
    from sparkdl.ml import DeepClassifier
    from sparkdl.ml.training import HIDDEN_UNITS
    from sparkdl.nn import Dense, Sequential
    from sparkdl.spark.data import float_lists
    x, y = datasets.load_digits()
    fold = np.arange(len(x)) % folds
    d = tempfile.mkdtemp(prefix="sparkdl-bench-cv-")
    pq.write_table(pa.table({"features": float_lists(x), "label": pa.array(y), "fold": pa.array(fold, pa.int32())}),
                   os.path.join(d, "part-0.parquet"))
    df = spark.read.parquet(d).cache()
    df.count()
    est = DeepClassifier(epochs=epochs, batchSize=batch, numWorkers=WORKERS, seed=0)
    grid = ParamGridBuilder().addGrid(est.learningRate, list(lrs)).build()
    cv = CrossValidator(estimator=est, estimatorParamMaps=grid, numFolds=folds, foldCol="fold", seed=0,
                        evaluator=MulticlassClassificationEvaluator(metricName="accuracy"))
    t0 = time.perf_counter()
    cv_model = cv.fit(df)
    cv_s = time.perf_counter() - t0
    best_lr = lrs[int(np.argmax(cv_model.avgMetrics))]
    summary = cv_model.bestModel.summary   # the refit's
    refit = {"mode": summary.stats.config.get("mode"), "training_s": summary.trainingTime,
             "startup_s": sum(s for _, s in (summary.stats.startup or []))}
    df.unpersist()

    def bare(xs, ys, lr):
        m = Sequential([Dense(HIDDEN_UNITS, activation="relu"), Dense(10, activation="softmax")],
                       input_shape=(x.shape[1],), seed=0).compile(optim.Adam(lr), "sparse_categorical_crossentropy",
                                                                  ["accuracy"])
        t = time.perf_counter()
        m.fit(xs, ys, epochs=epochs, batch_size=batch, verbose=0)
        return time.perf_counter() - t

    loops = [bare(x[fold != k], y[fold != k], lr) for k in range(folds) for lr in lrs]
    bare_refit = bare(x, y, best_lr)
    bare_s = sum(loops)
    return {"rows": len(x), "folds": folds, "learning_rates": list(lrs), "epochs": epochs, "batch": batch,
            "cv_s": cv_s, "avg_metrics": list(cv_model.avgMetrics), "best_lr": best_lr, "bare_loops_s": loops,
            "bare_s": bare_s, "bare_refit_s": bare_refit, "refit": refit, "ratio": cv_s / bare_s,
            "ratio_with_refit": cv_s / (bare_s + bare_refit),
            "ratio_target": met(cv_s / bare_s, CV_RATIO_TARGET)}


def print_cv(r):
    print(f"CrossValidator, {r['folds']} folds x {len(r['learning_rates'])} learning rates, DeepClassifier on the "
          f"bundled digits ({r['rows']} rows), {r['epochs']} epochs, batch {r['batch']}/worker, {WORKERS} workers: "
          f"{r['cv_s']:.1f} s (accuracy by learning rate: "
          + ", ".join(f"{lr}: {a:.3f}" for lr, a in zip(r["learning_rates"], r["avg_metrics"])) + ")")
    f = r["refit"]
    print(f"  its refit of the best learning rate on all rows ({f['mode']} mode): {f['training_s']:.2f} s, of which "
          f"{f['startup_s']:.2f} s to the end of round 1")
    print(f"  the {len(r['bare_loops_s'])} bare training loops (model.fit on each fold's training part): "
          f"{r['bare_s']:.2f} s; with the refit on all rows: {r['bare_s'] + r['bare_refit_s']:.2f} s")
    print(f"  CrossValidator / bare loops = {r['ratio']:.1f} (target <= {CV_RATIO_TARGET}: {r['ratio_target']}); "
          f"/ bare loops and refit = {r['ratio_with_refit']:.1f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="startup,evaluate,torch,cv")
    p.add_argument("--modes", default="barrier,jobs", help="start-up: the modes measured")
    p.add_argument("--repeats", type=int, default=2, help="start-up: repeated fits after the first, per mode")
    p.add_argument("--max-epochs", type=int, default=8, help="torch: at most this many epochs to the target")
    p.add_argument("--cv-epochs", type=int, default=10)
    p.add_argument("--mnist-dir", default=datasets.default_mnist_dir() or SHARED_MNIST,
                   help="MNIST IDX files ('none': MNIST-shaped random data; default: $SPARKDL_MNIST_DIR, else "
                        "../shared/data/mnist beside the checkout where it exists)")
    p.add_argument("--startup-child", help=argparse.SUPPRESS)
    p.add_argument("--evaluate-child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    mnist_dir = None if (a.mnist_dir or "none").lower() == "none" else a.mnist_dir
    if a.startup_child:
        print(json.dumps(startup_fits(a.startup_child, mnist_dir, a.repeats), default=float))
        return
    if a.evaluate_child:
        print(json.dumps(evaluate_calls(mnist_dir, a.repeats), default=float))
        return
    parts = a.parts.split(",")
    results = {}
    if "startup" in parts:
        results["startup"] = run_startup(mnist_dir, a.repeats, a.modes.split(","))
        print_startup(results["startup"])
    if "evaluate" in parts:
        results["evaluate"] = run_evaluate(mnist_dir, a.repeats)
        print_evaluate(results["evaluate"])
    if "torch" in parts or "cv" in parts:
        spark = session()
        if "torch" in parts:
            xtr, ytr, xte, yte, what = spark_fit.load(mnist_dir)
            results["torch"] = run_torch_part(spark, xtr, ytr, xte, yte, what, a.max_epochs)
            del xtr, xte
            print_torch(results["torch"])
        if "cv" in parts:
            results["cv"] = run_cv(spark, a.cv_epochs)
            print_cv(results["cv"])
        spark.stop()
    print(json.dumps(results, default=float))


if __name__ == "__main__":
    main()
