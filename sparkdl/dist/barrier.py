"""mode="barrier": every worker stays resident for the whole fit and the workers average among themselves;
the driver only follows. Spark-free: sparkdl.spark.barrier launches ``worker_main`` in one barrier stage,
tests launch it in plain processes.

Placement. The workers find each other through one rendezvous (``ctx.all_gather``: Spark's
BarrierTaskContext.allGather): each says which host it is on (hostname and /dev/shm) and where it listens.
The workers of one host form a group that shares one region of memory (sparkdl.dist.host), its leader being
the one with the lowest id; the leaders of all hosts all-reduce over TCP, fully connected (sparkdl.dist.mesh). With
``shared_memory=False`` (or on a GPU, or where the host cannot share memory) every worker is a group of its own.

A round. Every worker fits ``averaging_frequency`` minibatches in place in its flat block (params, layer
state, optimizer state), then the block is averaged, weighted by the examples each worker fitted:
- within a group: each worker sums 1/L of the elements over the group's blocks (weights n_i / N);
- between groups: the leaders all-reduce those partial sums (2 (K - 1) / K of the block per leader);
- within a group again: every worker copies the result into its block.
Each worker's tally row (examples, loss and metric sums, timings) is added up on the same way, so worker 0
sends the driver one row per round: the driver's bytes per round depend neither on the model nor on the
number of workers.

The driver needs the model only at some rounds (epoch ends, callbacks that read it: ``FitRun.needs_model``),
listed in advance; there every leader sends it its summed range (the model once in all), every worker its
timing records, and the driver answers with a verdict (go on, or stop: then the model is that round's
average). Workers wait for the verdict only one round later, so the driver's epoch-end work (validation,
callbacks) overlaps the next round.

Faults. A lost worker fails its barrier task (its peers fail fast, see sparkdl.dist.mesh); Spark retries the
whole stage and the new workers start from the model the driver holds (the last round it fetched), so a
retried fit ends with the same weights as one that was never interrupted.
"""
import bisect
import collections
import hashlib
import json
import logging
import math
import os
import queue
import secrets
import sys
import threading
import time

import numpy as np

from . import schedule, shm, wire
from .averaging import Contribution, Tally
from .control import Control, ControlServer, Stopped, WorkerLost
from .host import HostGroup
from .master import Master, register
from .mesh import Mesh, bounds
from .spill import is_spilled

log = logging.getLogger("sparkdl")

AHEAD_S = 0.25   # how long the driver's epoch-end work may take before the workers wait for its verdict
FIRST_LAG = 16   # rounds the workers fit past the first fetched round before its verdict (no round times yet)
REPORT_S = 0.05   # worker 0 sends its round tallies in batches, at most this far apart (and at once where needed)
# a worker's timing record for one round, as sent to the driver
FIELDS = ("round", "epoch", "start", "read_s", "load_s", "fit_s", "wait_s", "mesh_s", "ship_s", "n", "steps",
          "sent", "received", "memory")


def block_parts(model, average_optimizer_state):
    """[(part, size)] of the flat block a worker trains in and the workers average: params, layer state (when the
    model has any), optimizer state (when it is averaged)."""
    parts = [("params", int(model.params.size))]
    if model.state.size:
        parts.append(("state", int(model.state.size)))
    if average_optimizer_state:
        parts.append(("opt", int(model.optimizer.state_buffer.size)))
    return parts


def split(block, parts):
    views, offset = {}, 0
    for name, size in parts:
        views[name] = block[offset:offset + size]
        offset += size
    return views


class Topology:
    """Who averages with whom, as every worker computes it from the rendezvous: ``infos[w]`` is worker w's
    {"host", "address", "port"}; ``offers[w]`` what a group leader offered (None: no shared memory there)."""

    def __init__(self, infos, share_memory, offers=None):
        by_host = {}
        for w, info in enumerate(infos):
            by_host.setdefault(info["host"] if share_memory else f"worker-{w}", []).append(w)
        groups = []
        for members in by_host.values():
            members = sorted(members)
            if offers is not None and len(members) > 1 and not offers[members[0]]:
                groups.extend([m] for m in members)  # that host could not share memory
            else:
                groups.append(members)
        self.groups = sorted(groups)
        self.leaders = [g[0] for g in self.groups]
        self.group_of = {w: g for g in self.groups for w in g}
        self.leader_rank = {w: k for k, w in enumerate(self.leaders)}
        self.infos = infos

    def name(self, w):
        return f"worker {w} ({self.infos[w]['address']})"


def attempt_token(infos):
    """The same bytes for every worker of one attempt of the stage, other bytes for any other attempt."""
    return hashlib.sha256(json.dumps(sorted((i["worker"], i["attempt"]) for i in infos)).encode()).digest()


class _Sync:
    """One worker's part in averaging its block: group (shared memory) and mesh (TCP) as the topology says."""

    def __init__(self, rank, topo, group, mesh, block, tally, timeout, control):
        self.rank, self.topo, self.group, self.mesh, self.block = rank, topo, group, mesh, block
        self.tally, self.timeout, self.control = tally, timeout, control
        self.local = topo.group_of[rank]
        self.alone = len(topo.leaders) == 1   # one group: no mesh
        self.j = self.local.index(rank)
        self.leader = self.j == 0
        self.buf = group.partial if group is not None else block   # what the leaders' mesh sums

    def distribute(self, round_, chunk, lo, hi):
        """Start of the fit: the leaders hold their range of the driver's model; afterwards every block holds
        all of it."""
        if self.leader:
            self.buf[lo:hi] = chunk
            if self.mesh is not None:
                self.mesh.allgather(self.buf)
                self._prepare()
            if self.group is not None:
                self.group.mesh_done(round_ - 1)
        if self.group is not None:
            self.group.wait_mesh(round_ - 1, self.timeout, self.control)
            np.copyto(self.block, self.group.partial)

    def _prepare(self):
        """The other hosts' parts of the next round start coming in while this worker fits it."""
        self.mesh.prepare(self.buf.size, self.buf.dtype, self.tally.width)

    def __call__(self, round_, weights, row, report=None):
        """Average the blocks of ``round_`` (``weights[w]`` = worker w's examples / all examples); returns the
        mesh's share of the time. ``report(total_row)`` gets the tally row summed over all workers (called at
        worker 0 only, where it would otherwise wait, if there is such a moment)."""
        group, mesh, mesh_s = self.group, self.mesh, 0.0
        report = report if self.rank == 0 else None
        if group is None and self.alone:
            report and report(row)
            return 0.0
        if group is None:
            w = weights[self.rank]
            if w:
                self.block *= self.block.dtype.type(w)
            else:
                self.block[...] = 0
            t = time.perf_counter()
            rows = mesh.allreduce(self.block, row)
            self._prepare()
            mesh_s = time.perf_counter() - t
            report and report(self.tally.combine(rows))
            return mesh_s
        group.publish(self.j, round_, row)
        group.wait_published(round_, self.timeout, self.control)
        host_row = self.tally.combine(group.rows) if self.leader else None
        local_weights = [weights[w] for w in self.local]
        if self.alone:
            group.average_shares(self.j, round_, local_weights, self.timeout, self.control,
                                 (lambda: report(host_row)) if report else None)
            return 0.0
        group.partial_shares(self.j, round_, local_weights, self.timeout, self.control)
        if self.leader:
            t = time.perf_counter()
            rows = mesh.allreduce(group.partial, host_row)
            self._prepare()
            mesh_s = time.perf_counter() - t
            group.mesh_done(round_)
            report and report(self.tally.combine(rows))
        else:
            group.wait_mesh(round_, self.timeout, self.control)
        np.copyto(self.block, group.partial)
        return mesh_s


def worker_main(ctx, spec, x, y, read_s=0.0, started=None):
    """One barrier worker, from joining to the end of the fit; returns the rows it held.

    ``ctx``: ``rank`` (worker id), ``attempt`` (unique per task attempt), ``address`` (where peers reach this
    worker), ``host`` (which memory it can share: ``host_key()``), ``all_gather(str) -> [str]`` (the
    rendezvous); ``spec``: the plain values BarrierDriver.worker_spec made; (x, y): the worker's partition, loaded
    in ``read_s`` seconds from ``started`` (when the task began: the driver's breakdown of the fit's start-up)."""
    from .worker import worker_model
    loaded = time.time()
    started = loaded - read_s if started is None else started
    model = worker_model(spec["model"], spec["compile"], spec["backend"])
    opt, aos, timeout = model.optimizer, spec["average_optimizer_state"], spec["timeout"]
    device = model.xp is not np
    parts = block_parts(model, aos)
    size = sum(n for _, n in parts)
    tally = Tally(model)
    n_rows = len(x)
    if not is_spilled(x):
        x, y = model.xp.asarray(x), model.xp.asarray(y)   # resident for the whole fit (on the GPU with cupy)
    own = (model.params, model.state, opt.state_buffer)   # the model is cached in this process: restored below
    built = time.time()
    listener = group = control = mesh = None
    try:
        listener = _listen(ctx.address, spec["ports"])
        me = {"worker": ctx.rank, "attempt": ctx.attempt, "host": ctx.host, "address": ctx.address,
              "port": listener.getsockname()[1]}
        infos = [json.loads(m) for m in ctx.all_gather(json.dumps(me))]
        share = spec["shared_memory"] and not device and shm.ORDERED_STORES
        tentative = Topology(infos, share)
        local = tentative.group_of[ctx.rank]
        if len(local) > 1 and local[0] == ctx.rank:
            group = HostGroup.create(len(local), size, model.dtype, tally.width)
        if any(len(g) > 1 for g in tentative.groups):   # some host shares memory: its leader's offer goes round
            offers = [json.loads(m) if m else None
                      for m in ctx.all_gather(json.dumps(group.offer()) if group is not None else "")]
        else:   # every worker alone on its host (or no shared memory): nothing to offer, and a rendezvous less
            offers = [None] * len(infos)   # (Spark's allGather takes a second)
        topo = Topology(infos, share, offers)
        local = topo.group_of[ctx.rank]
        if len(local) > 1 and group is None:
            group = HostGroup.attach(offers[local[0]])
            if group is None:
                path = str((offers[local[0]].get("region") or {}).get("path"))
                why = "it is gone: that worker ended before this one mapped it" if not os.path.exists(path) else \
                    "it is not the region offered (size, layout or token)"
                raise RuntimeError(f"worker {ctx.rank} could not map the shared memory of {topo.name(local[0])} on "
                                   f"its host, {path}: {why}; use ParameterAveraging(shared_memory=False) if this "
                                   f"host cannot share memory between Spark's Python workers")
        if group is not None:   # before the hello: every worker of the host knows the others' threads from round 1
            group.bind(local.index(ctx.rank), spec.get("bind_cpus", True))
        secret = bytes.fromhex(spec["secret"])
        control = Control.connect(spec["driver"][0], spec["driver"][1], secret, {
            "type": "hello", "worker": ctx.rank, "attempt": ctx.attempt, "rows": n_rows, "host": ctx.host,
            "address": ctx.address, "port": me["port"], "pid": os.getpid(), "leader_rank": topo.leader_rank.get(ctx.rank),
            "leaders": len(topo.leaders), "group": local, "started": started, "loaded": loaded,
            "built": built}, timeout=min(timeout, 60.0))
        start, arrays = control.expect(("start", "done"), timeout=timeout)
        if group is not None:
            # every worker of the host mapped the region before saying hello, and the driver starts no one before
            # all have: the name can go now, so that a killed worker leaves nothing behind in /dev/shm
            group.region.unlink()
        if start["type"] == "done":   # a retried task after the driver had every round: nothing left to do
            return n_rows
        if ctx.rank in topo.leader_rank and len(topo.leaders) > 1:
            mesh = Mesh.connect(topo.leader_rank[ctx.rank], [(infos[w]["address"], infos[w]["port"])
                                                           for w in topo.leaders],
                                listener, secret, attempt_token(infos), [topo.name(w) for w in topo.leaders],
                                timeout, control)
        listener.close()
        listener = None
        block = group.slots[local.index(ctx.rank)] if group is not None else np.empty(size, model.dtype)
        views = split(block, parts)
        sync = _Sync(ctx.rank, topo, group, mesh, block, tally, timeout, control)
        sync.distribute(start["round"], arrays.get("chunk"), start.get("lo", 0), start.get("hi", 0))
        if device:
            _to_model(model, views)
        else:
            model.use_buffers(views["params"], views.get("state"))
            if aos:
                opt.use_buffer(views["opt"])
        _train(ctx.rank, model, x, y, spec, start, sync, control, views, read_s, device)
    except BaseException as e:
        if group is not None:
            group.abort()   # the other workers of this host stop waiting for this one
        if isinstance(e, Stopped) or (control is not None and isinstance(e, Exception) and control.stopped(1.0)):
            return n_rows   # the fit was interrupted: the task ends quietly, as the fit does
        if control is not None:
            try:
                control.send({"type": "error", "reason": f"{type(e).__name__}: {e}"})
            except OSError:
                pass
        raise
    finally:
        model.use_buffers(own[0], own[1])
        if aos:
            opt.use_buffer(own[2])
        for resource in (mesh, control, listener):
            if resource is not None:
                resource.close()
        if group is not None:
            block = views = sync = None
            group.close()
    return n_rows


def _listen(address, ports):
    try:
        return wire.listen(address, ports)
    except OSError:   # the address peers reach this worker on is not one of its interfaces (NAT, containers)
        return wire.listen("0.0.0.0", ports)


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
                        copy=False)
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


def _to_block(model, views):
    from ..backend import to_numpy
    views["params"][...] = to_numpy(model.params)
    if "state" in views:
        views["state"][...] = to_numpy(model.state)
    if "opt" in views:
        views["opt"][...] = to_numpy(model.optimizer.state_buffer)


def _to_model(model, views):
    model.set_flat_params(views["params"])
    if "state" in views:
        model.set_flat_state(views["state"])
    if "opt" in views:
        model.optimizer.state_buffer[...] = model.xp.asarray(views["opt"])


class BarrierDriver:
    """The driver's side: a control server, the fit's secret, and the loop that follows the workers' rounds."""

    def __init__(self, run, n_workers, host="127.0.0.1", ports=None, timeout=600.0, shared_memory=True,
                 collect_stats=True, advertise=None, memory_budget=None, bind_cpus=True):
        self.run, self.n_workers, self.timeout, self.memory_budget = run, n_workers, timeout, memory_budget
        self.shared_memory, self.collect_stats, self.bind_cpus = shared_memory, collect_stats, bind_cpus
        self.secret = secrets.token_bytes(32)
        self.server = ControlServer(self.secret, host, timeout, ports=ports, advertise=advertise)
        self.parts = block_parts(run.model, run.master.average_optimizer_state)
        self.size = sum(n for _, n in self.parts)
        self.tally = Tally(run.model)
        self.attempt, self.sizes, self.fetch, self.hellos = -1, None, set(), {}
        self.lost, self.groups = [], []
        self.stage_done = False   # set when the launcher's stage has ended: no retried workers will come
        self.tallies = {}         # round -> (tally row, start, wall time) of worker 0's batches not used yet
        self.walls = collections.deque(maxlen=50)   # the last rounds' wall times

    def worker_spec(self, ports=None):
        run, master = self.run, self.run.master
        return {"driver": [self.server.host, self.server.port], "secret": self.secret.hex(),
                "model": run.model_json, "compile": run.compile_json, "backend": master.backend,
                "seed": master.seed, "shuffle": master.shuffle, "batch_size_per_worker": master.batch_size_per_worker,
                "averaging_frequency": master.averaging_frequency,
                "average_optimizer_state": master.average_optimizer_state, "timeout": self.timeout,
                "shared_memory": self.shared_memory, "ports": ports, "collect_stats": self.collect_stats,
                "memory_budget": self.memory_budget, "bind_cpus": self.bind_cpus}

    def serve(self):
        run = self.run
        self._join(0, run.resume_round)
        if sys.platform.startswith("linux"):
            # off the workers' critical path, this thread should not preempt a worker it wakes with a message: on
            # 2 cores a worker's send took ~0.6 ms at the same niceness, ~0.16 ms at nice 10 (this thread only)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        pending = None
        for epoch, r, g in run.rounds():
            if pending is not None:
                self.server.send_all({"type": "verdict", "round": pending, "stop": False, "lag": self._lag()})
                pending = None
            before = dict(self.server.bytes)
            try:
                total, arrays, timing = self._round(r, g)
            except WorkerLost as lost:
                if run.stop_signal is not None:   # the workers were stopped: the fit ends here
                    raise run.interrupted() from None
                # Spark retries the barrier stage: the new workers start from the model the driver holds
                if self.stage_done:
                    raise
                self.lost.append(str(lost))
                log.warning("sparkdl: %s in round %d; the stage is retried from round %d", lost, g + 1,
                            run.synced + 2)
                self.server.abort("a worker was lost; the stage is retried")
                run.rollback(run.synced)
                self._join(self.attempt + 1, run.synced + 1)
                pending = None   # the new workers start after the last fetched round: no verdict is owed
                run.start_clock()
                continue
            t0 = time.time()
            averaged = run.average(total, epoch, r, g, arrays, skip=arrays is None)
            used = {f"driver_{k}_bytes": v - before[k] for k, v in self.server.bytes.items()}
            run.commit(total, averaged, epoch, r, g, t0, extra={**timing, **used})
            self.walls.append(timing["wall_s"])
            if g in self.fetch and g + 1 < self.total_rounds:
                pending = g
        if pending is not None and run.stopped:
            try:   # the workers have gone on fitting the rounds after pending: those are not used
                self.server.send_all({"type": "verdict", "round": pending, "stop": True})
            except WorkerLost:
                return
            self.server.wait_for_byes(self.timeout)

    def _lag(self):
        """How many rounds the workers may fit past a fetched round before they wait for its verdict: enough to
        cover AHEAD_S of the driver's epoch-end work, judged from the recent rounds' times."""
        mean = sum(self.walls) / max(len(self.walls), 1)
        return max(1, math.ceil(AHEAD_S / max(mean, 1e-4)))

    def dismiss_late_workers(self):
        """After the last round: workers of a retried attempt (one lost after sending everything) are told that
        the fit is done, so that their stage ends, until the launcher says it has."""
        self.server.drop_workers()
        while not self.stage_done and not self.server.closed:
            try:
                _, conn = self.server.joined.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                wire.send(conn, {"type": "done"})
            except OSError:
                pass
            conn.close()

    def _join(self, min_attempt, round_):
        """Wait for a full set of workers (of a newer attempt after a loss) and send them where the fit stands."""
        run = self.run
        while True:
            hellos = self.server.wait_for_workers(self.n_workers, min_attempt)
            self.attempt = max(h.get("attempt", 0) for h in hellos.values())
            sizes = [hellos[w]["rows"] for w in range(self.n_workers)]
            if self.sizes is None:
                keys = ("worker", "host", "address", "pid", "started", "loaded", "built")
                run.start(sizes, {"workers": [{k: hellos[w].get(k) for k in keys} for w in range(self.n_workers)]})
                self.sizes = sizes
                self.total_rounds = run.epochs * run.rounds_per_epoch
                self.fetch = {g for g in range(self.total_rounds) if run.needs_model(g % run.rounds_per_epoch, g)}
            elif sizes != self.sizes:
                raise RuntimeError(f"the retried workers hold {sizes} rows, not {self.sizes}: the partitioning changed")
            self.hellos, self.tallies = hellos, {}
            self.groups = sorted({tuple(h["group"]) for h in hellos.values()})
            p = run.payload(copy=False)
            flat = np.concatenate([np.ravel(p[name]) for name, _ in self.parts]).astype(run.model.dtype, copy=False)
            header = {"type": "start", "round": round_, "rounds_per_epoch": run.rounds_per_epoch, "lag": FIRST_LAG,
                      "total_rounds": self.total_rounds, "iterations": p["iterations"], "sizes": sizes,
                      "fetch": sorted(g for g in self.fetch if g >= round_)}
            try:
                for w, h in sorted(hellos.items()):
                    lo, hi = self.owned(h)
                    self.server.send(w, {**header, "lo": lo, "hi": hi}, {"chunk": flat[lo:hi]} if hi > lo else None)
                return
            except WorkerLost as lost:
                self.lost.append(str(lost))
                self.server.abort("a worker was lost; the stage is retried")
                min_attempt = self.attempt + 1

    def owned(self, hello):
        """The model range a leader holds summed (and is sent at the start, and sends back); none for others."""
        k, size = hello.get("leader_rank"), hello.get("leaders", 1)
        if k is None:
            return 0, 0
        return bounds(k, size, self.size)

    def _tally(self, g):
        """Round g's tally row and its (start, wall time), from worker 0's batches."""
        while g not in self.tallies:
            header, arrays = self.server.recv(0, "rounds")
            first, last = header.get("first"), header.get("last")
            rows, ends = np.asarray(arrays["tally"], np.float64), np.asarray(arrays["ends"], np.float64)
            if not (isinstance(first, int) and isinstance(last, int) and len(rows) == last - first + 1 == len(ends) - 1):
                raise WorkerLost(0, f"sent a malformed batch of rounds {first}-{last}")
            for i, h in enumerate(range(first, last + 1)):
                self.tallies[h] = (rows[i], float(ends[i]), float(ends[i + 1] - ends[i]))
        return self.tallies.pop(g)

    def _round(self, r, g):
        run, master = self.run, self.run.master
        row, start, wall = self._tally(g)
        n, loss_sum, steps, partials, timing = self.tally.read(row)
        timing.update(start=start, wall_s=wall)
        expected = sum(schedule.round_examples(s, master.batch_size_per_worker, master.averaging_frequency, r)
                       for s in self.sizes)
        if n != expected or timing["workers"] != self.n_workers:
            raise RuntimeError(f"round {g + 1}: {timing['workers']} workers fitted {n} examples; the schedule says "
                               f"{self.n_workers} workers and {expected} examples")
        total = Contribution(n, loss_sum=loss_sum, partials=partials, steps=steps)
        model = None
        if g in self.fetch:
            flat = np.empty(self.size, run.model.dtype)
            for w, h in sorted(self.hellos.items()):
                lo, hi = self.owned(h)
                if hi > lo:
                    header, got = self.server.recv(w, "model", g)
                    if (header.get("lo"), header.get("hi")) != (lo, hi):
                        raise WorkerLost(w, f"sent elements {header.get('lo')}-{header.get('hi')}, not {lo}-{hi}")
                    flat[lo:hi] = got["chunk"]
            model = split(flat, self.parts)
            if self.collect_stats:
                for w in sorted(self.hellos):
                    header, got = self.server.recv(w, "stats", g)
                    names = header["fields"]
                    for values in got["records"]:
                        rec = dict(zip(names, values.tolist()))
                        rec["worker"] = w
                        rec["round"], rec["epoch"] = int(rec["round"]), int(rec["epoch"])
                        if rec["round"] == g and isinstance(header.get("grad_norms"), dict):
                            rec["grad_norms"] = header["grad_norms"]
                        total.stats.append(rec)
        return total, model, timing

    def abort(self, reason):
        self.server.abort(reason)

    def stop(self, reason, grace=3.0):
        """Stop the workers quietly (their tasks end as the fit's would) and wait up to ``grace`` seconds for the
        stage to end, before anything cancels it."""
        self.server.abort(reason, kind="stop")
        deadline = time.monotonic() + grace
        while not self.stage_done and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self):
        self.server.close()


@register
class Barrier(Master):
    """One barrier stage per fit; the workers average among themselves (see the module's text)."""
    mode = "barrier"
    order = 1

    def fit(self, options, run, launcher):
        launcher.check_barrier()
        ports = launcher.ports(options.ports)
        driver = BarrierDriver(run, launcher.num_workers, launcher.bind_host, ports, options.server_timeout,
                               options.shared_memory, options.collect_stats, advertise=launcher.driver_host,
                               memory_budget=launcher.memory_budget(options.memory_budget),
                               bind_cpus=options.bind_cpus)
        failure = []
        # on a signal: first the workers end their tasks quietly, then the launcher cancels what is left
        run.stoppers.insert(0, lambda: driver.stop(f"the fit was interrupted ({run.stop_signal})"))

        def serve():
            try:
                driver.serve()
                driver.dismiss_late_workers()
            except BaseException as e:   # surfaced by the caller's thread, unless the stage failed first
                if driver.server.closed:
                    return
                failure.append(e)
                driver.abort(f"{type(e).__name__}: {e}")
                launcher.cancel()

        thread = threading.Thread(target=serve, name="sparkdl-barrier-driver", daemon=True)
        thread.start()
        run.mark("launched")
        try:
            launcher.run_barrier(driver.worker_spec(ports), run)
            driver.stage_done = True
            thread.join()
        except BaseException:
            driver.abort("the barrier stage failed")
            driver.close()
            thread.join(timeout=5)
            if failure:
                raise failure[0] from None
            raise
        finally:
            driver.close()
        if failure:
            raise failure[0]
        run.history.refused_connections = driver.server.refused
        run.history.shared_memory = any(len(g) > 1 for g in driver.groups)
        run.history.placement = {"groups": [list(g) for g in driver.groups],
                                 "hosts": {w: h.get("host") for w, h in sorted(driver.hellos.items())},
                                 "listening": {w: f"{h.get('address')}:{h.get('port')}"
                                               for w, h in sorted(driver.hellos.items())},
                                 "driver": f"{driver.server.host}:{driver.server.port}", "lost": driver.lost}
        return run.finish()
