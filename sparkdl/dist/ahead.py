"""The receiving side of a mesh member (sparkdl.dist.mesh) between two all-reduces: the byte streams that move
through its sockets, and the thread that receives the other members' contributions to its chunk for the next
all-reduce ahead, adding each segment up as soon as every member's is in, while the member still computes."""
import os
import queue
import select
import threading

import numpy as np


class _Stream:
    """The arrays still to move through one socket in one direction, as byte views (the first one partly moved);
    ``done`` counts the arrays queued so far that have moved completely."""

    def __init__(self, arrays=()):
        self.views, self.queued, self.done = [], 0, 0
        self.queue(arrays)

    def queue(self, arrays):
        for a in arrays:
            view = memoryview(a).cast("B")
            if view.nbytes:
                self.views.append((view, self.queued))
            self.queued += 1
        self._settle()

    def advance(self, n):
        view, index = self.views[0]
        if n < view.nbytes:
            self.views[0] = (view[n:], index)
        else:
            self.views.pop(0)
            self._settle()

    def _settle(self):
        self.done = self.views[0][1] if self.views else self.queued


class _Cancelled(Exception):
    pass


class _Ahead:
    """The other members' contributions to one member's chunk for one all-reduce, with their tally rows: received by
    the member's receiving thread, which adds up every segment (in member order) as soon as all of them have it."""

    def __init__(self, mesh, n, dtype, width, chunk_segments, terms, tallies):
        self.key, self.terms, self.tallies, self.peers = (n, np.dtype(dtype), width), terms, tallies, mesh.peers
        lo, _ = mesh.owned(n)
        self.segments = [(a - lo, b - lo) for a, b in chunk_segments]   # ``segments`` of the member's chunk
        self.pending = {p: _Stream([tallies[p]] + [terms[p][a:b] for a, b in self.segments]) for p in mesh.peers}
        self.summed = 0   # segments added up so far (read by the member's thread)
        self.error, self.received, self.done, self.cancelled = None, 0, threading.Event(), False

    def check(self):
        if self.cancelled:
            raise _Cancelled()

    def progress(self, ins, outs):
        """Add up the segments every peer has sent; True when one was."""
        before = self.summed
        while self.summed < len(self.segments) and all(s.done >= 2 + self.summed for s in self.pending.values()):
            a, b = self.segments[self.summed]
            first = self.terms[self.peers[0]][a:b]
            for p in self.peers[1:]:
                np.add(first, self.terms[p][a:b], out=first)
            self.summed += 1
        return self.summed > before

    def finished(self, p):
        """Whether all of peer p's contribution is in (what p sends next belongs to the all-gather)."""
        return not self.pending[p].views

    def sum(self, a, b):
        """Segment [a, b) (relative to the chunk) of the others' contributions, added up in member order."""
        return self.terms[self.peers[0]][a:b]

    def missing(self, names):
        return next((names[p] for p, stream in self.pending.items() if stream.views), "?")


class _Receiver:
    """A member's thread that receives ahead: the contributions for its next all-reduce come in (and are added up)
    while it still computes its own; on a host with a core to spare they are all in when it gets there."""

    def __init__(self, mesh):
        self.mesh, self.jobs = mesh, queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()      # cuts a wait in poll short: a job was cancelled, or closing
        os.set_blocking(self.wake_r, False)
        self.thread = threading.Thread(target=self._run, name="sparkdl-mesh-receive", daemon=True)
        self.thread.start()

    def submit(self, job):
        self.jobs.put(job)

    def _run(self):
        poll = select.poll()
        poll.register(self.wake_r, select.POLLIN)
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                job.check()

                def progress(ins, outs):
                    if job.progress(ins, outs):
                        self.mesh._signal_progress()

                job.received = self.mesh._pump({}, job.pending, None, job.check, poll, progress)[1]
            except BaseException as e:   # handed to the member's thread, which raises it
                job.error = e
            finally:
                job.done.set()
                self.mesh._signal_progress()

    def cancel(self, job):
        job.cancelled = True
        os.write(self.wake_w, b"!")
        job.done.wait()
        try:
            os.read(self.wake_r, 64)
        except BlockingIOError:
            pass

    def close(self):
        self.jobs.put(None)
        os.write(self.wake_w, b"!")
        self.thread.join()
        os.close(self.wake_r)
        os.close(self.wake_w)
