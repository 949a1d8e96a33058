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
"""
import hashlib
import hmac
import os
import queue
import select
import socket
import struct
import threading
import time

import numpy as np

_NAP_S = 0.05   # longest single wait in poll: between two, the driver's connection and the deadline are checked
_SOCKET_BUFFER = 4 << 20
_HANDSHAKE_S = 5.0   # longest a handshake may take (a silent connection holds the accept loop this long)
_SEGMENT = 4 << 20   # bytes: a chunk moves in segments of at most this size (one send() each)


class PeerLost(ConnectionError):
    pass


def _mac(secret, *parts):
    return hmac.new(secret, b"|".join(parts), hashlib.sha256).digest()


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed during the handshake")
        buf += chunk
    return bytes(buf)


def _offer(sock, secret, token, rank):
    """Connecting side: prove the secret, the attempt token and our rank; check the other side proves them too."""
    nonce = _recv_exact(sock, 32)
    mine = os.urandom(32)
    sock.sendall(_mac(secret, b"mesh-connect", nonce, token, struct.pack("<i", rank)) + struct.pack("<i", rank) + mine)
    if not hmac.compare_digest(_recv_exact(sock, 32), _mac(secret, b"mesh-accept", mine, token)):
        raise PeerLost("the member failed the handshake (not this fit's secret or attempt)")


def _check(sock, secret, token, expected):
    """Accepting side: the rank the peer proved (with the secret and the token), if it is one of ``expected``;
    else None."""
    nonce = os.urandom(32)
    sock.sendall(nonce)
    answer = _recv_exact(sock, 68)
    (rank,) = struct.unpack("<i", answer[32:36])
    if rank not in expected or not hmac.compare_digest(
            answer[:32], _mac(secret, b"mesh-connect", nonce, token, struct.pack("<i", rank))):
        return None
    sock.sendall(_mac(secret, b"mesh-accept", answer[36:], token))
    return rank


def bounds(k, size, n):
    """Chunk k of a buffer of n elements cut into ``size`` chunks; member k owns it."""
    return k * n // size, (k + 1) * n // size


def segments(lo, hi, itemsize):
    """The segments [(lo, hi)] chunk [lo, hi) moves in (every member cuts it the same way)."""
    n = hi - lo
    g = max(1, -(-n * itemsize // _SEGMENT))
    return [(lo + i * n // g, lo + (i + 1) * n // g) for i in range(g)]


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

    def __init__(self, mesh, n, dtype, width, terms, tallies):
        self.key, self.terms, self.tallies, self.peers = (n, np.dtype(dtype), width), terms, tallies, mesh.peers
        lo, hi = mesh.owned(n)
        self.segments = [(a - lo, b - lo) for a, b in segments(lo, hi, np.dtype(dtype).itemsize)]
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


def bounds(k, size, n):
    """Chunk k of a buffer of n elements cut into ``size`` chunks; member k owns it."""
    return k * n // size, (k + 1) * n // size


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
        size = len(addresses)
        expected = set(range(rank))
        accepted, failure, refused = {}, [], [0]
        deadline = time.monotonic() + timeout
        stop = threading.Event()

        def accept():
            try:
                while len(accepted) < len(expected) and not stop.is_set():
                    listener.settimeout(min(max(deadline - time.monotonic(), 0.001), 0.1))
                    try:
                        conn, _ = listener.accept()
                    except socket.timeout:
                        if time.monotonic() < deadline:
                            continue
                        raise
                    conn.settimeout(min(_HANDSHAKE_S, max(deadline - time.monotonic(), 0.001)))
                    try:
                        k = _check(conn, secret, token, expected - set(accepted))
                        if k is not None:
                            conn.settimeout(None)
                            accepted[k] = conn
                            continue
                    except (OSError, ConnectionError, struct.error):
                        pass
                    refused[0] += 1
                    conn.close()
            except OSError as e:
                failure.append(e)

        thread = threading.Thread(target=accept, name="sparkdl-mesh-accept", daemon=True)
        thread.start()
        connected = {}
        try:
            for k in range(rank + 1, size):
                connected[k] = _connect_to(k, addresses[k], names[k], secret, token, rank, deadline, timeout)
            thread.join(max(deadline - time.monotonic(), 0.001))
            if len(accepted) < len(expected):
                missing = ", ".join(names[k] for k in sorted(expected - set(accepted)))
                raise PeerLost(f"mesh member(s) {missing} did not connect within {timeout:.3g} s"
                               + (f": {failure[0]}" if failure else ""))
        except BaseException:
            stop.set()
            thread.join(_HANDSHAKE_S + 1)
            for sock in list(connected.values()) + list(accepted.values()):
                sock.close()
            raise
        socks = {**accepted, **connected}
        for s in socks.values():
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # room for a whole chunk in flight: one send() per chunk instead of dozens (2.2 -> 1.2 ms for an
            # all-reduce of 2.8 MB between two processes on loopback); the kernel caps it at net.core.*mem_max
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        mesh = cls(rank, size, socks, names, timeout, control)
        mesh.refused = refused[0]
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
        self._ahead = _Ahead(self, n, dtype, width, *self._arrays[1:])
        self._receiver.submit(self._ahead)

    def allreduce(self, buf, tally):
        """Sum ``buf`` (1-D, in place) over the members; returns every member's ``tally`` row, in member order.
        The owner of a chunk adds the others' contributions up in member order, then its own."""
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


def _connect_to(k, address, name, secret, token, rank, deadline, timeout):
    """A connection to member k that passed the handshake, retried until ``deadline`` while k is not listening."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PeerLost(f"mesh member {name} at {address} did not accept within {timeout:.3g} s")
        try:
            sock = socket.create_connection(address, timeout=max(min(_HANDSHAKE_S, left), 0.001))
        except OSError:   # not listening yet: try again until the deadline
            time.sleep(0.05)
            continue
        try:
            _offer(sock, secret, token, rank)
        except socket.timeout:   # connected, but the member is not accepting yet
            sock.close()
            continue
        except (OSError, ConnectionError) as e:   # a refused or failed proof is final
            sock.close()
            raise PeerLost(f"mesh member {name} at {address} failed the handshake: {e}") from None
        sock.settimeout(None)
        return sock
