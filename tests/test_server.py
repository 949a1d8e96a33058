"""The barrier-mode averaging server and its wire format, without Spark."""
import socket
import threading

import numpy as np
import pytest

from sparkdl.dist import wire
from sparkdl.dist.server import AveragingServer, WorkerLost

SECRET = b"s" * 32


def pair():
    a, b = socket.socketpair()
    return a, b


def test_frames_round_trip_arrays_and_refuse_garbage():
    a, b = pair()
    arrays = {"params": np.arange(5, dtype=np.float32), "opt": np.ones((2, 3)), "none": None}
    wire.send(a, {"type": "round", "round": 3}, arrays)
    header, got = wire.recv(b)
    assert header == {"type": "round", "round": 3} and sorted(got) == ["opt", "params"]
    np.testing.assert_array_equal(got["params"], arrays["params"])
    assert got["opt"].dtype == np.float64 and got["opt"].shape == (2, 3)
    a.sendall(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(wire.WireError, match="bad magic"):
        wire.recv(b)
    with pytest.raises(TypeError, match="dtype object"):
        wire.send(a, {}, {"x": np.array([object()])})
    c, d = pair()
    wire.send(c, {"type": "round"}, {"params": np.zeros(100, np.float32)})
    c.close()
    d.recv(20)  # part of the frame, then the peer is gone
    with pytest.raises(wire.WireError):
        wire.recv(d)


def _client(server, worker, secret=SECRET, rows=10, attempt=0):
    s = socket.create_connection((server.host, server.port))
    wire.respond(s, secret)
    wire.send(s, {"type": "hello", "worker": worker, "attempt": attempt, "rows": rows})
    return s


def closed_by_server(sock):
    sock.settimeout(3)
    try:
        while sock.recv(100):
            pass
        return True
    except ConnectionResetError:
        return True


def test_handshake_refuses_wrong_secret_and_silent_peers():
    server = AveragingServer(SECRET, timeout=5.0, handshake_timeout=0.5)
    try:
        bad = _client(server, 0, secret=b"x" * 32)
        silent = socket.create_connection((server.host, server.port))
        good0, good1 = _client(server, 0), _client(server, 1)
        workers = server.wait_for_workers(2)
        assert sorted(workers) == [0, 1] and workers[1][0]["rows"] == 10
        assert closed_by_server(bad)
        silent.settimeout(3)
        assert len(silent.recv(32)) == 32        # the nonce, then nothing from us: closed after the timeout
        assert closed_by_server(silent)
        assert server.refused == 2
        # a full round: both results, the average goes back
        for s, w in ((good0, 0), (good1, 1)):
            wire.send(s, {"type": "round", "round": 0, "n": 1}, {"params": np.full(3, w, np.float32)})
        results = server.gather(workers, 0)
        assert [results[w][0]["n"] for w in (0, 1)] == [1, 1]
        server.send_all(workers, {"type": "params", "round": 1}, {"params": np.full(3, 0.5, np.float32)})
        assert wire.recv(good1)[0]["round"] == 1
        good0.close()
        with pytest.raises(WorkerLost, match="worker 0 was lost"):
            server.gather(workers, 1)
    finally:
        server.close()


def test_missing_workers_time_out_with_their_names():
    server = AveragingServer(SECRET, timeout=0.5)
    try:
        c = _client(server, 1)
        with pytest.raises(TimeoutError, match=r"only workers \[1\] of 2 connected"):
            server.wait_for_workers(2)
        c.close()
    finally:
        server.close()


def test_a_newer_attempt_replaces_an_older_one():
    server = AveragingServer(SECRET, timeout=5.0)
    try:
        old = _client(server, 0, attempt=5)
        stale = _client(server, 1, attempt=2)   # from before the retry: ignored
        new1 = _client(server, 1, attempt=9)
        workers = server.wait_for_workers(2, min_attempt=5)
        assert workers[1][0]["attempt"] == 9 and workers[0][0]["attempt"] == 5
        for s in (old, stale, new1):
            s.close()
    finally:
        server.close()
    threading.Event().wait(0.01)
