"""Training throughput of sparkdl's numeric core beside PyTorch CPU, measured in the same run (``make bench``).

Models, on MNIST-shaped float32 batches (seeded random data: the same arrays for both frameworks):

- ``mlp``: 784-256-128-10 (relu, relu, logits);
- ``cnn``: LeNet-style, 28x28x1 -> conv 5x5x6 relu -> maxpool 2 -> conv 5x5x16 relu -> maxpool 2 -> flatten
  -> dense 120 relu -> 84 relu -> 10 (sparkdl channels_last NHWC, torch NCHW: for one channel the same bytes).

Batch 128, plain SGD (lr 0.01), ``--threads`` BLAS/OpenMP threads (2). sparkdl runs ``model.train_on_batch`` on
pre-sliced batches; torch runs ``model(x)``, ``F.cross_entropy``, ``loss.backward()``, ``opt.step()``,
``opt.zero_grad(set_to_none=True)``. The thread counts are put in the environment before numpy and torch are
imported, and enforced with ``torch.set_num_threads`` and threadpoolctl (when installed).

Measurement: after an initial warm-up, ``--repeats`` rounds; in each round every framework runs ``--warmup``
untimed then ``--steps`` timed steps, the order alternating (A B, B A, ...). Each segment records samples/s
and its CPU use (process CPU seconds / wall seconds: about ``threads`` when the process had its cores, less
when other processes or the hypervisor took them). A round is *clean* when every segment in it used at least
90% of ``threads`` cores. The reported samples/s are medians over the clean rounds (over all rounds, with a
warning, when fewer than 3 are clean), and the headline ratio sparkdl/torch is the median of the per-round
ratios (both segments ran back to back) over the same rounds. The ``model.fit`` epoch throughput of sparkdl
(shuffle, gather, accuracy metric included) is reported beside it.

With MNIST files (``--mnist-dir``, default ``sparkdl.datasets.default_mnist_dir()``) the MLP is also trained
for ``--mnist-epochs`` (3) epochs on the 60k training images and its test accuracy printed (SGD with
momentum 0.9, lr 0.05: plain SGD at lr 0.01 needs more than 3 epochs to pass 0.97); torch runs the same recipe.

Output: a table, then one line ``BENCH_JSON {...}``. Targets (the issue): MLP >= 1.2x torch, CNN >= 0.8x.
"""
import argparse
import os
import sys


INPUT_SHAPES = {"mlp": (784,), "cnn": (28, 28, 1), "cnn_bn": (28, 28, 1)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=0,
                   help="timed training steps per segment, the same for both frameworks (0: enough for the slower "
                        "one to run about --segment-seconds)")
    p.add_argument("--segment-seconds", type=float, default=0.3, help="segment length when --steps is 0")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each timed segment")
    p.add_argument("--repeats", type=int, default=10, help="interleaved rounds (one segment per framework each)")
    p.add_argument("--pause", type=float, default=0.5,
                   help="seconds to sleep before each segment, so the other framework's idle BLAS/OpenMP threads "
                        "have stopped spinning on the cores")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate of the throughput runs")
    p.add_argument("--models", default="mlp,cnn,cnn_bn", help="comma-separated subset of mlp,cnn,cnn_bn")
    p.add_argument("--threads", type=int, default=2, help="BLAS / OpenMP / torch intra-op threads")
    p.add_argument("--frameworks", default="sparkdl,torch", help="comma-separated subset of sparkdl,torch")
    p.add_argument("--sparkdl-threads", default="auto",
                   help="comma-separated model.compile(threads=N) values for sparkdl, each its own runner in the same "
                        "rounds (e.g. auto,1,2); N > 1 splits each batch across N threads with 1 BLAS thread each, "
                        "'auto' (the default of compile) chooses per model. The first is the 'sparkdl' column; the "
                        "others are reported as sparkdl_tN with their own ratio")
    p.add_argument("--no-fit", action="store_true", help="skip the model.fit epoch throughput")
    p.add_argument("--mnist-dir", default=None,
                   help="MNIST IDX directory for the accuracy check (default: sparkdl.datasets.default_mnist_dir(); "
                        "'none' skips the check)")
    p.add_argument("--mnist-epochs", type=int, default=3)
    p.add_argument("--mnist-lr", type=float, default=0.05, help="SGD learning rate of the MNIST accuracy run")
    p.add_argument("--mnist-momentum", type=float, default=0.9, help="SGD momentum of the MNIST accuracy run")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = sorted(set(args.models) - set(INPUT_SHAPES))
    if bad or not args.models:
        p.error(f"--models takes some of {', '.join(INPUT_SHAPES)}; received {args.models}")
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    bad = sorted(set(args.frameworks) - {"sparkdl", "torch"})
    if bad or not args.frameworks:
        p.error(f"--frameworks takes sparkdl and/or torch; received {args.frameworks}")
    try:
        args.sparkdl_threads = [t.strip() if t.strip() == "auto" else int(t) for t in args.sparkdl_threads.split(",")
                                if t.strip()]
    except ValueError:
        args.sparkdl_threads = []
    if not args.sparkdl_threads or min((t for t in args.sparkdl_threads if t != "auto"), default=1) < 1 \
            or len(set(args.sparkdl_threads)) != len(args.sparkdl_threads):
        p.error("--sparkdl-threads takes distinct positive ints or 'auto', e.g. auto,1,2")
    if args.steps < 0 or args.segment_seconds <= 0:
        p.error("--steps must be >= 0 and --segment-seconds > 0")
    for name in ("repeats", "batch_size", "threads", "mnist_epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.pause < 0:
        p.error("--warmup and --pause must be >= 0")
    return args


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    # Thread counts must be in the environment before numpy (OpenBLAS) or torch (OpenMP, MKL) is imported.
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(ARGS.threads)

import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sparkdl  # noqa: E402
from sparkdl import datasets, optim  # noqa: E402
from sparkdl.nn import Dense, Flatten, Sequential  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the torch column is skipped
    torch = None

try:
    import threadpoolctl
except ImportError:
    threadpoolctl = None

CLEAN_UTIL = 0.9      # a segment is clean when it used >= 90% of the cores it asked for
MIN_CLEAN = 3         # fewer clean rounds than this: report over all rounds, with a warning
INITIAL_WARMUP = 20   # steps per framework before the first round (thread pools, allocator, page faults)


# ---- models ------------------------------------------------------------------------------------------------
def sparkdl_model(kind, seed, lr, momentum=0.0, threads="auto"):
    """``(model, None)``, or ``(None, reason)`` when the layers are not available."""
    if kind == "mlp":
        layers = [Dense(256, activation="relu"), Dense(128, activation="relu"), Dense(10)]
    else:
        try:
            from sparkdl.nn.conv import Conv2D
            from sparkdl.nn.pooling import MaxPooling2D
        except ImportError as e:
            return None, f"Conv2D/MaxPooling2D not importable ({e})"
        if kind == "cnn":
            features = [Conv2D(6, 5, activation="relu"), MaxPooling2D(2), Conv2D(16, 5, activation="relu"),
                        MaxPooling2D(2)]
        else:   # cnn_bn: each convolution (no bias) normalised over the batch before its relu
            from sparkdl.nn import BatchNormalization, ReLU
            features = [Conv2D(6, 5, use_bias=False), BatchNormalization(), ReLU(), MaxPooling2D(2),
                        Conv2D(16, 5, use_bias=False), BatchNormalization(), ReLU(), MaxPooling2D(2)]
        layers = features + [Flatten(), Dense(120, activation="relu"), Dense(84, activation="relu"), Dense(10)]
    model = Sequential(layers, input_shape=INPUT_SHAPES[kind], seed=seed)
    model.compile(optim.SGD(learning_rate=lr, momentum=momentum), "sparse_categorical_crossentropy", ["accuracy"],
                  threads=threads)
    return model, None


def torch_model(kind, seed):
    torch.manual_seed(seed)
    nn = torch.nn
    if kind == "mlp":
        return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    if kind == "cnn":
        features = [nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)]
    else:
        features = [nn.Conv2d(1, 6, 5, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Conv2d(6, 16, 5, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*features, nn.Flatten(), nn.Linear(16 * 4 * 4, 120), nn.ReLU(), nn.Linear(120, 84),
                         nn.ReLU(), nn.Linear(84, 10))


# ---- data --------------------------------------------------------------------------------------------------
def random_data(kind, n, seed):
    """Seeded MNIST-shaped data: x float32 in [0, 1) of the model's input shape, y int64 in 0..9."""
    rng = np.random.default_rng(seed)
    x = rng.random((n,) + INPUT_SHAPES[kind], dtype=np.float32)
    return x, rng.integers(0, 10, n).astype(np.int64)


def slices(x, y, batch_size):
    return [(np.ascontiguousarray(x[i:i + batch_size]), np.ascontiguousarray(y[i:i + batch_size]))
            for i in range(0, len(x) - batch_size + 1, batch_size)]


def torch_batches(kind, batches):
    """The same arrays as torch tensors (no copy); the CNN gets NCHW, which for one channel is a reshape."""
    out = []
    for xb, yb in batches:
        xt = torch.from_numpy(xb)
        if kind != "mlp":
            xt = xt.reshape(xb.shape[0], 1, 28, 28)
        out.append((xt, torch.from_numpy(yb)))
    return out


# ---- the timed loops ---------------------------------------------------------------------------------------
class SparkdlRunner:
    name = "sparkdl"

    def __init__(self, model, batches, name="sparkdl"):
        self.model, self.batches, self.i, self.name = model, batches, 0, name

    def run(self, steps):
        model, batches, n, i = self.model, self.batches, len(self.batches), self.i
        for _ in range(steps):
            xb, yb = batches[i % n]
            model.train_on_batch(xb, yb)
            i += 1
        self.i = i


class TorchRunner:
    name = "torch"

    def __init__(self, model, batches, lr):
        self.model, self.batches, self.i = model, batches, 0
        self.opt = torch.optim.SGD(model.parameters(), lr=lr)
        model.train()

    def run(self, steps):
        model, opt, batches, n, i = self.model, self.opt, self.batches, len(self.batches), self.i
        for _ in range(steps):
            xb, yb = batches[i % n]
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            i += 1
        self.i = i


def timed(fn):
    """(wall seconds, CPU cores used on average) of ``fn()``."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    return wall, (time.process_time() - c0) / wall


def interleaved(runners, steps, warmup, repeats, batch_size, pause, segment_seconds):
    """(steps per segment, {runner name: [(samples/s, cores used) per round]}). The order alternates each round.
    ``steps=0`` picks the number of steps the slower runner needs for ``segment_seconds``."""
    slowest = 0.0
    for r in runners:
        r.run(max(INITIAL_WARMUP, warmup))
        t0 = time.perf_counter()
        r.run(5)
        slowest = max(slowest, (time.perf_counter() - t0) / 5)
    if not steps:
        steps = max(10, round(segment_seconds / slowest))
    out = {r.name: [] for r in runners}
    for rep in range(repeats):
        for r in (runners if rep % 2 == 0 else runners[::-1]):
            time.sleep(pause)
            r.run(warmup)
            wall, util = timed(lambda: r.run(steps))
            out[r.name].append((steps * batch_size / wall, util))
    return steps, out


def summarize(segments, threads, split=()):
    """Medians over the clean rounds (all rounds when fewer than MIN_CLEAN are clean) and per-round ratios."""
    names = list(segments)
    repeats = len(segments[names[0]])
    want = CLEAN_UTIL * min(threads, os.cpu_count() or threads)
    # a sparkdl runner whose batches are split across Python threads (``split``) cannot keep every core busy by
    # design (GIL, uneven parts), so its CPU use does not count here; torch and the one-part runners do.
    judged = [n for n in names if n not in split] or names
    clean = [i for i in range(repeats) if all(segments[n][i][1] >= want for n in judged)]
    used = clean if len(clean) >= MIN_CLEAN else list(range(repeats))
    res = {"rounds": repeats, "clean_rounds": len(clean), "stats_over": "clean" if used is clean else "all"}
    for n in names:
        rates = [segments[n][i][0] for i in used]
        res[n] = {"median": round(statistics.median(rates)), "best": round(max(rates)),
                  "all": [round(r) for r, _ in segments[n]], "cpu_util": [round(u, 2) for _, u in segments[n]]}
    for n in names:
        if not n.startswith("sparkdl") or "torch" not in segments:
            continue
        sfx = n[len("sparkdl"):]
        per_round = [segments[n][i][0] / segments["torch"][i][0] for i in used]
        res["ratio" + sfx] = round(statistics.median(per_round), 3)
        res["ratio_rounds" + sfx] = [round(r, 3) for r in per_round]
        res["ratio_of_medians" + sfx] = round(res[n]["median"] / res["torch"]["median"], 3)
        res["ratio_of_bests" + sfx] = round(res[n]["best"] / res["torch"]["best"], 3)
    return res


def mlp_flops_per_sample(sizes=(784, 256, 128, 10)):
    """Floating-point operations of one MLP training step per sample, its GEMMs only: the forward products, the
    weight gradients, and the input gradients of every layer but the first (neither framework forms that one)."""
    products = [a * b for a, b in zip(sizes, sizes[1:])]
    return 2 * (2 * sum(products) + sum(products[1:]))


def gemm_peak(n=2048, repeats=5):
    """This machine's float32 GEMM rate (GFLOP/s, best of ``repeats``) for one n x n product, at the thread
    limits in force: the ceiling of any MLP step built on GEMMs."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    a @ b
    best = min(timed(lambda: a @ b)[0] for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def mlp_ceiling(res, target=1.5):
    """The MLP's best rates (its least disturbed segments) as GFLOP/s beside the GEMM peak, and what ``target`` x
    torch's best would need."""
    flops, peak = mlp_flops_per_sample(), gemm_peak()
    out = {"mflop_per_sample": round(flops / 1e6, 3), "gemm_peak_gflops": round(peak, 1)}
    for name in ("sparkdl", "torch"):
        if name in res:
            out[name + "_gflops"] = round(res[name]["best"] * flops / 1e9, 1)
    if "torch" in res:
        out[f"needed_for_{target}x_torch_gflops"] = round(target * res["torch"]["best"] * flops / 1e9, 1)
    return out


def fit_rate(model, x, y, batch_size, repeats=3):
    """(samples/s, cores used) of one ``model.fit`` epoch over (x, y): the median of ``repeats`` epochs, after a
    short untimed fit."""
    model.fit(x[:4 * batch_size], y[:4 * batch_size], epochs=1, batch_size=batch_size, verbose=0)
    runs = sorted(timed(lambda: model.fit(x, y, epochs=1, batch_size=batch_size, verbose=0))
                  for _ in range(repeats))
    wall, util = runs[len(runs) // 2]
    return len(x) / wall, util


# ---- MNIST accuracy ----------------------------------------------------------------------------------------
def mnist_accuracy(args, directory):
    xtr, ytr = datasets.load_mnist(directory, "train")
    xte, yte = datasets.load_mnist(directory, "test")
    out = {}
    if "sparkdl" in args.frameworks:
        model, _ = sparkdl_model("mlp", args.seed, args.mnist_lr, args.mnist_momentum)
        t0 = time.perf_counter()
        model.fit(xtr, ytr, epochs=args.mnist_epochs, batch_size=args.batch_size, verbose=0)
        secs = time.perf_counter() - t0
        out["sparkdl"] = {"test_accuracy": round(model.evaluate(xte, yte)["accuracy"], 4),
                          "fit_seconds": round(secs, 2), "samples_per_s": round(args.mnist_epochs * len(xtr) / secs)}
    if "torch" in args.frameworks and torch is not None:
        model = torch_model("mlp", args.seed)
        opt = torch.optim.SGD(model.parameters(), lr=args.mnist_lr, momentum=args.mnist_momentum)
        xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
        gen = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        for _ in range(args.mnist_epochs):
            perm = torch.randperm(len(xt), generator=gen)
            for i in range(0, len(xt), args.batch_size):
                idx = perm[i:i + args.batch_size]
                loss = F.cross_entropy(model(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        secs = time.perf_counter() - t0
        with torch.no_grad():
            acc = float((model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
        out["torch"] = {"test_accuracy": round(acc, 4), "fit_seconds": round(secs, 2),
                        "samples_per_s": round(args.mnist_epochs * len(xtr) / secs)}
    return out


# ---- report ------------------------------------------------------------------------------------------------
def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return None


def source_versions():
    """Short sha1s of the numeric-core files measured (the tree may have uncommitted changes) and the git HEAD."""
    import hashlib
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = {}
    for rel in ("sparkdl/nn/core.py", "sparkdl/nn/activations.py", "sparkdl/nn/conv.py", "sparkdl/nn/pooling.py",
                "sparkdl/nn/windows.py", "sparkdl/losses.py", "sparkdl/optim/optimizers.py"):
        try:
            with open(os.path.join(root, rel), "rb") as f:
                out[rel] = hashlib.sha1(f.read()).hexdigest()[:10]
        except OSError:
            pass
    try:
        out["git_head"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                         text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def environment(args):
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {"cpu": cpu, "cpus": os.cpu_count(), "threads": args.threads, "python": platform.python_version(),
           "numpy": np.__version__, "sparkdl": sparkdl.__version__,
           "torch": torch.__version__ if torch is not None else None,
           "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"), "sources": source_versions()}
    if threadpoolctl is not None:
        for info in threadpoolctl.threadpool_info():
            if info.get("internal_api") == "openblas" and "numpy" in info.get("filepath", ""):
                env["openblas"] = f"{info.get('version')} {info.get('architecture')}"
    return env


def print_table(rows, args):
    head = (f"{'model':<5} {'sparkdl samples/s':>18} {'torch samples/s':>18} {'sparkdl/torch':>13} "
            f"{'clean rounds':>12} {'cores s/t':>9} {'sparkdl fit':>11}")
    print(head)
    print(f"{'':<5} {'median (best)':>18} {'median (best)':>18} {'per round':>13} {'':>12} {'':>9} "
          f"{'samples/s':>11}")
    print("-" * len(head))
    for kind, res in rows:
        if "skipped" in res:
            print(f"{kind:<6} {res['skipped']}")
            continue
        s, t = res.get("sparkdl"), res.get("torch")
        col = lambda d: f"{d['median']:,} ({d['best']:,})" if d else "-"
        tcol = "torch not installed" if torch is None and "torch" in args.frameworks else col(t)
        cores = "/".join(f"{statistics.median(d['cpu_util']):.1f}" if d else "-" for d in (s, t))
        fit = f"{res['sparkdl_fit']['samples_per_s']:,}" if "sparkdl_fit" in res else "-"
        print(f"{kind:<6} {col(s):>18} {tcol:>18} {res.get('ratio', '-'):>13} "
              f"{res['clean_rounds']:>5}/{res['rounds']:<6} {cores:>9} {fit:>11}")
    for kind, res in rows:
        for name in res:
            if name.startswith("sparkdl_t") and isinstance(res[name], dict) and "median" in res[name]:
                d = res[name]
                print(f"{kind:<6} {name}: {d['median']:,} ({d['best']:,}) samples/s, sparkdl_t/torch per round "
                      f"{res.get('ratio' + name[len('sparkdl'):], '-')}, cores {statistics.median(d['cpu_util']):.1f}")
    for kind, res in rows:
        if res.get("sparkdl_parts"):
            c = res.get("ceiling")
            if c and "torch_gflops" in c:
                need = c["needed_for_1.5x_torch_gflops"]
                print(f"{kind:<6} {c['mflop_per_sample']} MFLOP per sample a step; float32 GEMM peak here "
                      f"(2048x2048, {args.threads} threads) {c['gemm_peak_gflops']} GFLOP/s; best rounds: sparkdl "
                      f"{c.get('sparkdl_gflops', '-')}, torch {c['torch_gflops']} GFLOP/s; 1.5x torch would take "
                      f"{need} GFLOP/s ({need / c['gemm_peak_gflops']:.0%} of the peak)")
            print(f"{kind:<6} parts per step (compile(threads=...)): " + ", ".join(
                f"{n} {t}: {res['sparkdl_parts'][n]}" for n, t in zip(res["sparkdl_parts"], ARGS.sparkdl_threads)))
    for kind, res in rows:
        if res.get("stats_over") == "all":
            print(f"# WARNING {kind}: only {res['clean_rounds']} of {res['rounds']} rounds had the {args.threads} "
                  f"cores to themselves (the machine is busy); figures are over all rounds and unreliable")


def main(args):
    if torch is not None:
        torch.set_num_threads(args.threads)
    limiter = threadpoolctl.threadpool_limits(args.threads) if threadpoolctl is not None else None
    env = environment(args)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "env": env, "batch_size": args.batch_size,
              "warmup": args.warmup, "repeats": args.repeats, "pause": args.pause, "lr": args.lr,
              "loadavg_start": loadavg(), "models": {}}
    print(f"# {env['cpu']} ({env['cpus']} cpus), threads={args.threads}, numpy {env['numpy']} "
          f"(OpenBLAS {env.get('openblas', '?')}), OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}, "
          f"torch {env['torch'] or 'not installed'}")
    if torch is None and "torch" in args.frameworks:
        print("# torch not installed: the torch column is skipped (pip install -e '.[bench]')")
    rows = []
    for kind in args.models:
        x, y = random_data(kind, 8 * args.batch_size, args.seed)
        batches = slices(x, y, args.batch_size)
        runners, res = [], {}
        if "sparkdl" in args.frameworks:
            for j, nthreads in enumerate(args.sparkdl_threads):
                model, why = sparkdl_model(kind, args.seed, args.lr, threads=nthreads)
                if model is None:
                    res["sparkdl_skipped"] = why
                    print(f"# {kind}: sparkdl skipped: {why}")
                    break
                runners.append(SparkdlRunner(model, batches, "sparkdl" if j == 0 else f"sparkdl_t{nthreads}"))
        if "torch" in args.frameworks and torch is not None:
            runners.append(TorchRunner(torch_model(kind, args.seed), torch_batches(kind, batches), args.lr))
        if runners:
            steps, segments = interleaved(runners, args.steps, args.warmup, args.repeats, args.batch_size,
                                          args.pause, args.segment_seconds)
            res["steps"] = steps
            split = {r.name for r in runners if isinstance(r, SparkdlRunner) and r.model.parts() > 1}
            res["sparkdl_parts"] = {r.name: r.model.parts() for r in runners if isinstance(r, SparkdlRunner)}
            res.update(summarize(segments, args.threads, split))
            if kind == "mlp":
                res["ceiling"] = mlp_ceiling(res)
            if runners[0].name == "sparkdl" and not args.no_fit:
                xf, yf = random_data(kind, 40 * args.batch_size, args.seed + 1)
                rate, util = fit_rate(runners[0].model, xf, yf, args.batch_size)
                res["sparkdl_fit"] = {"samples_per_s": round(rate), "cpu_util": round(util, 2)}
        else:
            res["skipped"] = "nothing to run"
        result["models"][kind] = res
        rows.append((kind, res))
    print_table(rows, args)
    result["loadavg_end"] = loadavg()

    mnist_dir = args.mnist_dir if args.mnist_dir is not None else datasets.default_mnist_dir()
    if mnist_dir and mnist_dir.lower() != "none":
        try:
            acc = mnist_accuracy(args, mnist_dir)
        except (FileNotFoundError, ValueError) as e:
            print(f"# MNIST accuracy skipped: {e}")
            result["mnist"] = {"skipped": str(e)}
        else:
            result["mnist"] = {"dir": mnist_dir, "epochs": args.mnist_epochs, "lr": args.mnist_lr,
                               "momentum": args.mnist_momentum, "batch_size": args.batch_size, **acc}
            for name, r in acc.items():
                print(f"MNIST MLP, {args.mnist_epochs} epochs SGD(lr={args.mnist_lr}, momentum="
                      f"{args.mnist_momentum}) batch {args.batch_size}: {name} test accuracy "
                      f"{r['test_accuracy']:.4f} (training {r['fit_seconds']} s, {r['samples_per_s']:,} samples/s)")
    else:
        print("# MNIST accuracy skipped: no MNIST directory (--mnist-dir or $SPARKDL_MNIST_DIR)")
    print("BENCH_JSON " + json.dumps(result, separators=(",", ":")))
    if limiter is not None:
        limiter.restore_original_limits()
    return result


if __name__ == "__main__":
    main(ARGS)
