"""Memory over a long barrier fit: do the driver and the workers stay flat over 1,000+ averaging rounds?

A local[2] Spark barrier fit (2 workers, shared memory) of an MLP 64-32-10 on the bundled 8x8 digits (1,438 training
rows, 719 per worker), batch 16 per worker, averaging every 2 minibatches: 23 rounds an epoch, as many epochs as
make ``--rounds``. Small model and data on purpose: rounds are short, so a minute holds thousands of them and any
per-round leak shows.

Sampled at every epoch end (where barrier mode fetches the model):
- the driver: this process's resident memory (VmRSS from /proc/self/status, from a Callback's on_epoch_end) and,
  for information, the JVM's (Spark's, a child of this process; its heap grows as the JVM likes, no target);
- each worker: its private memory (RssAnon), which the barrier workers record at the rounds the driver fetches
  (``history.stats.workers``, key "memory"); with ``--no-stats`` (``collect_stats=False``: no worker records) the
  driver reads it from /proc/<pid>/status instead, the workers being on this host (up to the last epoch but one).
Per process: the value after warm-up (the first sample at or after ``--warmup`` of the rounds), at the end, the
growth between the two in percent, and the largest sample. Target (issue 13): growth under 5%.

The driver keeps per-round records by design (history.rounds; with stats, history.stats.rounds and one record per
worker and round in history.stats.workers): their size per round is reported, to tell them from a leak.

    python bench/memory.py [--rounds 1000] [--warmup 0.1] [--no-stats]
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one BLAS thread per worker: 2 workers on 2 cores

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sparkdl import datasets, optim  # noqa: E402
from sparkdl.dist import schedule  # noqa: E402
from sparkdl.nn import Dense, Sequential  # noqa: E402
from sparkdl.train import Callback  # noqa: E402

BATCH, FREQ, WORKERS = 16, 2, 2


def status(pid, field):
    """A /proc/<pid>/status field in bytes (VmRSS, RssAnon); None where the process or field is missing."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def jvm_pid():
    """Spark's JVM: the java process among this process's children (spark-submit execs into it)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if int(rest[1]) == os.getpid() and comm == "java":
            return int(name)
    return None


class Sampler(Callback):
    """The driver's (and the JVM's) memory at every epoch end; the workers' too, from /proc, when asked."""

    def __init__(self, rounds_per_epoch, read_workers):
        self.rounds_per_epoch, self.read_workers = rounds_per_epoch, read_workers
        self.samples = []   # {"round", "driver", "jvm", "workers": {w: RssAnon}}

    def on_train_begin(self, logs=None):
        self.jvm = jvm_pid()
        self.pids = {w["worker"]: w["pid"] for w in (logs or {}).get("workers", [])}
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        s = {"round": (epoch + 1) * self.rounds_per_epoch - 1, "t": time.perf_counter() - self.t0,
             "driver": status("self", "VmRSS"), "jvm": status(self.jvm, "VmRSS") if self.jvm else None}
        if self.read_workers:
            s["workers"] = {w: status(pid, "RssAnon") for w, pid in self.pids.items()}
        self.samples.append(s)


def mlp():
    m = Sequential([Dense(32, activation="relu"), Dense(10, activation="softmax")], input_shape=(64,), seed=0)
    return m.compile(optim.Adam(1e-3), "sparse_categorical_crossentropy", ["accuracy"])


def growth(series, warmup_round):
    """series: [(round, bytes)] in round order -> after warm-up, end, growth (% and bytes per round), max (MB)."""
    series = [(g, v) for g, v in series if v]
    g0, after = next((g, v) for g, v in series if g >= warmup_round)
    g1, end = series[-1]
    return {"warmup_mb": after / 2 ** 20, "end_mb": end / 2 ** 20, "growth_pct": 100 * (end - after) / after,
            "growth_bytes_per_round": (end - after) / max(g1 - g0, 1), "max_mb": max(v for _, v in series) / 2 ** 20,
            "samples": len(series)}


def deep_size(records):
    """Bytes a list of flat dicts holds: the list's slots, each dict, and the values it does not share (keys are
    interned strings, small ints are cached)."""
    total = sys.getsizeof(records)
    for rec in records:
        total += sys.getsizeof(rec)
        total += sum(sys.getsizeof(v) for v in rec.values() if not (type(v) is int and -5 <= v <= 256))
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=1000, help="at least this many averaging rounds (whole epochs)")
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of the rounds counted as warm-up")
    p.add_argument("--no-stats", action="store_true", help="collect_stats=False; the workers read from /proc")
    a = p.parse_args(argv)
    from sparkdl.spark import ParameterAveraging, SparkTrainer, local_session
    from sparkdl.spark.data import numpy_to_dataframe
    x, y = datasets.load_digits("train")
    # what Spark's two partitions will hold, give or take a row: checked against the stats below
    per_epoch = schedule.rounds_per_epoch([len(x) // 2, len(x) - len(x) // 2], BATCH, FREQ)
    epochs = math.ceil(a.rounds / per_epoch)
    spark = local_session("local[2]", app_name="sparkdl-bench-memory")
    try:
        df = numpy_to_dataframe(spark, x, y, tempfile.mkdtemp(prefix="sparkdl-bench-")).cache()
        df.count()
        sampler = Sampler(per_epoch, a.no_stats)
        master = ParameterAveraging(mode="barrier", num_workers=WORKERS, batch_size_per_worker=BATCH,
                                    averaging_frequency=FREQ, seed=0, collect_stats=not a.no_stats)
        t0 = time.perf_counter()
        h = SparkTrainer(mlp(), master).fit(df, epochs=epochs, callbacks=[sampler], verbose=0)
        wall = time.perf_counter() - t0
    finally:
        spark.stop()
    rounds = len(h.rounds)
    if rounds < a.rounds or (h.stats is not None and len(h.stats.rounds) < a.rounds):
        raise RuntimeError(f"the fit ran {rounds} rounds, fewer than --rounds {a.rounds}")
    warm = a.warmup * rounds
    out = {"rounds": rounds, "epochs": epochs, "rounds_per_epoch": per_epoch, "fit_wall_s": wall,
           "fit_ms_per_round": 1000 * wall / rounds, "collect_stats": not a.no_stats, "warmup_round": warm,
           "driver": growth([(s["round"], s["driver"]) for s in sampler.samples], warm),
           "jvm": growth([(s["round"], s["jvm"]) for s in sampler.samples], warm) if sampler.jvm else None}
    if a.no_stats:
        # not the last epoch end: the workers have left their last round by then and are ending their tasks
        # (RssAnon +2 MB at worker 0 or 1 while Spark takes their results), which is no per-round growth
        workers = {w: [(s["round"], s["workers"][w]) for s in sampler.samples[:-1]] for w in sampler.pids}
    else:
        workers = {}
        for rec in h.stats.workers:
            if rec.get("memory"):
                workers.setdefault(rec["worker"], []).append((rec["round"], rec["memory"]))
    out["workers"] = {w: growth(sorted(v), warm) for w, v in sorted(workers.items())}
    kept = deep_size(h.rounds) + (deep_size(h.stats.rounds) + deep_size(h.stats.workers) if h.stats else 0)
    out["kept_records_bytes_per_round"] = kept / rounds
    # what the kept records alone would add between warm-up and the end, against the driver's growth
    out["kept_records_growth_mb"] = kept / rounds * (rounds - warm) / 2 ** 20
    worst = max([out["driver"]["growth_pct"]] + [w["growth_pct"] for w in out["workers"].values()])
    out["target_met"] = worst < 5.0
    d = out["driver"]
    print(f"{rounds} rounds ({epochs} epochs x {per_epoch}) in {wall:.1f} s; driver RSS "
          f"{d['warmup_mb']:.1f} -> {d['end_mb']:.1f} MB ({d['growth_pct']:+.1f}%, "
          f"{d['growth_bytes_per_round']:.0f} B/round, max {d['max_mb']:.1f}; "
          f"kept records {out['kept_records_bytes_per_round']:.0f} B/round = {out['kept_records_growth_mb']:.2f} MB)"
          + "".join(f"; worker {w} RssAnon {r['warmup_mb']:.1f} -> {r['end_mb']:.1f} MB ({r['growth_pct']:+.1f}%)"
                    for w, r in out["workers"].items())
          + (f"; JVM RSS {out['jvm']['warmup_mb']:.0f} -> {out['jvm']['end_mb']:.0f} MB" if out["jvm"] else "")
          + f"; growth under 5%: {'met' if out['target_met'] else 'NOT met'}", flush=True)
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()
