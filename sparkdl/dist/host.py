"""The workers of one host average through shared memory (one sparkdl.dist.shm Region, made by the host's
leader, the worker with the lowest id there).

Each worker trains in place in its slot of the region (``model.use_buffers``): one flat block holding the
params, the layer state and the optimizer state. After a round every worker publishes its round number and its
tally row (examples, loss and metric sums, timings), then takes its share (1/L of the elements) of the weighted
sum of all the host's slots:
- alone on the cluster (one host): the share is the average, written straight into every slot;
- with other hosts: the share goes into the host's partial sum ``P``, the leader all-reduces ``P`` with the
  other hosts' leaders (sparkdl.dist.mesh), and every worker copies the result into its slot.
Every wait spins for at most ``SPIN_S`` and then sleeps on a futex, so a worker waiting for slower peers
leaves its core to them (or to whatever else the executor's host runs).

CPUs (``bind``, Linux). Left to themselves, the kernel puts a worker it wakes on the CPU of the worker that woke
it, so lock-stepped workers end up sharing one CPU while a busy process of someone else keeps another to itself
(two workers on 2 CPUs beside one busy process: both on one CPU most of the time, 0.93 of a core between them).
So the workers of a host bind to disjoint blocks of the CPUs they may use, and a worker that waits for a slower
one longer than ``HAND_OVER_S`` swaps blocks with it: the slower one goes on on the CPUs the waiter leaves idle
(the same case: 1.1 cores between them; bench/README.md has the epoch times).
"""
import os
import struct
import threading
import time

import numpy as np

from ..backend import blas_threads
from . import shm

SPIN_S = 50e-6      # spin this long (the other workers are usually microseconds away), then sleep
_NAP_S = 0.05       # longest single sleep: between two, the driver's connection and the deadline are checked
HAND_OVER_S = 1e-3  # a worker waiting this long for a slower one of its host hands it its CPUs (when bound)
# int32 words: done[L], ready[L], mesh (the leader's last all-reduced round), abort; then the workers' thread ids
_DONE, _READY = 0, 1
_BEFORE = -2 ** 30   # the words' value before any round (the fit's first round is only known later)
_STAMP, _LAYOUT = struct.Struct("<4q"), 16   # the layout (workers, size, dtype, width), after the region's token


class Aborted(RuntimeError):
    """The fit was aborted by the driver or by another worker of the host."""


class HostGroup:
    """``n_local`` workers of one host in one region: control words, tally rows (float64, ``width`` each), the
    partial sum P and one slot per worker (``size`` elements of ``dtype`` each)."""

    def __init__(self, region, n_local, size, dtype, width):
        self.region, self.n_local, self.size, self.dtype, self.width = region, n_local, size, np.dtype(dtype), width
        offset = shm.ALIGN
        self.words = region.view(np.int32, (2 * n_local + 2,), offset)
        offset = shm.aligned(offset + self.words.nbytes)
        self.threads = region.view(np.int32, (n_local,), offset)   # each worker's training thread (for its CPUs)
        offset = shm.aligned(offset + self.threads.nbytes)
        self.rows = region.view(np.float64, (n_local, width), offset)
        offset = shm.aligned(offset + self.rows.nbytes)
        self.partial = region.view(self.dtype, (size,), offset)
        offset = shm.aligned(offset + self.partial.nbytes)
        self.slots = []
        for _ in range(n_local):
            self.slots.append(region.view(self.dtype, (size,), offset))
            offset = shm.aligned(offset + self.slots[-1].nbytes)
        self._mesh, self._abort = 2 * n_local, 2 * n_local + 1
        self._addr = [shm.address(self.words, i) for i in range(len(self.words))]
        self.shares = [(j * size // n_local, (j + 1) * size // n_local) for j in range(n_local)]
        self._scratch = self._allowed = self._blas = None

    @staticmethod
    def nbytes(n_local, size, dtype, width):
        parts = [4 * (2 * n_local + 2), 4 * n_local, 8 * n_local * width] + [size * np.dtype(dtype).itemsize] * (1 + n_local)
        return shm.ALIGN + sum(shm.aligned(p) for p in parts) + shm.ALIGN

    @classmethod
    def create(cls, n_local, size, dtype, width):
        """The leader's region, or None where this host has no shared memory to use."""
        if not shm.ORDERED_STORES:
            return None
        region = shm.Region.create(cls.nbytes(n_local, size, dtype, width))
        if region is None:
            return None
        group = cls(region, n_local, size, dtype, width)
        group.words[:] = _BEFORE
        group.words[group._abort] = 0
        region.mm[_LAYOUT:_LAYOUT + _STAMP.size] = group._stamp()
        return group

    def _stamp(self):
        return _STAMP.pack(self.n_local, self.size, self.dtype.num, self.width)

    def offer(self):
        return {"region": self.region.offer(), "workers": self.n_local, "size": self.size,
                "dtype": self.dtype.name, "width": self.width}

    @classmethod
    def attach(cls, offer):
        """The leader's group, or None where its region cannot be mapped from this process."""
        region = None
        try:
            region = shm.Region.attach(**offer["region"])
            args = (int(offer["workers"]), int(offer["size"]), np.dtype(offer["dtype"]), int(offer["width"]))
            if region is None or region.size != cls.nbytes(*args):
                raise ValueError("not the offered layout")
            group = cls(region, *args)
            if bytes(region.mm[_LAYOUT:_LAYOUT + _STAMP.size]) != group._stamp():   # what the leader laid out
                raise ValueError("not the offered layout")
            return group
        except (KeyError, TypeError, ValueError, struct.error):
            if region is not None:
                region.close()
            return None

    # -- CPUs -------------------------------------------------------------------------------------------------------
    def bind(self, j, cpus=True):
        """Worker ``j`` says which thread trains (the calling one); with ``cpus`` it binds that thread to block j of
        the CPUs it may use, where there are at least as many as the host's workers (Linux)."""
        allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0] * (os.cpu_count() or 1)
        n = len(allowed)
        # BLAS gets this worker's share of the CPUs: more threads would spin on the other workers' (with
        # OPENBLAS_NUM_THREADS=2 and two bound workers on two cores a batch-64 step took 8-15 ms, not 0.3 ms)
        self._blas = blas_threads(max(1, n // self.n_local))
        if cpus and hasattr(os, "sched_setaffinity") and n >= self.n_local:
            try:
                os.sched_setaffinity(0, allowed[j * n // self.n_local:(j + 1) * n // self.n_local])
                self._allowed = allowed
            except OSError:
                pass
        # last: from here on a waiting worker may hand this thread its CPUs, which a later binding would undo
        self.threads[j] = threading.get_native_id()

    def unbind(self):
        """The calling thread may use all the CPUs (and BLAS the threads) it could before ``bind`` again."""
        if self._blas is not None:
            self._blas.restore_original_limits()
            self._blas = None
        if self._allowed is not None:
            try:
                os.sched_setaffinity(0, self._allowed)
            except OSError:
                pass
            self._allowed = None

    def _hand_over(self, late):
        """Swap CPU blocks with worker ``late`` of this host, which this (bound) worker is about to wait for."""
        try:
            mine, theirs = os.sched_getaffinity(0), os.sched_getaffinity(int(self.threads[late]))
            if mine != theirs:
                os.sched_setaffinity(int(self.threads[late]), mine)
                os.sched_setaffinity(0, theirs)
        except OSError:   # it ended meanwhile, or may not use these CPUs (another container): stop handing over
            self.unbind()

    # -- the round ----------------------------------------------------------------------------------------------
    def publish(self, j, round_, row):
        """Worker ``j`` has trained ``round_`` in its slot; ``row`` is its tally row."""
        self.rows[j] = row
        self._store(_DONE, j, round_)

    def wait_published(self, round_, timeout, control=None):
        self._wait_all(_DONE, round_, timeout, control, f"trained round {round_ + 1}", hand_over=True)

    def average_shares(self, j, round_, weights, timeout, control=None, while_waiting=None):
        """Alone on the cluster: worker ``j``'s share of the weighted average, into every slot; then a wait until
        every worker has written its share (each slot then holds the average). ``while_waiting()`` runs between
        the two, where this worker would otherwise only wait."""
        lo, hi = self.shares[j]
        if hi > lo:
            first = next((v for v, w in enumerate(weights) if w), 0)
            avg = self._weighted_sum(lo, hi, weights, self.slots[first][lo:hi])   # in place: read before written
            for v, slot in enumerate(self.slots):
                if v != first:
                    np.copyto(slot[lo:hi], avg)
        self._store(_READY, j, round_)
        if while_waiting is not None:
            while_waiting()
        self._wait_all(_READY, round_, timeout, control, f"averaged round {round_ + 1}")

    def partial_shares(self, j, round_, weights, timeout, control=None):
        """With other hosts: worker ``j``'s share of the host's weighted sum, into P; then a wait until P is whole."""
        lo, hi = self.shares[j]
        if hi > lo:
            self._weighted_sum(lo, hi, weights, self.partial[lo:hi])
        self._store(_READY, j, round_)
        self._wait_all(_READY, round_, timeout, control, f"summed round {round_ + 1}")

    def mesh_done(self, round_):
        """The leader has all-reduced P for ``round_``."""
        self.words[self._mesh] = round_
        shm.wake(self._addr[self._mesh])

    def wait_mesh(self, round_, timeout, control=None):
        self._wait(lambda: self.words[self._mesh] >= round_, self._mesh, timeout, control,
                   lambda: f"the host's leader did not finish averaging round {round_ + 1} with the other hosts")

    def abort(self):
        self.words[self._abort] = 1
        for i in range(len(self.words) - 1):
            shm.wake(self._addr[i])

    # -- internals ----------------------------------------------------------------------------------------------
    def _weighted_sum(self, lo, hi, weights, out):
        """``out = sum_i weights[i] * slot_i[lo:hi]`` in worker order, in the slots' float type (idle workers, weight 0,
        add nothing). ``out`` may be the range of the first source with a weight: it is read before it is written."""
        if self._scratch is None or self._scratch.size != hi - lo:
            self._scratch = np.empty(hi - lo, self.dtype)
        first = True
        for slot, w in zip(self.slots, weights):
            if not w:
                continue
            w = self.dtype.type(w)
            if first:
                np.multiply(slot[lo:hi], w, out=out)
                first = False
            else:
                np.multiply(slot[lo:hi], w, out=self._scratch)
                out += self._scratch
        if first:
            out[...] = 0
        return out

    def _store(self, kind, j, round_):
        i = kind * self.n_local + j
        self.words[i] = round_
        shm.wake(self._addr[i])

    def _wait_all(self, kind, round_, timeout, control, what, hand_over=False):
        base = kind * self.n_local
        for j in range(self.n_local):
            self._wait(lambda: self.words[base + j] >= round_, base + j, timeout, control,
                       lambda: f"worker {j} of this host has not {what}",
                       (lambda: self._hand_over(j)) if hand_over and self._allowed is not None else None)

    def _wait(self, ready, word, timeout, control, late, long_wait=None):
        """Spin for up to SPIN_S, then sleep on ``word`` in naps; between naps check for an abort (of the host or
        of the driver, through ``control``) and the deadline. ``long_wait()`` runs once the wait is HAND_OVER_S
        long."""
        if ready():
            return
        start = time.perf_counter()
        while time.perf_counter() - start < SPIN_S:
            if ready():
                return
        deadline = start + timeout
        while True:
            if self.words[self._abort]:
                raise Aborted("the fit was aborted (by the driver or another worker of this host)")
            value = int(self.words[word])
            if ready():
                break
            now = time.perf_counter()
            if now > deadline:
                raise TimeoutError(f"{late()} within {timeout:.3g} s (server_timeout)")
            if control is not None:
                control.check()
            nap = min(_NAP_S, deadline - now)
            if long_wait is not None:
                if now - start >= HAND_OVER_S:
                    long_wait()
                    long_wait = None
                else:
                    nap = min(nap, start + HAND_OVER_S - now)
            shm.sleep_until_changed(self._addr[word], value, nap)

    def close(self):
        self.unbind()
        self.slots = self.partial = self.rows = self.words = self.threads = self._scratch = None
        self.region.close()


def host_key():
    """What makes two workers share memory: the same hostname and the same /dev/shm (a container or a network
    namespace with its own /dev/shm is another host)."""
    import socket
    try:
        st = os.stat(shm.DIRECTORY)
        shm_id = f"{st.st_dev}:{st.st_ino}"
    except OSError:
        shm_id = "none"
    return f"{socket.gethostname()}|{shm_id}"
