"""A barrier worker's round loop, once it has joined: every round it fits its minibatches, averages its block
with the others (sparkdl.dist.sync), keeps its timing record; worker 0 reports the summed tallies to the driver in
batches; where the driver fetches the model the leaders send their summed ranges, and every worker reads the
driver's verdicts (go on, or stop) a few rounds later."""
import bisect
import time

import numpy as np

from . import schedule
from .block import _to_block, _to_model
from .spill import is_spilled

REPORT_S = 0.05   # worker 0 sends its round tallies in batches, at most this far apart (and at once where needed)
# a worker's timing record for one round, as sent to the driver
FIELDS = ("round", "epoch", "start", "read_s", "load_s", "fit_s", "wait_s", "mesh_s", "ship_s", "n", "steps",
          "sent", "received", "memory")


def _train(rank, model, x, y, spec, start, sync, control, views, read_s, device):
    batch, freq, timeout = spec["batch_size_per_worker"], spec["averaging_frequency"], spec["timeout"]
    from .worker import fit_round
    g, per_epoch, total = start["round"], start["rounds_per_epoch"], start["total_rounds"]
    iterations, sizes, fetch = start["iterations"], start["sizes"], sorted(start["fetch"])
    verdicts = _Verdicts(control, fetch, total, start.get("lag", 1), timeout)
    n_rows, spilled = len(x), is_spilled(x)
    order_epoch, records, stop = None, [], False
    reports = _Reports(control, time.time())
    sent0 = received0 = 0
    while g < total:
        epoch, r = divmod(g, per_epoch)
        if epoch != order_epoch:   # one shuffle per epoch (0.5 ms for 30k rows: too much to redo every round)
            if spilled:   # minibatch blocks of the memory-mapped partition
                order = schedule.block_order(n_rows, batch, spec["seed"], epoch, rank, spec["shuffle"])
            else:
                order = schedule.epoch_order(n_rows, spec["seed"], epoch, rank, spec["shuffle"])
            order_epoch = epoch
        record = {"round": g, "epoch": epoch, "start": time.time(), "read_s": read_s}
        read_s = 0.0
        control.check()
        batches = schedule.round_blocks(order, freq, r) if spilled else schedule.round_batches(order, batch, freq, r)
        res = fit_round(model, x, y, batches, None, None, None, iterations, spec["average_optimizer_state"], record,
                        copy=False, rng_key=schedule.round_key(spec["seed"], rank, g))
        ns = [schedule.round_examples(n, batch, freq, r) for n in sizes]
        total_n = sum(ns)
        weights = [n / total_n for n in ns]
        if device:
            _to_block(model, views)
        t = time.perf_counter()
        mesh_s = sync(g, weights, sync.tally.row(res.n, res.loss_sum, res.steps, record["fit_s"], res.partials),
                      reports.add)
        record["wait_s"], record["mesh_s"] = time.perf_counter() - t - mesh_s, mesh_s
        if device:
            _to_model(model, views)
        iterations += max(-(-n // batch) for n in ns)
        if rank == 0:
            t = time.perf_counter()
            reports.end(g, time.time(), verdicts.fetched(g) or g + 1 == total)
            record["ship_s"] = time.perf_counter() - t
        mesh = sync.mesh
        sent, received = (mesh.sent, mesh.received) if mesh is not None else (0, 0)
        record.update(sent=sent - sent0 + control.sent, received=received - received0)
        sent0, received0, control.sent = sent, received, 0
        if spec["collect_stats"]:
            if verdicts.fetched(g):   # reading /proc costs ~30 us: once per fetch is enough
                record["memory"] = _private_memory()
            records.append([record.get(f, 0.0) for f in FIELDS])
        if stop := verdicts.due(g):
            break
        if verdicts.fetched(g):
            if sync.leader:   # the leaders' summed ranges make up the model once
                lo, hi = sync.mesh.owned(sync.block.size) if sync.mesh is not None else (0, sync.block.size)
                control.send({"type": "model", "round": g, "lo": lo, "hi": hi}, {"chunk": sync.block[lo:hi]})
            if spec["collect_stats"]:
                control.send({"type": "stats", "round": g, "fields": list(FIELDS),
                              "grad_norms": model.layer_norms(model.grads)},
                             {"records": np.asarray(records, np.float64).reshape(-1, len(FIELDS))})
                records = []
        g += 1
    control.send({"type": "bye", "round": min(g, total - 1), "stopped": bool(stop)})


def _private_memory():
    """This process's anonymous resident memory in bytes (Linux): what it holds that the kernel cannot drop, unlike
    the pages of a memory-mapped partition; 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _Reports:
    """Worker 0's round tallies for the driver (the sums over all workers, and when each round ended here), sent
    in batches: the driver need not wake up every round, only where it needs the model, and at most REPORT_S
    apart. The round's wall time is measured here, so batching does not bend it."""

    def __init__(self, control, start):
        self.control, self.rows, self.ends, self.first, self.sent = control, [], [start], None, time.monotonic()

    def add(self, row):
        self.rows.append(row)

    def end(self, g, when, flush):
        self.first = g if self.first is None else self.first
        self.ends.append(when)
        if flush or time.monotonic() - self.sent >= REPORT_S:
            self.control.send({"type": "rounds", "first": self.first, "last": g},
                              {"tally": np.asarray(self.rows, np.float64), "ends": np.asarray(self.ends, np.float64)})
            self.rows, self.ends, self.first, self.sent = [], [when], None, time.monotonic()


class _Verdicts:
    """The driver's verdicts on the rounds it fetches (go on, or stop there: a callback stopped the fit). A worker
    goes on fitting while the driver does its epoch-end work and reads the verdict on round p only at the end of
    round p + lag, or of the next fetched round if that comes first, whatever it already holds: every worker reads
    it at the same round, so all stop together. The driver sets the lag in each verdict (for the next one) from
    its round times; the rounds fitted past a stop are not used."""

    def __init__(self, control, fetch, total, lag, timeout):
        self.control, self.fetch, self.total, self.lag, self.timeout = control, fetch, total, int(lag), timeout
        self.fetch_set, self.pending = set(fetch), []   # [(fetched round, round its verdict is read at)]

    def fetched(self, g):
        """Whether the driver fetches round g."""
        return g in self.fetch_set

    def due(self, g):
        """At the end of round g: whether a verdict read now says to stop (else round g's verdict is owed, where
        the driver fetches it and it is not the last)."""
        while self.pending and self.pending[0][1] <= g:
            verdict, _ = self.control.expect("verdict", self.pending.pop(0)[0], self.timeout)
            if verdict["stop"]:
                return True
            lag = verdict.get("lag", self.lag)
            self.lag = lag if type(lag) is int and lag >= 1 else 1
        if g in self.fetch_set and g + 1 < self.total:
            later = self.fetch[bisect.bisect_right(self.fetch, g):]
            self.pending.append((g, min(g + self.lag, later[0] if later else self.total - 1)))
        return False
