"""All-reduce between hosts over TCP, directly between the workers (one leader per host), Spark-free.

The K members are fully connected, one TCP connection per pair. A buffer of S elements is cut into K chunks, and
member k owns chunk k. Reduce-scatter: every member sends each chunk straight to its owner, which adds the others'
contributions up in member order, then its own. All-gather: every owner sends its summed chunk straight to every
other member. Each member sends and receives 2 (K - 1) / K x S elements, the least any all-reduce can move (a
star through one server carries K x S), as in a ring, but in two phases instead of 2 (K - 1) dependent steps.

What happens after the last member of a round arrives is what the round waits for, so:
- a thread of each member's own receives the others' contributions for its next all-reduce ahead, while the
  member still computes (``prepare``): when the slowest member arrives, its part is already in and added up;
- chunks move in segments (_SEGMENT bytes), sent to the peers in turn: an owner adds up and passes on a segment
  as soon as it has it from everyone, while the rest is still on its way.
Every member ends with the same bytes: only the owner adds a chunk up, always in the same order.

Beside the buffer, each member's small float64 tally row (examples, loss and metric sums, timings) goes to every
other member with its contributions, so that every member ends with every member's row.

Connections are authenticated both ways with the per-fit secret and bound to one attempt of the fit (a token
every member of the attempt computes from the rendezvous); a peer that does not hold both is refused. A member
that stops answering or closes its connection makes the others fail at once with an error naming it.

The connections are set up in sparkdl.dist.handshake, the receiving thread lives in sparkdl.dist.ahead.
"""
import os
import select
import time

import numpy as np

from .ahead import _Ahead, _Receiver, _Stream
from .handshake import PeerLost, _offer, _recv_exact, connect_all

__all__ = ["Mesh", "PeerLost", "bounds", "segments", "_offer", "_recv_exact"]

_NAP_S = 0.05   # longest single wait in poll: between two, the driver's connection and the deadline are checked
_SEGMENT = 4 << 20   # bytes: a chunk moves in segments of at most this size (one send() each)


def bounds(k, size, n):
    """Chunk k of a buffer of n elements cut into ``size`` chunks; member k owns it."""
    return k * n // size, (k + 1) * n // size


def segments(lo, hi, itemsize):
    """The segments [(lo, hi)] chunk [lo, hi) moves in (every member cuts it the same way)."""
    n = hi - lo
    g = max(1, -(-n * itemsize // _SEGMENT))
    return [(lo + i * n // g, lo + (i + 1) * n // g) for i in range(g)]


class Mesh:
    """Member ``rank`` of ``size``, with ``socks[k]`` its connection to member k; ``names[k]`` says who member k
    is (for error messages)."""

    def __init__(self, rank, size, socks, names, timeout, control=None):
        self.rank, self.size, self.names, self.timeout, self.control = rank, size, names, timeout, control
        self.socks = socks
        for s in socks.values():
            s.setblocking(False)
        self.peers = [k for k in range(size) if k != rank]
        self.sent = self.received = 0
        self._poll = select.poll()
        self._ahead = self._arrays = self._receiver = None
        self._signal = os.pipe()   # the receiving thread's word to this member's: a segment is added up, or it is done
        os.set_blocking(self._signal[0], False)
        self._poll.register(self._signal[0], select.POLLIN)

    @classmethod
    def connect(cls, rank, addresses, listener, secret, token, names, timeout=600.0, control=None):
        """Connect member ``rank`` to every member after it (``addresses[k]`` = (host, port)) and accept every
        member before it on ``listener``; refused connections are counted in ``mesh.refused``."""
        socks, refused = connect_all(rank, addresses, listener, secret, token, names, timeout)
        mesh = cls(rank, len(addresses), socks, names, timeout, control)
        mesh.refused = refused
        return mesh

    def owned(self, n):
        """The element range this member holds summed after the reduce-scatter (and sends to the driver)."""
        return bounds(self.rank, self.size, n)

    def prepare(self, n, dtype, width):
        """The next ``allreduce`` sums ``n`` elements of ``dtype`` with tally rows of ``width``: receive the other
        members' contributions to it from now on, in the background, while this member still computes its own."""
        if self._ahead is not None:
            raise RuntimeError("prepare: the all-reduce prepared before has not run yet")
        key = (n, np.dtype(dtype), width)
        if self._arrays is None or self._arrays[0] != key:
            lo, hi = self.owned(n)
            self._arrays = key, np.empty((self.size, hi - lo), dtype), np.empty((self.size, width), np.float64)
        if self._receiver is None:
            self._receiver = _Receiver(self)
        self._ahead = _Ahead(self, n, dtype, width, segments(*self.owned(n), np.dtype(dtype).itemsize),
                             *self._arrays[1:])
        self._receiver.submit(self._ahead)

    def allreduce(self, buf, tally, scale=None):
        """Sum ``buf`` (1-D, in place) over the members, times ``scale`` where given; returns every member's ``tally``
        row, in member order. The owner of a chunk adds the others' contributions up in member order, then its own,
        and multiplies the sum by ``scale``: one pass over its chunk instead of one over every member's buffer
        (every member must pass the same ``scale``)."""
        k, r, n = self.size, self.rank, buf.size
        row = np.asarray(tally, np.float64)
        if self._ahead is None:
            self.prepare(n, buf.dtype, row.size)
        elif self._ahead.key != (n, buf.dtype, row.size):
            raise ValueError(f"allreduce of {n} {buf.dtype} elements with tally rows of {row.size}, but prepared "
                             f"for {self._ahead.key}")
        ahead, self._ahead = self._ahead, None
        lo, hi = self.owned(n)
        size = buf.dtype.itemsize
        chunk = {p: [buf[a:b] for a, b in segments(*bounds(p, k, n), size)] for p in self.peers}
        outs = {p: _Stream([row] + chunk[p]) for p in self.peers}   # contributions, then our sum
        ins = {p: _Stream(chunk[p]) for p in self.peers}            # their sums, once their contributions are in
        passed = [0]   # segments of our chunk summed and queued for the peers

        def progress(ins, outs):
            if ahead.error is not None:
                raise ahead.error
            while passed[0] < ahead.summed:
                a, b = ahead.segments[passed[0]]
                np.add(ahead.sum(a, b), buf[lo + a:lo + b], out=buf[lo + a:lo + b])
                if scale is not None:
                    np.multiply(buf[lo + a:lo + b], buf.dtype.type(scale), out=buf[lo + a:lo + b])
                for p in self.peers:
                    outs[p].queue([buf[lo + a:lo + b]])
                passed[0] += 1
            return False

        try:
            sent, received = self._pump(outs, ins, time.monotonic() + self.timeout, self._check, self._poll, progress,
                                        ready=ahead.finished, waiting_for=ahead)
        except BaseException:
            self._receiver.cancel(ahead)
            raise
        self.sent += sent
        self.received += received + ahead.received
        ahead.tallies[r] = row
        return [ahead.tallies[m].copy() for m in range(k)]

    def allgather(self, buf):
        """Every member holds its ``owned`` range of ``buf``; afterwards all of them hold all of it."""
        if self._ahead is not None:
            raise RuntimeError("allgather: an all-reduce was prepared and has not run yet")
        k, n, size = self.size, buf.size, buf.dtype.itemsize
        mine = [buf[a:b] for a, b in segments(*self.owned(n), size)]
        sent, received = self._pump({p: _Stream(mine) for p in self.peers},
                                    {p: _Stream([buf[a:b] for a, b in segments(*bounds(p, k, n), size)])
                                     for p in self.peers}, time.monotonic() + self.timeout, self._check, self._poll)
        self.sent += sent
        self.received += received

    def _check(self):
        if self.control is not None:
            self.control.check()

    def _signal_progress(self):
        try:
            os.write(self._signal[1], b"!")
        except (BlockingIOError, OSError):   # a full pipe already says it
            pass

    def _pump(self, outs, ins, deadline, check, poll, progress=None, ready=None, waiting_for=None):
        """Move the ``outs[p]`` streams to every peer p and the ``ins[p]`` streams from it (only once ``ready(p)``),
        all sockets non-blocking, one send per peer in turn; ``progress(ins, outs)`` runs after every pass and may
        queue more to send (it runs until it has nothing left to queue and everything moved). Sleeps in ``poll`` when
        nothing can move, calling ``check()`` between naps; returns the bytes (sent, received). ``deadline`` None:
        no deadline."""
        sent = received = 0
        while True:
            moved = False
            for p, o in outs.items():
                if o.views:
                    try:
                        n = self.socks[p].send(o.views[0][0][:_SEGMENT])
                    except BlockingIOError:
                        n = 0
                    except OSError as e:
                        raise self._lost(p, e) from None
                    if n:
                        moved = True
                        sent += n
                        o.advance(n)
            for p, i in ins.items():
                while i.views and (ready is None or ready(p)):
                    try:
                        n = self.socks[p].recv_into(i.views[0][0])
                    except BlockingIOError:
                        break
                    except OSError as e:
                        raise self._lost(p, e) from None
                    if n == 0:
                        raise self._lost(p, "connection closed")
                    moved = True
                    received += n
                    i.advance(n)
            if progress is not None:
                progress(ins, outs)
            if moved:
                continue
            busy = [p for p in self.peers if (p in outs and outs[p].views) or (p in ins and ins[p].views)]
            if not busy and (waiting_for is None or waiting_for.done.is_set()):
                if progress is not None:
                    progress(ins, outs)   # the last segments: queued, then moved on the next pass
                if not any(o.views for o in outs.values()):
                    return sent, received
                continue
            now = time.monotonic()
            if deadline is not None and now > deadline:
                late = busy[0] if busy else None
                name = self.names[late] if late is not None else waiting_for.missing(self.names)
                raise TimeoutError(f"mesh member {name} did not exchange its part within {self.timeout:.3g} s "
                                   f"(server_timeout)")
            check()
            for p in self.peers:
                flags = (select.POLLOUT if p in outs and outs[p].views else 0) | \
                        (select.POLLIN if p in ins and ins[p].views and (ready is None or ready(p)) else 0)
                if flags:
                    poll.register(self.socks[p], flags)
                else:
                    try:
                        poll.unregister(self.socks[p])
                    except KeyError:
                        pass
            if self.control is not None and poll is self._poll:
                try:
                    poll.register(self.control.sock, select.POLLIN)
                except (ValueError, OSError):
                    pass
            poll.poll(_NAP_S * 1000 if deadline is None else max(min(_NAP_S, deadline - now), 0.0) * 1000)
            if poll is self._poll:
                try:
                    os.read(self._signal[0], 4096)
                except BlockingIOError:
                    pass

    def _lost(self, k, reason):
        return PeerLost(f"mesh member {self.names[k]} was lost: {reason}")

    def close(self):
        if self._receiver is not None:
            if self._ahead is not None:
                self._receiver.cancel(self._ahead)
            self._receiver.close()
            self._ahead = self._receiver = None
        for s in self.socks.values():
            try:
                s.close()
            except OSError:
                pass
        for fd in self._signal:
            try:
                os.close(fd)
            except OSError:
                pass
