"""The averaging server of barrier mode, Spark-free: workers connect, prove they hold the per-fit secret, say
hello (worker id, stage attempt, rows, host), then send one result per round and wait for the average.

A connection that fails the handshake is closed and counted in ``refused``; it never reaches the fit.
Workers on the server's own host are offered shared memory (sparkdl.train.shm) with their start message: a
region each for their results and one for the average, which the server then writes once for all of them.
"""
import queue
import selectors
import socket
import threading
import time

import numpy as np

from . import shm, wire


class WorkerLost(ConnectionError):
    def __init__(self, worker, reason):
        super().__init__(f"worker {worker} was lost: {reason}")
        self.worker = worker


class AveragingServer:
    def __init__(self, secret, host="127.0.0.1", timeout=600.0, handshake_timeout=10.0, shared_memory=True):
        self.secret, self.timeout, self.handshake_timeout = secret, timeout, handshake_timeout
        self.shared_memory = shared_memory
        self.up, self.down, self.attached, self.unlink_pending = {}, None, set(), False
        self.staging = None
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

    def start(self, workers, header, arrays):
        """Send every worker its start message (``arrays`` in the frame), offering shared memory to those on this
        host; a previous set of workers' regions is dropped."""
        self._drop_regions()
        here = socket.gethostname()
        local = [w for w in sorted(workers) if self.shared_memory and workers[w][0].get("host") == here]
        if local:
            size = shm.size_for(arrays)
            self.down = shm.Region.create(size)
            for w in local if self.down is not None else ():
                region = shm.Region.create(size)
                if region is None:
                    break
                self.up[w] = region
            self.unlink_pending = True
        self.staging = (self.down.views(arrays) if self.down is not None else
                        {k: np.empty_like(a) for k, a in arrays.items() if a is not None})
        for w in sorted(workers):
            offer = {"shm": {"down": self.down.offer(), "up": self.up[w].offer()}} if w in self.up else {}
            self._send(workers, w, {**header, **offer}, arrays)

    def outbox(self):
        """Buffers shaped like the start message's arrays to compute the next message's arrays into: in the
        shared region when there is one, so that ``send_all`` of them copies nothing."""
        return self.staging

    def _drop_regions(self):
        for region in [*self.up.values(), self.down]:
            if region is not None:
                region.close()
        self.up, self.down, self.attached = {}, None, set()

    def gather(self, workers, round_, on_result=None):
        """{worker: (header, arrays, arrival time)} of every worker's result for ``round_``, read in the order
        they arrive, so a fast worker's result is read (and ``on_result(worker, header, arrays)`` run on it)
        while the others are still fitting."""
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
                        header, arrays = wire.recv(conn, region=self.up.get(w))
                    except socket.timeout:
                        raise TimeoutError(f"worker {w} did not finish sending its result for round {round_ + 1} "
                                           f"within {self.timeout:.0f} s (server_timeout)") from None
                    except (OSError, wire.WireError) as e:
                        raise WorkerLost(w, str(e)) from None
                    finally:
                        conn.settimeout(None)
                    if header.get("type") != "round" or header.get("round") != round_:
                        raise WorkerLost(w, f"expected its result for round {round_}, received "
                                            f"{header.get('type')} for round {header.get('round')}")
                    sel.unregister(conn)
                    if header.get("shm") and w in self.up:  # it mapped the regions: it reads the average there
                        self.attached.add(w)
                    results[w] = (header, arrays, time.time())
                    if on_result is not None:
                        on_result(w, header, arrays)
        if self.unlink_pending:  # every worker has answered its offer: the names can go, the mappings stay
            for region in [*self.up.values(), self.down]:
                if region is not None:
                    region.unlink()
            self.unlink_pending = False
        return results

    def send_all(self, workers, header, arrays=None):
        """Send ``header`` and ``arrays`` to every worker; the arrays are written once into the shared region
        for the workers that mapped it."""
        placed = self.down.put(arrays) if arrays and self.attached else ()
        for w in sorted(workers):  # threads measured slower here: the sends compete for the same 2 cores
            if w in self.attached:
                self._send(workers, w, header, placed=placed)
            else:
                self._send(workers, w, header, arrays)

    def _send(self, workers, w, header, arrays=None, placed=()):
        try:
            wire.send(workers[w][1], header, arrays, placed)
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
        self._drop_regions()
        for _, conn in (workers or {}).values():
            conn.close()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() thread
        except OSError:
            pass
        self.listener.close()
