"""The driver's side of barrier mode: the control server the workers say hello to, the fit's secret, where the fit
starts (and starts again after a lost worker, from the last round the driver fetched), and the loop that follows
the workers' rounds: worker 0's tallies, the model and the workers' timing records where the driver needs them, and
the verdicts it sends back."""
import collections
import logging
import math
import os
import queue
import secrets
import sys
import threading
import time

import numpy as np

from . import schedule, wire
from .averaging import Contribution, Tally
from .block import block_parts, split
from .control import ControlServer, WorkerLost
from .mesh import bounds
from .topology import Topology

log = logging.getLogger("sparkdl")

AHEAD_S = 0.25   # how long the driver's epoch-end work may take before the workers wait for its verdict
FIRST_LAG = 16   # rounds the workers fit past the first fetched round before its verdict (no round times yet)


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
        the fit is done, so that their stage ends, until the launcher says it has (looked at every 10 ms: the fit
        returns as soon as its stage has ended)."""
        self.server.drop_workers()
        while not self.stage_done and not self.server.closed:
            try:
                _, conn = self.server.joined.get(timeout=0.01)
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
            try:
                hellos = self._rendezvous(hellos)
            except WorkerLost as lost:   # its stage attempt fails: Spark retries it
                self.lost.append(str(lost))
                self.server.abort("a worker was lost; the stage is retried")
                min_attempt = self.attempt + 1
                continue
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

    def _rendezvous(self, hellos):
        """Tell every worker where all of them are (and whether they may share memory: only if all can), relay the
        host leaders' offers of their shared memory where some host has several workers, and wait until every
        worker is ready (has mapped its host's region). Returns the hellos with each worker's place in the
        topology, as the workers computed it from the same messages."""
        n = self.n_workers
        infos = [{k: hellos[w].get(k) for k in ("worker", "attempt", "host", "address", "port")} for w in range(n)]
        share = all(h.get("share") is True for h in hellos.values())
        self.server.send_all({"type": "peers", "infos": infos, "share": share})
        offers = None
        if any(len(g) > 1 for g in Topology(infos, share).groups):
            offers = [self.server.recv(w, "offer")[0].get("offer") for w in range(n)]
            self.server.send_all({"type": "offers", "offers": offers})
        for w in range(n):
            self.server.recv(w, "ready")
        topo = Topology(infos, share, offers)
        return {w: {**h, "leader_rank": topo.leader_rank.get(w), "leaders": len(topo.leaders),
                    "group": topo.group_of[w]} for w, h in hellos.items()}

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
            if not (isinstance(first, int) and isinstance(last, int)
                    and len(rows) == last - first + 1 == len(ends) - 1):
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
