"""All-reduce between hosts over TCP, directly between the workers (one leader per host), Spark-free.

The K members form a ring: each one sends only to the next and receives only from the previous. A buffer of S
elements is cut into K chunks; a reduce-scatter (K - 1 steps, each member adding the chunk it receives into its
own) leaves member k with chunk (k + 1) mod K summed over all members, then an all-gather (K - 1 steps) hands
every summed chunk round. Each member sends and receives 2 (K - 1) / K x S elements whatever K is, the least
any all-reduce can move, and no link or process carries more than that (a star through one server carries
K x S). Every member ends with the same bytes: chunk c is always summed in the same ring order.

Beside the buffer, each member's small float64 tally row (examples, loss and metric sums, timings) travels once
round the ring during the reduce-scatter, so that every member ends with every member's row.

Connections are authenticated both ways with the per-fit secret and bound to one attempt of the fit (a token
every member of the attempt computes from the rendezvous); a peer that does not hold both is refused. A member
that stops answering or closes its connection makes its neighbours fail at once with an error naming it, and
their own failure reaches the rest of the ring the same way.
"""
import hashlib
import hmac
import os
import select
import socket
import struct
import threading
import time

import numpy as np

_NAP_S = 0.05   # longest single wait in poll: between two, the driver's connection and the deadline are checked
_SOCKET_BUFFER = 4 << 20
_HANDSHAKE_S = 5.0   # longest a handshake may take (a silent connection holds the accept loop this long)


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
    sock.sendall(_mac(secret, b"ring-connect", nonce, token, struct.pack("<i", rank)) + struct.pack("<i", rank) + mine)
    if not hmac.compare_digest(_recv_exact(sock, 32), _mac(secret, b"ring-accept", mine, token)):
        raise PeerLost("the next ring member failed the handshake (not this fit's secret or attempt)")


def _check(sock, secret, token, expected_rank):
    """Accepting side: True when the peer proved the secret, the token and the expected rank."""
    nonce = os.urandom(32)
    sock.sendall(nonce)
    answer = _recv_exact(sock, 68)
    (rank,) = struct.unpack("<i", answer[32:36])
    if rank != expected_rank or not hmac.compare_digest(
            answer[:32], _mac(secret, b"ring-connect", nonce, token, struct.pack("<i", rank))):
        return False
    sock.sendall(_mac(secret, b"ring-accept", answer[36:], token))
    return True


def _advance(views, n):
    """``n`` more bytes of the first of ``views`` went through."""
    views[0] = views[0][n:]
    if not views[0].nbytes:
        views.pop(0)


class Ring:
    """Member ``rank`` of a ring of ``size``; ``names[k]`` says who member k is (for error messages)."""

    def __init__(self, rank, size, send_sock, recv_sock, names, timeout, control=None):
        self.rank, self.size, self.names, self.timeout, self.control = rank, size, names, timeout, control
        self.next, self.prev = send_sock, recv_sock
        for s in (send_sock, recv_sock):
            s.setblocking(False)
        self.sent = self.received = 0
        self._poll = select.poll()
        self._scratch = self._tally = None

    @classmethod
    def connect(cls, rank, addresses, listener, secret, token, names, timeout=600.0, control=None):
        """Connect member ``rank`` to the next member (``addresses[k]`` = (host, port)) and accept the previous
        one on ``listener``; refused connections are counted in ``ring.refused``."""
        size = len(addresses)
        nxt, prev = (rank + 1) % size, (rank - 1) % size
        accepted, failure, refused = [], [], [0]
        deadline = time.monotonic() + timeout
        stop = threading.Event()

        def accept():
            try:
                while not accepted and not stop.is_set():
                    listener.settimeout(min(max(deadline - time.monotonic(), 0.001), 0.1))
                    try:
                        conn, _ = listener.accept()
                    except socket.timeout:
                        if time.monotonic() < deadline:
                            continue
                        raise
                    conn.settimeout(min(_HANDSHAKE_S, max(deadline - time.monotonic(), 0.001)))
                    try:
                        if _check(conn, secret, token, prev):
                            conn.settimeout(None)
                            accepted.append(conn)
                            continue
                    except (OSError, ConnectionError, struct.error):
                        pass
                    refused[0] += 1
                    conn.close()
            except OSError as e:
                failure.append(e)

        thread = threading.Thread(target=accept, name="sparkdl-ring-accept", daemon=True)
        thread.start()
        send_sock = None
        try:
            while send_sock is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerLost(f"ring member {names[nxt]} at {addresses[nxt]} did not accept within {timeout:.3g} s")
                try:
                    send_sock = socket.create_connection(addresses[nxt], timeout=max(min(_HANDSHAKE_S, left), 0.001))
                except OSError as e:   # not listening yet: try again until the deadline
                    if left <= 0:
                        raise PeerLost(f"could not connect to ring member {names[nxt]} at {addresses[nxt]}: {e}") \
                            from None
                    time.sleep(0.05)
                    continue
                try:
                    _offer(send_sock, secret, token, rank)
                except socket.timeout:   # connected, but the next member is not accepting yet
                    send_sock.close()
                    send_sock = None
                    continue
                except (OSError, ConnectionError) as e:   # a refused or failed proof is final
                    raise PeerLost(f"ring member {names[nxt]} at {addresses[nxt]} failed the handshake: {e}") from None
                send_sock.settimeout(None)
            thread.join(max(deadline - time.monotonic(), 0.001))
            if not accepted:
                raise PeerLost(f"ring member {names[prev]} did not connect within {timeout:.3g} s"
                               + (f": {failure[0]}" if failure else ""))
        except BaseException:
            stop.set()
            thread.join(_HANDSHAKE_S + 1)
            for sock in [send_sock] + accepted:
                if sock is not None:
                    sock.close()
            raise
        for s in (send_sock, accepted[0]):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # room for a whole chunk in flight: one send() per step instead of dozens (2.2 -> 1.2 ms for an
            # all-reduce of 2.8 MB between two processes on loopback); the kernel caps it at net.core.*mem_max
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        ring = cls(rank, size, send_sock, accepted[0], names, timeout, control)
        ring.refused = refused[0]
        return ring

    def bounds(self, k, n):
        return k * n // self.size, (k + 1) * n // self.size

    def owned(self, n):
        """The element range this member holds summed after the reduce-scatter (and sends to the driver)."""
        return self.bounds((self.rank + 1) % self.size, n)

    def allreduce(self, buf, tally):
        """Sum ``buf`` (1-D, in place) over the members; returns every member's ``tally`` row, in ring order."""
        k, r, n = self.size, self.rank, buf.size
        rows = [None] * k
        rows[r] = np.asarray(tally, np.float64)
        if self._scratch is None or self._scratch.size < -(-n // k) or self._scratch.dtype != buf.dtype:
            self._scratch = np.empty(-(-n // k), buf.dtype)
        if self._tally is None or self._tally.size != rows[r].size:
            self._tally = np.empty(rows[r].size, np.float64)
        for s in range(k - 1):
            send_lo, send_hi = self.bounds((r - s) % k, n)
            recv_lo, recv_hi = self.bounds((r - s - 1) % k, n)
            scratch = self._scratch[:recv_hi - recv_lo]
            self._exchange([rows[(r - s) % k], buf[send_lo:send_hi]], [self._tally, scratch])
            rows[(r - s - 1) % k] = self._tally.copy()
            buf[recv_lo:recv_hi] += scratch
        self.allgather(buf)
        return rows

    def allgather(self, buf):
        """Every member holds its ``owned`` range of ``buf``; afterwards all of them hold all of it."""
        k, r, n = self.size, self.rank, buf.size
        for s in range(k - 1):
            send_lo, send_hi = self.bounds((r + 1 - s) % k, n)
            recv_lo, recv_hi = self.bounds((r - s) % k, n)
            self._exchange([buf[send_lo:send_hi]], [buf[recv_lo:recv_hi]])

    def _exchange(self, outgoing, incoming):
        """Send ``outgoing`` arrays to the next member while filling ``incoming`` from the previous one, both
        sockets non-blocking, sleeping in poll() when neither can move."""
        out = [memoryview(a).cast("B") for a in outgoing if a.nbytes]
        inn = [memoryview(a).cast("B") for a in incoming if a.nbytes]
        deadline = time.monotonic() + self.timeout
        while out or inn:
            moved = False
            if out:
                try:
                    sent = self.next.send(out[0])
                except BlockingIOError:
                    sent = 0
                except OSError as e:
                    raise self._lost((self.rank + 1) % self.size, e) from None
                if sent:
                    moved = True
                    self.sent += sent
                    _advance(out, sent)
            if inn:
                try:
                    got = self.prev.recv_into(inn[0])
                except BlockingIOError:
                    got = None
                except OSError as e:
                    raise self._lost((self.rank - 1) % self.size, e) from None
                if got == 0:
                    raise self._lost((self.rank - 1) % self.size, "connection closed")
                if got:
                    moved = True
                    self.received += got
                    _advance(inn, got)
            if moved:
                continue
            now = time.monotonic()
            if now > deadline:
                waiting = (self.rank - 1) % self.size if inn else (self.rank + 1) % self.size
                raise TimeoutError(f"ring member {self.names[waiting]} did not exchange its part within "
                                   f"{self.timeout:.3g} s (server_timeout)")
            if self.control is not None:
                self.control.check()
            self._wait(bool(out), bool(inn), min(_NAP_S, deadline - now))

    def _wait(self, sending, receiving, timeout):
        poll = self._poll
        for sock, on, flag in ((self.next, sending, select.POLLOUT), (self.prev, receiving, select.POLLIN)):
            try:
                poll.unregister(sock)
            except KeyError:
                pass
            if on:
                poll.register(sock, flag)
        if self.control is not None:
            try:
                poll.register(self.control.sock, select.POLLIN)
            except (ValueError, OSError):
                pass
        poll.poll(max(timeout, 0.0) * 1000)

    def _lost(self, k, reason):
        return PeerLost(f"ring member {self.names[k]} was lost: {reason}")

    def close(self):
        for s in (self.next, self.prev):
            try:
                s.close()
            except OSError:
                pass
