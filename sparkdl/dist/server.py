"""The averaging server of barrier mode, Spark-free: workers connect, prove they hold the per-fit secret, say
hello (worker id, stage attempt, rows), then send one result per round and wait for the average.

A connection that fails the handshake is closed and counted in ``refused``; it never reaches the fit.
"""
import queue
import selectors
import socket
import threading
import time

from . import wire


class WorkerLost(ConnectionError):
    def __init__(self, worker, reason):
        super().__init__(f"worker {worker} was lost: {reason}")
        self.worker = worker


class AveragingServer:
    def __init__(self, secret, host="127.0.0.1", timeout=600.0, handshake_timeout=10.0):
        self.secret, self.timeout, self.handshake_timeout = secret, timeout, handshake_timeout
        self.listener = socket.create_server((host, 0))
        self.host, self.port = self.listener.getsockname()[:2]
        self.joined = queue.Queue()
        self.refused = 0
        self.closed = False
        threading.Thread(target=self._accept, name="sparkdl-averaging-accept", daemon=True).start()

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
                if header.get("type") == "hello" and isinstance(header.get("worker"), int):
                    conn.settimeout(None)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self.joined.put((header, conn))
                    return
        except (OSError, wire.WireError, ValueError):
            pass
        self.refused += 1
        conn.close()

    def wait_for_workers(self, n, min_attempt=0):
        """{worker id: (hello header, socket)} once workers 0..n-1 of attempt >= min_attempt have joined."""
        deadline = time.monotonic() + self.timeout
        workers = {}
        while len(workers) < n:
            try:
                header, conn = self.joined.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise TimeoutError(f"only workers {sorted(workers)} of {n} connected to the averaging server within "
                                   f"{self.timeout:.0f} s (server_timeout)") from None
            w = header["worker"]
            if header.get("attempt", 0) < min_attempt or not 0 <= w < n:
                conn.close()
                continue
            if w in workers:
                workers[w][1].close()  # a newer attempt of the same worker replaces the old one
            workers[w] = (header, conn)
        return workers

    def gather(self, workers, round_, kind="round"):
        """{worker: (header, arrays, arrival time)} of every worker's ``kind`` message for ``round_`` (its result
        by default), read in the order they arrive."""
        deadline = time.monotonic() + self.timeout
        results = {}
        with selectors.DefaultSelector() as sel:
            for w in workers:
                sel.register(workers[w][1], selectors.EVENT_READ, w)
            while len(results) < len(workers):
                ready = sel.select(timeout=max(deadline - time.monotonic(), 0.001))
                if not ready:
                    missing = sorted(set(workers) - set(results))
                    raise TimeoutError(f"workers {missing} sent no result for round {round_ + 1} within "
                                       f"{self.timeout:.0f} s (server_timeout)")
                for key, _ in ready:
                    w = key.data
                    conn = workers[w][1]
                    conn.settimeout(max(deadline - time.monotonic(), 0.001))
                    try:
                        header, arrays = wire.recv(conn)
                    except socket.timeout:
                        raise TimeoutError(f"worker {w} did not finish sending its result for round {round_ + 1} "
                                           f"within {self.timeout:.0f} s (server_timeout)") from None
                    except (OSError, wire.WireError) as e:
                        raise WorkerLost(w, str(e)) from None
                    finally:
                        conn.settimeout(None)
                    if header.get("type") != kind or header.get("round") != round_:
                        raise WorkerLost(w, f"expected its {kind} message for round {round_}, received "
                                            f"{header.get('type')} for round {header.get('round')}")
                    sel.unregister(conn)
                    results[w] = (header, arrays, time.time())
        return results

    def send_all(self, workers, header, arrays=None):
        for w in sorted(workers):  # threads measured slower here: the sends compete for the same 2 cores
            try:
                wire.send(workers[w][1], header, arrays)
            except OSError as e:
                raise WorkerLost(w, str(e)) from None

    def abort(self, workers, reason):
        for _, conn in (workers or {}).values():
            try:
                wire.send(conn, {"type": "abort", "reason": reason})
            except OSError:
                pass

    def close(self, workers=None):
        self.closed = True
        for _, conn in (workers or {}).values():
            conn.close()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() thread
        except OSError:
            pass
        self.listener.close()
