"""Barrier mode's control channel between the driver and every worker, Spark-free.

A worker connects, proves it holds the per-fit secret (sparkdl.dist.wire), says hello (worker id, task
attempt, rows, host, pid, its place in the topology) and is sent where the fit starts. Afterwards the driver
hears only what it needs: one tally per round from worker 0 (examples, loss and metric sums, timings, all
already summed over the workers), each host leader's share of the model at the rounds where the driver needs
the model, and the workers' timing records. It answers those rounds with a verdict (go on or stop) and can
abort. The bytes are counted by kind: ``model`` (the start and the fetches), ``stats`` (timing records) and
``control`` (everything else).

A connection that fails the handshake is closed and counted in ``refused``; it never reaches the fit.
"""
import collections
import queue
import select
import selectors
import socket
import threading
import time

from . import wire


class WorkerLost(ConnectionError):
    def __init__(self, worker, reason):
        super().__init__(f"worker {worker} was lost: {reason}")
        self.worker = worker


class Aborted(RuntimeError):
    """The driver aborted the fit, or closed its connection."""


class Stopped(Aborted):
    """The driver stopped the fit (it was interrupted): the workers end their tasks quietly."""


def _kind(header):
    return {"model": "model", "start": "model", "stats": "stats"}.get(header.get("type"), "control")


class ControlServer:
    def __init__(self, secret, host="127.0.0.1", timeout=600.0, handshake_timeout=10.0, ports=None, advertise=None):
        """Listen on ``host`` (a port of ``ports``); workers are told to connect to ``advertise`` (default: host)."""
        self.secret, self.timeout, self.handshake_timeout = secret, timeout, handshake_timeout
        self.listener = wire.listen(host, ports)
        self.host, self.port = advertise or host, self.listener.getsockname()[1]
        self.joined = queue.Queue()
        self.refused = 0
        self.closed = False
        self.bytes = {"control": 0, "model": 0, "stats": 0}
        self.workers = {}      # worker id -> (hello header, socket) of the current attempt
        self._inbox, self._finished = {}, {}
        self._selector = None
        threading.Thread(target=self._accept, name="sparkdl-control-accept", daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handshake, args=(conn,), daemon=True).start()

    def _handshake(self, conn):
        conn.settimeout(self.handshake_timeout)
        try:
            if wire.challenge(conn, self.secret):
                header, _ = wire.recv(conn, max_bytes=0)
                # type() and not isinstance: True is an int too; a non-int attempt would break wait_for_workers
                if header.get("type") == "hello" and type(header.get("worker")) is int and \
                        type(header.get("attempt", 0)) is int:
                    conn.settimeout(None)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self.joined.put((header, conn))
                    return
        except (OSError, wire.WireError, ValueError, TypeError):
            pass
        self.refused += 1
        conn.close()

    def wait_for_workers(self, n, min_attempt=0):
        """{worker id: hello header} once workers 0..n-1 of attempt >= min_attempt have joined; they become the
        workers this server talks to (the sockets of an earlier attempt are closed)."""
        self.drop_workers()
        deadline = time.monotonic() + self.timeout
        workers = {}
        try:
            while len(workers) < n:
                if self.closed:
                    raise RuntimeError("the control server was closed while it waited for workers")
                try:
                    header, conn = self.joined.get(timeout=min(max(deadline - time.monotonic(), 0.001), 0.5))
                except queue.Empty:
                    if time.monotonic() < deadline:
                        continue
                    missing = sorted(set(range(n)) - set(workers))
                    raise TimeoutError(f"workers {missing} of {n} did not connect to the driver within "
                                       f"{self.timeout:.3g} s (server_timeout)") from None
                w, attempt = header["worker"], header.get("attempt", 0)
                if attempt < min_attempt or not 0 <= w < n or (w in workers and workers[w][0].get("attempt", 0) > attempt):
                    conn.close()   # an older attempt's late hello never replaces a newer one
                    continue
                if w in workers:
                    workers[w][1].close()  # a newer attempt of the same worker replaces the old one
                workers[w] = (header, conn)
        except BaseException:
            for _, conn in workers.values():
                conn.close()
            raise
        self.workers = workers
        self._inbox = {w: collections.deque() for w in workers}
        self._finished = {}
        self._selector = selectors.DefaultSelector()
        for w, (_, conn) in workers.items():
            self._selector.register(conn, selectors.EVENT_READ, w)
        return {w: h for w, (h, _) in workers.items()}

    def recv(self, w, kind, round_=None):
        """Worker ``w``'s next message, which must be a ``kind`` message (for ``round_`` if given); messages the
        other workers send meanwhile are kept for later, and a closed connection of any of them is a WorkerLost."""
        deadline = time.monotonic() + self.timeout
        while not self._inbox[w]:
            what = f"{kind} message" + ("" if round_ is None else f" for round {round_ + 1}")
            if w in self._finished:
                raise WorkerLost(w, f"it ended its fit before its {what}; {self._finished[w]}")
            ready = self._selector.select(timeout=max(deadline - time.monotonic(), 0.001))
            if not ready:
                raise TimeoutError(f"worker {w} sent no {what} within {self.timeout:.3g} s (server_timeout)")
            for key, _ in ready:
                self._read(key.data, deadline)
        header, arrays, size = self._inbox[w].popleft()
        self.bytes[_kind(header)] += size   # counted when used, so a message read early counts in its own round
        if header.get("type") != kind or (round_ is not None and header.get("round") != round_):
            expected = f"its {kind} message" + ("" if round_ is None else f" for round {round_ + 1}")
            got = header.get("round")
            raise WorkerLost(w, f"expected {expected}, received {header.get('type')}"
                                + (f" for round {got + 1}" if isinstance(got, int) else ""))
        return header, arrays

    def _read(self, w, deadline):
        conn = self.workers[w][1]
        conn.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            if w in self._finished:   # a worker that said goodbye closes its end: nothing more comes from it
                self._selector.unregister(conn)
                return
            header, arrays, size = wire.recv_sized(conn)
        except socket.timeout:
            raise TimeoutError(f"worker {w} did not finish sending a message within {self.timeout:.0f} s "
                               f"(server_timeout)") from None
        except (OSError, wire.WireError) as e:
            raise WorkerLost(w, str(e) or type(e).__name__) from None
        finally:
            try:
                conn.settimeout(None)
            except OSError:
                pass
        if header.get("type") in ("error", "bye"):
            self.bytes["control"] += size
            if header["type"] == "error":
                raise WorkerLost(w, header.get("reason", "it reported an error"))
            last = header.get("round", -2)
            self._finished[w] = f"its last message was for round {last + 1 if type(last) is int else repr(last)}"
            return
        self._inbox[w].append((header, arrays, size))

    def send(self, w, header, arrays=None):
        try:
            self.bytes[_kind(header)] += wire.send(self.workers[w][1], header, arrays)
        except OSError as e:
            raise WorkerLost(w, str(e)) from None

    def send_all(self, header, arrays=None):
        for w in sorted(self.workers):
            self.send(w, header, arrays)

    def abort(self, reason, kind="abort"):
        """Tell every worker to give up (``kind`` "abort": its task fails) or to stop (``kind`` "stop": its task
        ends as if the fit had, for a fit that was interrupted)."""
        for _, conn in self.workers.values():
            try:
                wire.send(conn, {"type": kind, "reason": reason})
            except OSError:
                pass

    def wait_for_byes(self, timeout):
        """Read and drop what the workers still send until each has said goodbye (or is lost), for up to
        ``timeout`` seconds: after a stop, workers that ran ahead finish the round they are in first."""
        deadline = time.monotonic() + timeout
        while self._selector is not None and len(self._finished) < len(self.workers):
            ready = self._selector.select(timeout=max(deadline - time.monotonic(), 0.0))
            if not ready:
                return False
            for key, _ in ready:
                w = key.data
                try:
                    self._read(w, deadline)
                except (WorkerLost, TimeoutError) as e:
                    self._finished[w] = str(e)
                    self._selector.unregister(key.fileobj)
                self._inbox[w].clear()
        return True

    def drop_workers(self):
        for _, conn in self.workers.values():
            conn.close()
        if self._selector is not None:
            self._selector.close()
        self.workers, self._inbox, self._selector, self._finished = {}, {}, None, {}

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.drop_workers()
        while True:   # handshaken connections nobody took
            try:
                self.joined.get_nowait()[1].close()
            except queue.Empty:
                break
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() thread
        except OSError:
            pass
        self.listener.close()


class Control:
    """A worker's end of the control channel: messages it is not waiting for yet are kept in order."""

    def __init__(self, sock):
        self.sock = sock
        self.inbox = collections.deque()
        self.sent = 0

    @classmethod
    def connect(cls, host, port, secret, hello, timeout=60.0):
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wire.respond(sock, secret)
        wire.send(sock, hello)
        sock.settimeout(None)
        return cls(sock)

    def send(self, header, arrays=None):
        self.sent += wire.send(self.sock, header, arrays)

    def check(self):
        """Read what the driver has sent so far (without blocking); raise Aborted on an abort or a closed link."""
        while select.select([self.sock], [], [], 0)[0]:
            self._read()

    def _read(self):
        try:
            header, arrays = wire.recv(self.sock)
        except (OSError, wire.WireError) as e:
            raise Aborted(f"the driver closed the connection: {e}") from None
        if header.get("type") == "abort":
            raise Aborted(f"the driver aborted the fit: {header.get('reason')}")
        if header.get("type") == "stop":
            raise Stopped(f"the driver stopped the fit: {header.get('reason')}")
        self.inbox.append((header, arrays))

    def stopped(self, wait):
        """Whether the driver has stopped the fit, waiting up to ``wait`` seconds for its word (a peer that ended
        because of the stop may be heard of before the driver's own message arrives)."""
        deadline = time.monotonic() + wait
        try:
            while True:
                ready = select.select([self.sock], [], [], max(deadline - time.monotonic(), 0))[0]
                if not ready:
                    return False
                self._read()
        except Stopped:
            return True
        except Aborted:
            return False

    def expect(self, kind, round_=None, timeout=600.0):
        """The next message from the driver, which must be a ``kind`` message (one of them, for a tuple; for
        ``round_`` if given)."""
        if not self.inbox:
            ready = select.select([self.sock], [], [], timeout)[0]
            if not ready:
                raise TimeoutError(f"the driver sent no {kind} message within {timeout:.3g} s (server_timeout)")
            self._read()
        header, arrays = self.inbox.popleft()
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if header.get("type") not in kinds or (round_ is not None and header.get("round") != round_):
            raise RuntimeError(f"expected the driver's {kind} message{'' if round_ is None else f' for round {round_ + 1}'}"
                               f", received {header.get('type')} {header.get('round')}")
        return header, arrays

    def close(self):
        self.sock.close()
