"""Barrier mode for workers on the driver's host: they average among themselves through shared memory.

The driver creates one region (sparkdl.dist.shm) holding a control block and two result slots per worker. A
worker trains in place in its slot for the round (``model.use_buffers``), publishes the round number, and
sends only its loss and metric sums to the driver. Once every worker has published the round, each one
averages all the workers' slots into its next slot (``Averager``: the same floats everywhere) and trains on:
no bytes through sockets, no driver on the critical path. The driver averages the same slots into its own model
only when it needs the model (epoch ends, callbacks that read it, a lost worker); a worker does not overwrite a
slot before the driver is done with the round it holds (``consumed``).

Waiting spins (yielding the CPU) for a while, then polls: a barrier slot's core is the waiting worker's own.
Flags are plain aligned int64 stores, so this is only used where stores become visible in program order (x86-64);
elsewhere the workers trade buffers with the driver over the socket.
"""
import os
import platform
import select
import time

import numpy as np

from . import shm

SLOTS = 3
_CTRL = 3            # consumed, stop, abort (after one ``done`` and one ``ready`` per worker)
_SPIN_S = 0.05       # spin this long before sleeping between polls
_POLL_S = 0.0002
ORDERED_STORES = platform.machine().lower() in ("x86_64", "amd64")


class Aborted(RuntimeError):
    pass


class PeerBlock:
    """The control block and slots in ``region``: ``like`` is ``[[name, dtype, shape], ...]`` of one slot.
    Three slots per worker, used in turn by round: while the driver takes round g's results, the slots of round
    g - 1 stay intact too, so the driver can always rebuild the last complete round's average (after a lost
    worker) without averaging every round itself."""

    def __init__(self, region, n_workers, like):
        self.region, self.n_workers, self.like = region, n_workers, [list(e) for e in like]
        ctrl = region.view(np.int64, (2 * n_workers + _CTRL,), shm.ALIGN)
        self.done, self.ready = ctrl[:n_workers], ctrl[n_workers:2 * n_workers]
        self.consumed, self.stop, self.abort = ctrl[-3:-2], ctrl[-2:-1], ctrl[-1:]
        self._shares = {}
        offset = shm.aligned(shm.ALIGN + ctrl.nbytes)
        self.slots = []
        for _ in range(n_workers):
            pair = []
            for _ in range(SLOTS):
                slot = {}
                for name, dtype, shape in self.like:
                    slot[name] = region.view(dtype, tuple(shape), offset)
                    offset = shm.aligned(offset + slot[name].nbytes)
                pair.append(slot)
            self.slots.append(pair)

    @staticmethod
    def size(n_workers, like):
        one = sum(shm.aligned(int(np.prod(shape)) * np.dtype(dtype).itemsize) for _, dtype, shape in like)
        return shm.aligned(shm.ALIGN + 8 * (2 * n_workers + _CTRL)) + SLOTS * n_workers * one + shm.ALIGN

    @classmethod
    def create(cls, n_workers, arrays, first_round, last_round):
        """A block for ``arrays`` (name -> array, None skipped), or None where there is no shared memory."""
        like = [[k, np.dtype(a.dtype).name, list(a.shape)] for k, a in arrays.items() if a is not None]
        region = shm.Region.create(cls.size(n_workers, like))
        if region is None:
            return None
        block = cls(region, n_workers, like)
        block.done[:] = first_round - 1
        block.ready[:] = first_round - 1
        block.consumed[0] = first_round - 1
        block.stop[0] = last_round
        block.abort[0] = 0
        return block

    def offer(self):
        return {"region": self.region.offer(), "workers": self.n_workers, "like": self.like}

    @classmethod
    def attach(cls, offer):
        """The block a driver offered, or None where it cannot be used from this process."""
        if not ORDERED_STORES or not isinstance(offer, dict):
            return None
        region = None
        try:
            region = shm.Region.attach(**offer["region"])
            n_workers, like = int(offer["workers"]), offer["like"]
            if region is None or region.size != cls.size(n_workers, like):
                raise ValueError("not the offered layout")
            return cls(region, n_workers, like)
        except (KeyError, TypeError, ValueError):
            if region is not None:
                region.close()
            return None

    def slot(self, worker, round_):
        return self.slots[worker][round_ % SLOTS]

    def sources(self, round_):
        """Every worker's slot for ``round_``, in worker order."""
        return [pair[round_ % SLOTS] for pair in self.slots]

    def wait(self, round_, timeout, sock=None):
        """Worker side, after publishing ``round_``: True once every worker has published it and the driver has
        taken ``round_ - 1`` (so the other slots can be overwritten); False when the driver asked the workers
        to stop after ``round_``. Raises Aborted when the driver gave up (or closed ``sock``), TimeoutError."""
        def late():
            workers = np.flatnonzero(self.done < round_).tolist()
            return (f"workers {workers} did not finish round {round_ + 1}" if workers else
                    f"the driver did not finish round {round_}")
        return self._wait(lambda: round_ < self.stop[0] and self.consumed[0] >= round_ - 1 and
                          self.done.min() >= round_, lambda: round_ >= self.stop[0], late, timeout, sock)

    def average(self, worker, round_, ns, averager, timeout, sock=None):
        """Worker side, after ``wait(round_)``: this worker's 1/n share of every part of round ``round_``'s average
        (``averager`` over all slots of the round, weights ``ns``), written into every worker's slot for the next
        round, then a wait for the other shares. Each worker reads and writes 1/n of the bytes it would to
        average everything itself; the floats are the same. Returns this worker's slot for the next round."""
        nxt = (round_ + 1) % SLOTS
        if nxt not in self._shares.get(worker, {}):
            n = self.n_workers
            out, sources, copies = {}, [{} for _ in range(n)], []
            for name, dst in self.slots[worker][nxt].items():
                lo, hi = worker * dst.size // n, (worker + 1) * dst.size // n
                out[name] = dst.reshape(-1)[lo:hi]
                for v in range(n):
                    sources[v][name] = self.slots[v][round_ % SLOTS][name].reshape(-1)[lo:hi]
                    if v != worker:
                        copies.append((self.slots[v][nxt][name].reshape(-1)[lo:hi], out[name]))
            self._shares.setdefault(worker, {})[nxt] = (out, sources, copies)
        out, sources, copies = self._shares[worker][nxt]
        averager(out, sources, ns)
        for dst, src in copies:
            np.copyto(dst, src)
        self.ready[worker] = round_
        self._wait(lambda: self.ready.min() >= round_, lambda: False,
                   lambda: f"workers {np.flatnonzero(self.ready < round_).tolist()} did not average round "
                           f"{round_ + 1}", timeout, sock)
        return self.slots[worker][nxt]

    def _wait(self, ready, stopped, late, timeout, sock):
        start = time.monotonic()
        while True:
            if self.abort[0]:
                raise Aborted("the driver aborted the fit")
            if ready():
                return True
            if stopped():
                return False
            waited = time.monotonic() - start
            if waited < _SPIN_S:
                os.sched_yield()
                continue
            if waited > timeout:
                raise TimeoutError(f"{late()} within {timeout:.3g} s (server_timeout)")
            if sock is not None and select.select([sock], [], [], 0)[0]:
                raise Aborted("the driver closed the connection or aborted the fit")
            time.sleep(_POLL_S)

    def close(self):
        self.slots = self.done = self.ready = self.consumed = self.stop = self.abort = self._shares = None
        self.region.close()
