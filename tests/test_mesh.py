"""The TCP all-reduce between hosts' leaders (sparkdl.dist.mesh), without Spark: members are threads, each with
its own listener on 127.0.0.1."""
import os
import socket
import threading
import time

import numpy as np
import pytest

from sparkdl.dist import mesh as mesh_mod
from sparkdl.dist import wire
from sparkdl.dist.control import Aborted, Control
from sparkdl.dist.mesh import Mesh, PeerLost, bounds

SECRET = b"r" * 32
TOKEN = b"t" * 32
WIDTH = 5


def _names(k):
    return [f"member-{i}" for i in range(k)]


def _in_threads(fns, timeout=10.0):
    """Run every fn in its own thread; ([results], [errors]) once all have ended."""
    results, errors = [None] * len(fns), [None] * len(fns)

    def run(i):
        try:
            results[i] = fns[i]()
        except BaseException as e:
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(fns))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0.01))
    assert not any(t.is_alive() for t in threads), f"threads still running after {timeout} s"
    return results, errors


@pytest.fixture
def net():
    """Listeners, sockets and meshes a test opens, closed afterwards even when it fails."""
    class Net:
        def __init__(self):
            self.listeners, self.socks, self.meshes = [], [], []

        def listen(self, k):
            made = [wire.listen("127.0.0.1") for _ in range(k)]
            self.listeners.extend(made)
            return made

        def connect(self, k, timeout=5.0, secret=SECRET, token=TOKEN, controls=None):
            """A mesh of k members, connected concurrently (as separate hosts would)."""
            listeners = self.listen(k)
            addresses = [l.getsockname()[:2] for l in listeners]
            results, errors = _in_threads([
                (lambda r=r: Mesh.connect(r, addresses, listeners[r], secret, token, _names(k), timeout,
                                          controls[r] if controls else None)) for r in range(k)], timeout + 5)
            for r in results:
                if r is not None:
                    self.meshes.append(r)
            for e in errors:
                if e is not None:
                    raise e
            return results

    n = Net()
    try:
        yield n
    finally:
        for r in n.meshes:
            r.close()
        for s in n.socks + n.listeners:
            s.close()


def _allreduce_all(meshes, bufs, rows):
    results, errors = _in_threads([lambda k=k: meshes[k].allreduce(bufs[k], rows[k]) for k in range(len(meshes))])
    for e in errors:
        if e is not None:
            raise e
    return results


def _as_owners_add(bufs):
    """The float32 sum every member must end with: each chunk's owner adds the others' contributions in member
    order, then its own."""
    k, n = len(bufs), bufs[0].size
    out = np.empty_like(bufs[0])
    for c in range(k):
        lo, hi = bounds(c, k, n)
        others = [b[lo:hi] for m, b in enumerate(bufs) if m != c]
        acc = others[0].copy()
        for o in others[1:]:
            acc += o
        out[lo:hi] = acc + bufs[c][lo:hi]
    return out


# ---- all-reduce ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 3, 5])
def test_allreduce_sums_every_buffer_and_passes_every_tally_row(net, k):
    meshes = net.connect(k)
    assert [r.rank for r in meshes] == list(range(k)) and all(r.size == k for r in meshes)
    assert all(r.refused == 0 for r in meshes)
    rng = np.random.default_rng(100 + k)
    for size in (1, k - 1, k + 1, 1000, 4099, 3, 0):
        bufs = [rng.standard_normal(size).astype(np.float32) for _ in range(k)]
        ref = np.sum([b.astype(np.float64) for b in bufs], axis=0)
        in_order = _as_owners_add(bufs)
        rows = [rng.standard_normal(WIDTH) for _ in range(k)]
        got_rows = _allreduce_all(meshes, bufs, rows)
        for member in range(k):
            assert bufs[member].dtype == np.float32 and bufs[member].shape == (size,)
            np.testing.assert_allclose(bufs[member], ref, rtol=1e-5, atol=1e-6, err_msg=f"size {size}")
            assert bufs[member].tobytes() == in_order.tobytes(), f"member {member} differs (size {size})"
            assert len(got_rows[member]) == k
            for j in range(k):                   # every member's row, in member order, exactly
                np.testing.assert_array_equal(got_rows[member][j], rows[j])
        if size >= k:
            assert not np.allclose(bufs[0], ref / k, atol=1e-3)   # a sum, not a mean


@pytest.mark.parametrize("k", [2, 3])
def test_allreduce_with_a_scale_ends_with_the_owners_sums_times_the_scale(net, k):
    meshes = net.connect(k)
    rng = np.random.default_rng(7 + k)
    for size in (4099, 2, 0):
        bufs = [rng.standard_normal(size).astype(np.float32) for _ in range(k)]
        want = _as_owners_add(bufs) * np.float32(1 / k)   # the owner's sum, then one multiply in float32
        results, errors = _in_threads([lambda m=m: meshes[m].allreduce(bufs[m], np.zeros(WIDTH), 1 / k)
                                       for m in range(k)])
        assert errors == [None] * k
        for member in range(k):
            assert bufs[member].tobytes() == want.tobytes(), f"member {member} differs (size {size})"


def test_members_that_come_late_find_the_others_contributions_waiting(net):
    """Members reach the all-reduce at different times (the slowest worker of a round last): the early ones hand
    their contributions over and wait; the sum is the same."""
    k, size = 3, 300_001
    meshes = net.connect(k)
    rng = np.random.default_rng(11)
    bufs = [rng.standard_normal(size).astype(np.float32) for _ in range(k)]
    in_order = _as_owners_add(bufs)

    def member(m, delay):
        time.sleep(delay)
        return meshes[m].allreduce(bufs[m], np.full(WIDTH, m, np.float64))

    results, errors = _in_threads([lambda m=m, d=d: member(m, d) for m, d in zip(range(k), (0.3, 0.0, 0.15))])
    assert errors == [None] * k
    for m in range(k):
        assert bufs[m].tobytes() == in_order.tobytes()
        assert [row[0] for row in results[m]] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("segment", [4, 64, 1000])
def test_chunks_moved_in_many_segments_sum_the_same(net, monkeypatch, segment):
    """Chunks cut into segments (one send each, each added up and passed on as soon as all members sent it): the
    same bytes, the same tally rows, the same byte counts as in one piece."""
    monkeypatch.setattr(mesh_mod, "_SEGMENT", segment)
    k, size = 3, 1001
    meshes = net.connect(k)
    assert len(mesh_mod.segments(*meshes[0].owned(size), 4)) == -(-(size // k * 4) // segment)
    rng = np.random.default_rng(12)
    for _ in range(3):                                   # the receiving threads' buffers are reused
        bufs = [rng.standard_normal(size).astype(np.float32) for _ in range(k)]
        expected = _as_owners_add(bufs)
        before = [(m.sent, m.received) for m in meshes]
        got = _allreduce_all(meshes, bufs, [np.full(WIDTH, m, np.float64) for m in range(k)])
        for m in range(k):
            assert bufs[m].tobytes() == expected.tobytes()
            assert [row[0] for row in got[m]] == [0.0, 1.0, 2.0]
        moved = [(m.sent - b[0], m.received - b[1]) for m, b in zip(meshes, before)]
        assert sum(s for s, _ in moved) == sum(r for _, r in moved) == k * (k - 1) * 8 * WIDTH + 2 * (k - 1) * 4 * size


def test_a_prepared_member_has_the_others_contributions_added_up_before_it_arrives(net, monkeypatch):
    monkeypatch.setattr(mesh_mod, "_SEGMENT", 400)
    k, size = 3, 3000
    meshes = net.connect(k)
    for m in meshes:
        m.prepare(size, np.float32, WIDTH)
    rng = np.random.default_rng(13)
    bufs = [rng.standard_normal(size).astype(np.float32) for _ in range(k)]
    expected = _as_owners_add(bufs)
    seen = {}

    def member(m):
        if m == 0:   # the slowest: the others' contributions came in while it was "computing"
            time.sleep(0.3)
            ahead = meshes[0]._ahead
            seen.update(done=ahead.done.is_set(), summed=ahead.summed, segments=len(ahead.segments))
        return meshes[m].allreduce(bufs[m], np.zeros(WIDTH))

    _, errors = _in_threads([lambda m=m: member(m) for m in range(k)])
    assert errors == [None] * k
    assert seen["done"] and seen["summed"] == seen["segments"] == 10   # 1000 floats in segments of 400 bytes
    for b in bufs:
        assert b.tobytes() == expected.tobytes()


def test_an_allreduce_of_another_size_than_prepared_is_refused(net):
    meshes = net.connect(2)
    meshes[0].prepare(10, np.float32, WIDTH)
    with pytest.raises(ValueError, match="allreduce of 11 float32 elements with tally rows of 5, but prepared for"):
        meshes[0].allreduce(np.ones(11, np.float32), np.zeros(WIDTH))
    with pytest.raises(RuntimeError, match="allgather: an all-reduce was prepared"):
        meshes[0].allgather(np.ones(10, np.float32))


def test_closing_a_member_with_a_prepared_allreduce_ends_its_receiving_thread_at_once(net):
    meshes = net.connect(2)
    meshes[0].prepare(1000, np.float32, WIDTH)
    thread = meshes[0]._receiver.thread
    start = time.monotonic()
    meshes[0].close()
    assert time.monotonic() - start < 0.5
    assert not thread.is_alive()


def test_allreduce_of_float64_after_float32_on_the_same_mesh(net):
    meshes = net.connect(3)
    rng = np.random.default_rng(7)
    for dtype, size in ((np.float32, 10), (np.float64, 1001), (np.float32, 2000)):
        bufs = [rng.standard_normal(size).astype(dtype) for _ in range(3)]
        ref = np.sum([b.astype(np.float64) for b in bufs], axis=0)
        _allreduce_all(meshes, bufs, [np.full(WIDTH, m, np.float64) for m in range(3)])
        for b in bufs:
            assert b.dtype == dtype
            np.testing.assert_allclose(b, ref, rtol=1e-12 if dtype == np.float64 else 1e-5, atol=1e-6)
            assert b.tobytes() == bufs[0].tobytes()


@pytest.mark.parametrize("k", [2, 3, 5])
def test_allreduce_moves_two_k_minus_one_over_k_of_the_buffer(net, k):
    meshes = net.connect(k)
    size = 10_000
    rng = np.random.default_rng(200 + k)
    bufs = [rng.standard_normal(size).astype(np.float32) for _ in range(k)]
    before = [(r.sent, r.received) for r in meshes]
    _allreduce_all(meshes, bufs, [np.zeros(WIDTH) for _ in range(k)])
    ideal = 2 * (k - 1) / k * 4 * size
    tally = (k - 1) * 8 * WIDTH
    sent = [r.sent - b[0] for r, b in zip(meshes, before)]
    received = [r.received - b[1] for r, b in zip(meshes, before)]
    for s in sent:
        assert 0.9 * ideal <= s <= 1.1 * ideal + tally, (s, ideal)
    assert sum(sent) == sum(received) == k * tally + 2 * (k - 1) * 4 * size


def test_allgather_hands_every_owned_range_round(net):
    k = 3
    meshes = net.connect(k)
    rng = np.random.default_rng(5)
    for size in (10, 2, 1000):
        whole = rng.standard_normal(size).astype(np.float32)
        owned = [r.owned(size) for r in meshes]
        covered = sorted(owned)                     # the owned ranges split the buffer
        assert covered[0][0] == 0 and covered[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))
        bufs = []
        for lo, hi in owned:
            b = np.full(size, np.nan, np.float32)
            b[lo:hi] = whole[lo:hi]
            bufs.append(b)
        _, errors = _in_threads([lambda m=m: meshes[m].allgather(bufs[m]) for m in range(k)])
        assert errors == [None] * k
        for b in bufs:
            assert b.tobytes() == whole.tobytes()


def test_owned_is_the_range_summed_at_the_member_after_the_reduce_scatter(net):
    """owned() is a range every member holds summed after an allreduce, and the ranges of the members split the
    buffer: members keeping only theirs and all-gathering end with the whole sum (what a restart from the driver's
    fetched model relies on)."""
    k, size = 3, 10
    meshes = net.connect(k)
    assert [r.owned(9) for r in meshes] == [(0, 3), (3, 6), (6, 9)]
    assert [bounds(c, k, size) for c in range(k)] == [(0, 3), (3, 6), (6, 10)]
    rng = np.random.default_rng(6)
    bufs = [rng.standard_normal(size).astype(np.float32) for _ in range(k)]
    ref = np.sum([b.astype(np.float64) for b in bufs], axis=0)
    # the reduce-scatter half of allreduce, then garbage outside the owned range, then the all-gather
    originals = [b.copy() for b in bufs]
    _allreduce_all(meshes, bufs, [np.zeros(WIDTH)] * k)
    for m, r in enumerate(meshes):
        lo, hi = r.owned(size)
        fresh = np.full(size, np.nan, np.float32)
        fresh[lo:hi] = bufs[m][lo:hi]
        bufs[m] = fresh
    _, errors = _in_threads([lambda m=m: meshes[m].allgather(bufs[m]) for m in range(k)])
    assert errors == [None] * k
    for b in bufs:
        np.testing.assert_allclose(b, ref, rtol=1e-5, atol=1e-6)
    assert not np.allclose(bufs[0], originals[0], atol=1e-3)


# ---- handshake -------------------------------------------------------------------------------------------

def _impostor(address, secret, token, rank):
    """Connect and offer a handshake; returns how it ended."""
    s = socket.create_connection(address, timeout=3)
    try:
        mesh_mod._offer(s, secret, token, rank)
        return "accepted"
    except (ConnectionError, OSError) as e:
        return f"refused: {e}"
    finally:
        s.close()


def _garbage(address):
    s = socket.create_connection(address, timeout=3)
    try:
        s.recv(32)
        s.sendall(os.urandom(68))
        return s.recv(32)    # b"" once closed
    except ConnectionError:
        return b""
    finally:
        s.close()


def test_handshake_refuses_a_wrong_secret_token_or_rank_and_the_right_member_still_connects(net):
    k = 2
    listeners = net.listen(k)
    addresses = [l.getsockname()[:2] for l in listeners]
    meshes = [None, None]
    errors = []

    def member(r):
        try:
            meshes[r] = Mesh.connect(r, addresses, listeners[r], SECRET, TOKEN, _names(k), 5.0)
            net.meshes.append(meshes[r])
        except BaseException as e:
            errors.append(e)

    second = threading.Thread(target=member, args=(1,), daemon=True)
    second.start()                                  # member 1 accepts member 0 on listener 1
    outcomes = [_impostor(addresses[1], b"x" * 32, TOKEN, 0),      # another fit's secret
                _impostor(addresses[1], SECRET, b"u" * 32, 0),     # another attempt of this fit
                _impostor(addresses[1], SECRET, TOKEN, 1),         # not a member that connects here
                _garbage(addresses[1])]
    first = threading.Thread(target=member, args=(0,), daemon=True)
    first.start()
    first.join(8)
    second.join(8)
    assert not first.is_alive() and not second.is_alive() and not errors, errors
    assert all(o.startswith("refused: connection closed during the handshake") for o in outcomes[:3]), outcomes
    assert outcomes[3] == b""
    assert meshes[1].refused == 4 and meshes[0].refused == 0
    bufs = [np.arange(5, dtype=np.float32), np.ones(5, np.float32)]
    got = _allreduce_all(meshes, bufs, [np.zeros(WIDTH), np.ones(WIDTH)])
    np.testing.assert_array_equal(bufs[0], np.arange(1, 6, dtype=np.float32))
    np.testing.assert_array_equal(got[1][0], np.zeros(WIDTH))


def test_the_connecting_side_refuses_an_acceptor_without_the_secret(net):
    """Member 0's next member is a listener that answers the handshake without the secret: member 0 never takes it
    for its peer and gives up with PeerLost."""
    listener, fake = net.listen(2)
    fake.settimeout(0.05)
    stop, answered = threading.Event(), []

    def impostor():   # proves nothing: random bytes for the HMAC
        while not stop.is_set():
            try:
                conn, _ = fake.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.sendall(os.urandom(32))
                    answered.append(len(mesh_mod._recv_exact(conn, 68)))
                    conn.sendall(os.urandom(32))
                except (OSError, ConnectionError):
                    pass

    t = threading.Thread(target=impostor, daemon=True)
    t.start()
    timeout = 0.3
    start = time.monotonic()
    try:
        with pytest.raises(PeerLost, match="mesh member member-1 at .* failed the handshake"):
            Mesh.connect(0, [listener.getsockname()[:2], fake.getsockname()[:2]], listener, SECRET, TOKEN,
                         _names(2), timeout)
    finally:
        stop.set()
        t.join(3)
    assert not t.is_alive()
    assert answered == [68]                          # one try: a failed proof is final, not retried
    assert time.monotonic() - start < 1.0


def _unblock(listener, thread):
    """Accept and close what comes to ``listener`` until ``thread`` ends: a connect() blocked in a handshake there
    (or retrying) goes on."""
    listener.settimeout(0.02)
    deadline = time.monotonic() + 5.0
    while thread.is_alive() and time.monotonic() < deadline:
        try:
            conn, _ = listener.accept()
            conn.close()
        except OSError:
            pass
    thread.join(1.0)


def test_connect_gives_up_when_a_member_never_comes(net):
    """Members 1 and 2 of 3 are there, member 0 (which would connect to both) never comes: both give up after their
    timeout with a PeerLost naming member 0, and connect to each other meanwhile."""
    listeners = net.listen(3)
    addresses = [l.getsockname()[:2] for l in listeners]
    start = time.monotonic()
    results, errors = _in_threads([lambda r=r: Mesh.connect(r, addresses, listeners[r], SECRET, TOKEN, _names(3), 0.4)
                                   for r in (1, 2)])
    assert results == [None, None]
    for e in errors:
        assert isinstance(e, PeerLost), e
        assert "mesh member(s) member-0 did not connect within 0.4 s" in str(e)
    assert time.monotonic() - start < 1.5


def test_a_failed_connect_closes_the_connection_it_had_accepted(net):
    """Member 1 of 3 accepts member 0 (played by this test), then cannot connect to member 2, whose listener turns
    every connection away: it gives up with PeerLost and closes member 0's connection too."""
    listeners = net.listen(3)
    addresses = [l.getsockname()[:2] for l in listeners]
    prev = socket.create_connection(addresses[1], timeout=3)
    net.socks.append(prev)
    outcome = []
    t = threading.Thread(target=lambda: outcome.append(_connect_or_error(1, addresses, listeners[1], 0.2)),
                         daemon=True)
    t.start()
    try:
        mesh_mod._offer(prev, SECRET, TOKEN, 0)          # accepted by member 1
        _unblock(listeners[2], t)                        # member 1 cannot connect to member 2: PeerLost
        assert isinstance(outcome[0], PeerLost), outcome
        assert "mesh member member-2 at" in str(outcome[0])
        prev.settimeout(0.2)
        try:
            assert prev.recv(1) == b""
        except socket.timeout:
            raise AssertionError("member 1 gave up but still holds member 0's connection") from None
    finally:
        _unblock(listeners[2], t)


def _connect_or_error(rank, addresses, listener, timeout):
    try:
        return Mesh.connect(rank, addresses, listener, SECRET, TOKEN, _names(len(addresses)), timeout)
    except BaseException as e:
        return e


def test_connect_keeps_its_deadline_when_the_next_member_never_answers(net):
    listener, silent = net.listen(2)
    outcome = []

    def member():
        try:
            outcome.append(Mesh.connect(0, [listener.getsockname()[:2], silent.getsockname()[:2]], listener, SECRET,
                                        TOKEN, _names(2), 0.2))
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=member, daemon=True)
    t.start()
    try:
        t.join(0.8)                     # the deadline (0.2 s) and some slack
        assert not t.is_alive(), "connect() still running 0.6 s after its deadline"
        assert isinstance(outcome[0], PeerLost)
    finally:
        _unblock(silent, t)
        assert not t.is_alive()


# ---- faults ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,lost", [(2, 1), (3, 1), (3, 0)])
def test_a_lost_member_makes_the_others_fail_fast_naming_it(net, monkeypatch, k, lost):
    monkeypatch.setattr(mesh_mod, "_NAP_S", 10.0)   # only poll() waking on the closed connection is fast enough
    meshes = net.connect(k, timeout=5.0)
    rng = np.random.default_rng(300 + k)
    bufs = [rng.standard_normal(5000).astype(np.float32) for _ in range(k)]
    ended = {}

    def member(m):
        try:
            return meshes[m].allreduce(bufs[m], np.zeros(WIDTH))
        except BaseException:
            ended[m] = time.monotonic()
            meshes[m].close()           # as worker_main does: its own failure reaches the others
            raise

    survivors = [m for m in range(k) if m != lost]
    closer = threading.Timer(0.2, lambda: (ended.__setitem__("close", time.monotonic()), meshes[lost].close()))
    closer.start()
    try:
        _, errors = _in_threads([lambda m=m: member(m) for m in survivors])
    finally:
        closer.join()
    for m, e in zip(survivors, errors):
        assert isinstance(e, PeerLost), (m, e)
        assert ended[m] - ended["close"] < 1.0, f"member {m} took {ended[m] - ended['close']:.2f} s"
    assert any(f"mesh member member-{lost} was lost" in str(e) for e in errors), errors
    for m, e in zip(survivors, errors):
        assert "mesh member member-" in str(e) and "was lost" in str(e)


def test_a_silent_member_is_a_timeout_naming_it(net):
    meshes = net.connect(2, timeout=5.0)
    meshes[0].timeout = 0.3                      # member 1 connected but never takes part
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"mesh member member-1 did not exchange its part within 0\.3 s"):
        meshes[0].allreduce(np.ones(100, np.float32), np.zeros(WIDTH))
    assert 0.3 <= time.monotonic() - start < 1.0


def test_the_drivers_abort_reaches_a_member_waiting_in_the_mesh(net, monkeypatch):
    monkeypatch.setattr(mesh_mod, "_NAP_S", 10.0)   # poll() must wake on the driver's connection too
    driver_end, worker_end = socket.socketpair()
    net.socks.extend((driver_end, worker_end))
    ctl = Control(worker_end)
    meshes = net.connect(2, timeout=5.0, controls=[ctl, None])
    timer = threading.Timer(0.15, lambda: wire.send(driver_end, {"type": "abort", "reason": "stop here"}))
    timer.start()
    start = time.monotonic()
    try:
        with pytest.raises(Aborted, match="stop here"):
            meshes[0].allreduce(np.ones(100, np.float32), np.zeros(WIDTH))   # member 1 stays silent
    finally:
        timer.join()
    assert 0.1 <= time.monotonic() - start < 1.0
