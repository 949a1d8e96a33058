"""Averaging among the workers of one host, without Spark: shared-memory regions, futex waits, HostGroup (the
workers of one host summing their slots in one region; threads with their own mappings stand in for processes)
and training in external buffers (Model.use_buffers / Optimizer.use_buffer)."""
import os
import secrets
import socket
import threading
import time

import numpy as np
import pytest

from sparkdl import optim
from sparkdl.nn import BatchNormalization, Dense, Sequential
from sparkdl.dist import host, shm

needs_shm = pytest.mark.skipif(not os.path.isdir(shm.DIRECTORY), reason="no /dev/shm on this host")


@pytest.fixture
def regions():
    """Regions and blocks a test opens, closed (and unlinked) afterwards even when it fails."""
    opened = []
    yield opened
    for r in reversed(opened):
        r.close()


# ---- Region ----------------------------------------------------------------------------------------------

@needs_shm
def test_region_attach_shares_bytes_both_ways(regions):
    a = shm.Region.create(4096)
    assert a is not None
    regions.append(a)
    assert os.path.basename(a.path).startswith("sparkdl-") and os.path.dirname(a.path) == shm.DIRECTORY
    assert os.stat(a.path).st_mode & 0o777 == 0o600
    va = a.view(np.float32, (4, 8), 128)
    va[...] = np.arange(32, dtype=np.float32).reshape(4, 8)
    b = shm.Region.attach(**a.offer())
    assert b is not None
    regions.append(b)
    assert b.token == a.token and b.size == 4096
    vb = b.view(np.float32, (4, 8), 128)
    np.testing.assert_array_equal(vb, np.arange(32, dtype=np.float32).reshape(4, 8))
    vb[1, 2] = -7.5
    assert va[1, 2] == np.float32(-7.5)
    # views cannot reach the token header or run past the end
    with pytest.raises(ValueError, match="outside the shared region"):
        a.view(np.uint8, (8,), 0)
    with pytest.raises(ValueError, match="outside the shared region"):
        a.view(np.float64, (512,), 64)


@needs_shm
def test_region_attach_refuses_what_was_not_offered(regions, tmp_path):
    a = shm.Region.create(1024)
    assert a is not None
    regions.append(a)
    offer = a.offer()
    other = secrets.token_bytes(16)
    assert other != a.token
    assert shm.Region.attach(offer["path"], offer["size"], other.hex()) is None            # wrong token
    assert shm.Region.attach(offer["path"], offer["size"], "zz" * 16) is None               # not hex
    assert shm.Region.attach(offer["path"], offer["size"], a.token.hex()[:-2]) is None      # short token
    assert shm.Region.attach(offer["path"], offer["size"], None) is None
    assert shm.Region.attach(offer["path"], offer["size"] + 64, offer["token"]) is None     # wrong size
    assert shm.Region.attach(offer["path"], str(offer["size"]), offer["token"]) is None
    assert shm.Region.attach(offer["path"], 64, offer["token"]) is None                     # too small
    # a faithful copy of the region (right name pattern, size and token) outside /dev/shm
    outside = tmp_path / os.path.basename(offer["path"])
    with open(offer["path"], "rb") as f:
        outside.write_bytes(f.read())
    assert outside.stat().st_size == offer["size"]
    assert shm.Region.attach(str(outside), offer["size"], offer["token"]) is None
    # ... and a path that leads to the real file but is not spelled /dev/shm/sparkdl-<32 hex>
    sneaky = os.path.join(shm.DIRECTORY, "..", os.path.basename(shm.DIRECTORY), os.path.basename(offer["path"]))
    assert os.path.exists(sneaky)
    assert shm.Region.attach(sneaky, offer["size"], offer["token"]) is None
    # a real file in /dev/shm, the right size and token, under a malformed name
    bad_name = os.path.join(shm.DIRECTORY, "sparkdl-" + secrets.token_hex(16).upper())
    with open(offer["path"], "rb") as f:
        data = f.read()
    with open(bad_name, "wb") as f:
        f.write(data)
    try:
        assert shm.Region.attach(bad_name, offer["size"], offer["token"]) is None
        assert shm.Region.attach(offer["path"] + "0", offer["size"], offer["token"]) is None
        assert shm.Region.attach(offer["path"][:-1], offer["size"], offer["token"]) is None
    finally:
        os.unlink(bad_name)
    # the genuine offer still works after all of that
    b = shm.Region.attach(**offer)
    assert b is not None
    regions.append(b)


@needs_shm
def test_region_unlink_keeps_mappings_working(regions):
    a = shm.Region.create(2048)
    assert a is not None
    regions.append(a)
    b = shm.Region.attach(**a.offer())
    assert b is not None
    regions.append(b)
    b.unlink()  # only the creator removes the name
    assert os.path.exists(a.path)
    a.unlink()
    assert not os.path.exists(a.path)
    a.unlink()  # twice is harmless
    va, vb = a.view(np.int64, (16,), 64), b.view(np.int64, (16,), 64)
    va[:] = np.arange(16)
    np.testing.assert_array_equal(vb, np.arange(16))
    vb[3] = 99
    assert va[3] == 99
    assert shm.Region.attach(**a.offer()) is None  # the name is gone: no new peer can map it


@needs_shm
def test_region_close_with_live_view_is_safe(regions):
    a = shm.Region.create(1024)
    assert a is not None
    path = a.path
    view = a.view(np.float64, (4,), 64)
    view[:] = [1.0, 2.0, 3.0, 4.0]
    a.close()  # BufferError swallowed: the mapping lives as long as the view
    assert not os.path.exists(path)
    np.testing.assert_array_equal(view, [1.0, 2.0, 3.0, 4.0])
    view[0] = 5.0
    assert view[0] == 5.0
    a.close()  # again, still safe
    del view
    b = shm.Region.create(1024)
    assert b is not None
    b.close()  # no views: the mapping really closes
    assert b.mm.closed and not os.path.exists(b.path)


# ---- futex waits -----------------------------------------------------------------------------------------

needs_futex = pytest.mark.skipif(shm._LIBC is None, reason="no futex syscall here (sleep_until_changed naps instead)")


def _words(regions, n=4):
    region = shm.Region.create(4096)
    if region is None:
        pytest.skip("no room in /dev/shm")
    regions.append(region)
    return region.view(np.int32, (n,), shm.ALIGN)


@needs_shm
def test_sleep_until_changed_returns_at_once_when_the_word_already_differs(regions):
    words = _words(regions)
    words[1] = 5
    start = time.perf_counter()
    shm.sleep_until_changed(shm.address(words, 1), 4, 2.0)
    assert time.perf_counter() - start < 0.2


@needs_shm
@needs_futex
def test_sleep_until_changed_sleeps_without_the_cpu_until_the_timeout(regions):
    words = _words(regions)
    words[2] = 7
    wall, cpu = time.perf_counter(), time.thread_time()
    shm.sleep_until_changed(shm.address(words, 2), 7, 0.3)
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    assert 0.25 <= wall < 1.5
    assert cpu < 0.2 * wall, (cpu, wall)


@needs_shm
@needs_futex
@pytest.mark.parametrize("store", [True, False], ids=["store+wake", "wake-only"])
def test_wake_wakes_a_sleeper_promptly(regions, store):
    words = _words(regions)
    words[3] = 11
    woke = []

    def sleeper():
        shm.sleep_until_changed(shm.address(words, 3), 11, 5.0)
        woke.append(time.perf_counter())

    t = threading.Thread(target=sleeper, daemon=True)
    t.start()
    try:
        time.sleep(0.15)
        assert not woke          # really asleep: nothing changed yet
        if store:
            words[3] = 12
        waking = time.perf_counter()
        shm.wake(shm.address(words, 3))
        t.join(3.0)
        assert woke and woke[0] - waking < 0.5
    finally:
        shm.wake(shm.address(words, 3))
        t.join(3.0)
    assert not t.is_alive()


# ---- HostGroup -------------------------------------------------------------------------------------------

WIDTH = 4


@pytest.fixture
def groups():
    """``groups.create(n_local, size, ...)`` (skips where the host cannot share memory) and ``groups.attach(offer)``;
    every group is closed afterwards, the creators' /dev/shm files unlinked, even when the test fails."""
    made = []

    class Factory:
        @staticmethod
        def create(n_local, size, dtype=np.float32, width=WIDTH):
            if not os.path.isdir(shm.DIRECTORY):
                pytest.skip("no /dev/shm on this host")
            if not shm.ORDERED_STORES:
                pytest.skip("host groups are only made on x86-64 (ordered stores)")
            g = host.HostGroup.create(n_local, size, dtype, width)
            if g is None:
                pytest.skip("no room in /dev/shm")
            made.append(g)
            return g

        @staticmethod
        def attach(offer):
            g = host.HostGroup.attach(offer)
            if g is not None:
                made.append(g)
            return g

    try:
        yield Factory
    finally:
        paths = [g.region.path for g in made]
        for g in reversed(made):
            g.close()
        for p in paths:
            if os.path.exists(p):   # only if a creator did not unlink: never leave a file behind
                os.unlink(p)
                raise AssertionError(f"{p} was left in /dev/shm")


def _members(groups, n_local, size, dtype=np.float32):
    """The creator (worker 0's) and one attached mapping per other worker, as separate processes would have."""
    leader = groups.create(n_local, size, dtype)
    return [leader] + [groups.attach(leader.offer()) for _ in range(n_local - 1)]


def _in_threads(members, fn, timeout=10.0):
    """Run ``fn(group, j)`` for every worker j in its own thread with its own group; returns the results. An error
    aborts the host (so the others stop waiting) and is raised here."""
    results, errors = [None] * len(members), []

    def run(j):
        try:
            results[j] = fn(members[j], j)
        except BaseException as e:
            errors.append(e)
            members[j].abort()

    threads = [threading.Thread(target=run, args=(j,), daemon=True) for j in range(len(members))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0.01))
    if any(t.is_alive() for t in threads):
        members[0].abort()
        for t in threads:
            t.join(5.0)
        raise AssertionError(f"worker threads still running after {timeout} s")
    if errors:
        raise errors[0]
    return results


def _weighted(slots, weights):
    return sum(w * np.asarray(s, np.float64) for s, w in zip(slots, weights) if w)


def test_host_group_attach_maps_the_same_slots(groups):
    a = groups.create(3, 37, np.float32, 5)
    offer = a.offer()
    assert offer["workers"] == 3 and offer["size"] == 37 and offer["dtype"] == "float32" and offer["width"] == 5
    b = groups.attach(offer)
    assert b is not None and b.region.path == a.region.path and b.shares == a.shares
    assert a.shares == [(0, 12), (12, 24), (24, 37)]
    assert list(a.words) == [host._BEFORE] * 7 + [0]                 # done[3], ready[3], mesh, abort
    assert [s.shape for s in b.slots] == [(37,)] * 3 and b.rows.shape == (3, 5) and b.partial.dtype == np.float32
    rng = np.random.default_rng(1)
    for j in range(3):                                               # a's writes are seen through b ...
        a.slots[j][:] = rng.standard_normal(37).astype(np.float32)
        np.testing.assert_array_equal(b.slots[j], a.slots[j])
    b.partial[:] = np.arange(37)                                     # ... and b's through a
    b.rows[2] = [1.5, 2.5, 3.5, 4.5, 5.5]
    b.words[4] = 9
    np.testing.assert_array_equal(a.partial, np.arange(37, dtype=np.float32))
    np.testing.assert_array_equal(a.rows[2], [1.5, 2.5, 3.5, 4.5, 5.5])
    assert a.words[4] == 9
    # no two parts of the layout overlap, and all of them lie inside the region
    views = [a.words, a.rows, a.partial] + a.slots
    spans = sorted((v.__array_interface__["data"][0], v.nbytes) for v in views)
    for (start, n), (nxt, _) in zip(spans, spans[1:]):
        assert start + n <= nxt
    for j in range(3):
        a.slots[j][:] = j + 1
    np.testing.assert_array_equal(b.partial, np.arange(37, dtype=np.float32))   # untouched by the slot writes
    np.testing.assert_array_equal(b.rows[2], [1.5, 2.5, 3.5, 4.5, 5.5])
    assert a.region.size == host.HostGroup.nbytes(3, 37, np.float32, 5)
    # an attached mapping does not unlink; the creator does
    path = a.region.path
    b.close()
    assert os.path.exists(path)
    a.close()
    assert not os.path.exists(path)
    assert groups.attach(offer) is None      # gone: nobody can map it any more


def test_host_group_attach_refuses_junk_offers(groups):
    a = groups.create(2, 100, np.float32, WIDTH)
    good = a.offer()
    region = good["region"]
    junk = [
        None, {}, [], "offer",
        {k: v for k, v in good.items() if k != "region"},
        {k: v for k, v in good.items() if k != "workers"},
        {k: v for k, v in good.items() if k != "dtype"},
        {k: v for k, v in good.items() if k != "width"},
        {k: v for k, v in good.items() if k != "size"},
        dict(good, region={k: v for k, v in region.items() if k != "token"}),
        dict(good, region=dict(region, token=secrets.token_hex(16))),            # wrong token
        dict(good, region=dict(region, extra=1)),
        dict(good, region="x"),
        dict(good, size=1000),                                                   # wrong size
        dict(good, size=10),
        dict(good, workers=3),                                                   # another layout
        dict(good, workers="two"),
        dict(good, dtype="float64"),                                             # wrong dtype
        dict(good, dtype="no-such-dtype"),
        dict(good, dtype="object"),
        dict(good, width=WIDTH + 20),                                            # wrong width
        dict(good, width=None),
    ]
    for offer in junk:
        assert groups.attach(offer) is None, offer
    again = groups.attach(good)   # the genuine offer still maps after all of that
    assert again is not None
    again.slots[1][:] = 3.0
    np.testing.assert_array_equal(a.slots[1], np.full(100, 3.0, np.float32))


def test_host_group_attach_refuses_a_layout_of_the_same_byte_count(groups):
    a = groups.create(3, 37, np.float32, WIDTH)
    good = a.offer()
    accepted = [(k, v) for k, v in (("size", 38), ("dtype", "int32"), ("width", WIDTH + 1))
                if groups.attach(dict(good, **{k: v})) is not None]
    assert accepted == []


def _average_rounds(members, size, rounds, rng):
    """Every worker trains (writes fresh values into its slot), publishes, waits and takes its share of the weighted
    average, for each of ``rounds``; returns the slot values and weights per round and what each worker saw."""
    n_local = len(members)
    data = [[rng.uniform(-1, 1, size).astype(members[0].dtype) for _ in range(n_local)] for _ in rounds]
    weights = []
    for _ in rounds:
        n = rng.integers(1, 100, n_local)
        weights.append(list(n / n.sum()))
    rows = [[rng.standard_normal(WIDTH) for _ in range(n_local)] for _ in rounds]

    def worker(g, j):
        seen = []
        for k, rnd in enumerate(rounds):
            g.slots[j][:] = data[k][j]
            g.publish(j, rnd, rows[k][j])
            g.wait_published(rnd, 5.0)
            seen_rows = g.rows.copy()
            g.average_shares(j, rnd, weights[k], 5.0)
            seen.append((seen_rows, g.slots[j].copy()))
        return seen

    return data, weights, rows, _in_threads(members, worker)


@pytest.mark.parametrize("n_local,dtype", [(2, np.float32), (3, np.float32), (2, np.float64)])
def test_average_shares_leave_every_slot_with_the_weighted_average(groups, n_local, dtype):
    size = 1001   # not divisible by 2 or 3: the shares differ in length
    members = _members(groups, n_local, size, dtype)
    rng = np.random.default_rng(20 + n_local)
    rounds = [7, 8]
    data, weights, rows, seen = _average_rounds(members, size, rounds, rng)
    for k in range(len(rounds)):
        ref = _weighted(data[k], weights[k])
        assert not np.allclose(ref, np.mean(data[k], axis=0), atol=1e-3)     # the weights matter
        for j in range(n_local):
            seen_rows, slot = seen[j][k]
            np.testing.assert_array_equal(seen_rows, np.stack(rows[k][:n_local]))   # every worker saw every row
            assert slot.dtype == dtype
            np.testing.assert_allclose(slot, ref, rtol=1e-6, atol=1e-6)
            assert slot.tobytes() == seen[0][k][1].tobytes()                   # bitwise the same everywhere
    final = [np.array(s) for s in members[0].slots]
    for s in final:
        assert s.tobytes() == final[0].tobytes()
    np.testing.assert_allclose(final[0], _weighted(data[-1], weights[-1]), rtol=1e-6, atol=1e-6)
    assert list(members[0].words[:2 * n_local]) == [rounds[-1]] * (2 * n_local)


def test_a_worker_of_weight_zero_adds_nothing_even_with_inf_and_nan(groups):
    size = 50
    members = _members(groups, 3, size)
    rng = np.random.default_rng(31)
    data = [rng.uniform(-1, 1, size).astype(np.float32) for _ in range(3)]
    data[1] = np.tile(np.array([np.inf, np.nan, -np.inf, 1e38], np.float32), size // 4 + 1)[:size]
    weights = [0.3, 0.0, 0.7]

    def worker(g, j):
        g.slots[j][:] = data[j]
        g.publish(j, 0, np.zeros(WIDTH))
        g.wait_published(0, 5.0)
        g.average_shares(j, 0, weights, 5.0)
        return g.slots[j].copy()

    out = _in_threads(members, worker)
    ref = 0.3 * data[0].astype(np.float64) + 0.7 * data[2].astype(np.float64)
    for slot in out:
        assert np.isfinite(slot).all()
        np.testing.assert_allclose(slot, ref, rtol=1e-6, atol=1e-6)
        assert slot.tobytes() == out[0].tobytes()


def test_partial_shares_sum_into_p_and_non_leaders_wait_for_the_mesh(groups):
    size, rnd = 1001, 4
    members = _members(groups, 3, size)
    rng = np.random.default_rng(41)
    data = [rng.uniform(-1, 1, size).astype(np.float32) for _ in range(3)]
    n = rng.integers(1, 100, 5)               # two more workers on other hosts hold the rest of the weight
    weights = list(n[:3] / n.sum())
    mesh_s = 0.2
    times = {}

    def worker(g, j):
        g.slots[j][:] = data[j]
        g.publish(j, rnd, np.full(WIDTH, j, np.float64))
        g.wait_published(rnd, 5.0)
        g.partial_shares(j, rnd, weights, 5.0)
        if j == 0:
            p = g.partial.copy()          # P is whole once partial_shares returns
            time.sleep(mesh_s)            # the leader all-reduces P with the other hosts ...
            g.partial *= 3                # ... which changes it
            times["done"] = time.perf_counter()
            g.mesh_done(rnd)
        else:
            g.wait_mesh(rnd, 5.0)
            times[j] = time.perf_counter()
            p = None
        np.copyto(g.slots[j], g.partial)
        return p

    start = time.perf_counter()
    p = _in_threads(members, worker)[0]
    ref = _weighted(data, weights)
    np.testing.assert_allclose(p, ref, rtol=1e-6, atol=1e-6)
    assert not np.allclose(p, _weighted(data, np.array(weights) / sum(weights)), atol=1e-3)   # a sum, not the mean
    for j in (1, 2):
        assert times[j] >= times["done"], "a non-leader returned from wait_mesh before mesh_done"
        assert times[j] - start >= mesh_s
    for slot in members[0].slots:
        assert slot.tobytes() == (p * np.float32(3)).tobytes()
    # the mesh word holds the last all-reduced round: older rounds do not wait, newer ones do
    start = time.perf_counter()
    members[1].wait_mesh(rnd, 0.1)
    members[2].wait_mesh(rnd - 3, 0.1)
    assert time.perf_counter() - start < 0.1
    with pytest.raises(TimeoutError, match=f"did not finish averaging round {rnd + 2} "):
        members[1].wait_mesh(rnd + 1, 0.1)


needs_two_cpus = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                                    reason="binding workers to CPUs needs Linux and two CPUs")


@needs_two_cpus
def test_bind_gives_each_worker_a_block_of_the_cpus_and_unbind_gives_them_back(groups):
    allowed = sorted(os.sched_getaffinity(0))
    members = _members(groups, 2, 10)

    def worker(g, j):
        g.bind(j)
        bound = os.sched_getaffinity(0)
        g.unbind()
        return bound, os.sched_getaffinity(0), int(g.threads[j]), threading.get_native_id()

    got = _in_threads(members, worker)
    half = len(allowed) // 2
    assert got[0][0] == set(allowed[:half]) and got[1][0] == set(allowed[half:])
    for bound, after, recorded, tid in got:
        assert after == set(allowed) and recorded == tid


@needs_two_cpus
@pytest.mark.parametrize("cpus", [True, False])
def test_bind_holds_blas_to_the_workers_share_of_the_cpus(groups, cpus):
    """More BLAS threads than its CPUs would spin on the other workers' CPUs (OPENBLAS_NUM_THREADS=2 and two bound
    workers on two cores: a batch-64 step took 8-15 ms, not 0.3 ms); unbind gives BLAS its threads back."""
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    if not blas():
        pytest.skip("no BLAS library that threadpoolctl can see")
    members, n = _members(groups, 2, 10), len(os.sched_getaffinity(0))
    with threadpoolctl.threadpool_limits(n, "blas"):
        before = blas()
        members[0].bind(0, cpus=cpus)   # bound or not, each of the host's 2 workers gets half the CPUs
        try:
            assert blas() == [n // 2] * len(before)
        finally:
            members[0].unbind()
        assert blas() == before == [n] * len(before)


@needs_two_cpus
def test_more_workers_than_cpus_are_not_bound_but_still_name_their_threads(groups):
    allowed = os.sched_getaffinity(0)
    members = _members(groups, len(allowed) + 1, 10)
    got = _in_threads(members, lambda g, j: (g.bind(j), os.sched_getaffinity(0), int(g.threads[j]))[1:])
    assert all(cpus == allowed and tid > 0 for cpus, tid in got)
    got = _in_threads(members[:2], lambda g, j: (g.bind(j, cpus=False), os.sched_getaffinity(0))[1])
    assert got == [allowed, allowed]


@needs_two_cpus
@pytest.mark.parametrize("hand_over_s", [host.HAND_OVER_S, 10.0])
def test_a_worker_waiting_for_a_slower_one_hands_it_its_cpus(groups, monkeypatch, hand_over_s):
    """Worker 1 is 0.2 s slow to publish: worker 0, after waiting HAND_OVER_S, swaps CPU blocks with it (the slower
    one goes on on the CPUs the waiter leaves idle); a wait shorter than HAND_OVER_S swaps nothing."""
    monkeypatch.setattr(host, "HAND_OVER_S", hand_over_s)
    allowed = sorted(os.sched_getaffinity(0))
    half = len(allowed) // 2
    blocks = [set(allowed[:half]), set(allowed[half:])]
    members = _members(groups, 2, 10)
    seen, bound = {}, threading.Barrier(2)

    def worker(g, j):
        g.bind(j)
        bound.wait(5.0)   # as in a fit: every worker of the host is bound before its hello, so before round 1
        try:
            if j == 1:
                time.sleep(0.2)
                seen["slow, before publishing"] = os.sched_getaffinity(0)
            g.publish(j, 0, np.zeros(WIDTH))
            g.wait_published(0, 5.0)
            seen[j] = os.sched_getaffinity(0)
        finally:
            g.unbind()
        seen[(j, "after")] = os.sched_getaffinity(0)

    _in_threads(members, worker)
    swapped = hand_over_s < 0.2
    assert seen["slow, before publishing"] == blocks[0 if swapped else 1]   # handed over while still training
    assert seen[0] == blocks[1 if swapped else 0] and seen[1] == blocks[0 if swapped else 1]
    assert seen[(0, "after")] == seen[(1, "after")] == set(allowed)


def test_partial_shares_of_a_host_whose_workers_all_idled_are_zero(groups):
    members = _members(groups, 2, 30)
    for j, g in enumerate(members):
        g.slots[j][:] = np.nan
        g.partial[:] = 5.0

    def worker(g, j):
        g.publish(j, 0, np.zeros(WIDTH))
        g.wait_published(0, 5.0)
        g.partial_shares(j, 0, [0.0, 0.0], 5.0)

    _in_threads(members, worker)
    np.testing.assert_array_equal(members[0].partial, np.zeros(30, np.float32))


@pytest.mark.parametrize("what", ["publish", "mesh_done"])
def test_a_store_wakes_a_sleeping_waiter(groups, monkeypatch, what):
    """With naps of 10 s, a waiter that returns promptly was woken by the store's futex wake."""
    monkeypatch.setattr(host, "_NAP_S", 10.0)
    a, b = _members(groups, 2, 10)
    a.publish(0, 3, np.zeros(WIDTH))
    returned = []

    def waiter():
        try:
            if what == "publish":
                b.wait_published(3, 20.0)
            else:
                b.wait_mesh(3, 20.0)
            returned.append(time.perf_counter())
        except BaseException as e:
            returned.append(e)

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    try:
        time.sleep(0.15)
        assert not returned
        stored = time.perf_counter()
        if what == "publish":
            a.publish(1, 3, np.ones(WIDTH))
        else:
            a.mesh_done(3)
        t.join(3.0)
        assert returned and not isinstance(returned[0], BaseException), returned
        assert returned[0] - stored < 0.5
    finally:
        a.abort()
        t.join(3.0)
    assert not t.is_alive()


def test_abort_from_another_thread_stops_a_waiting_worker_quickly(groups, monkeypatch):
    monkeypatch.setattr(host, "_NAP_S", 10.0)    # only the abort's wake can end the sleep in time
    a, b = _members(groups, 2, 10)
    a.publish(0, 3, np.zeros(WIDTH))           # worker 1 never publishes
    outcome = []

    def waiter():
        try:
            b.wait_published(3, 20.0)
            outcome.append("returned")
        except BaseException as e:
            outcome.append((e, time.perf_counter()))

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    try:
        time.sleep(0.15)
        assert not outcome
        aborting = time.perf_counter()
        a.abort()
        t.join(3.0)
        assert outcome, "still waiting 3 s after the abort"
        error, when = outcome[0]
        assert isinstance(error, host.Aborted) and "aborted" in str(error)
        assert when - aborting < 1.0
    finally:
        a.abort()
        t.join(3.0)
    assert not t.is_alive()
    # the abort stays: any later wait of any worker of the host fails at once instead of timing out
    start = time.perf_counter()
    with pytest.raises(host.Aborted):
        a.wait_mesh(5, 5.0)
    assert time.perf_counter() - start < 0.5


def test_a_wait_with_nobody_publishing_times_out_naming_the_round_and_sleeps(groups):
    a, b = _members(groups, 2, 10)
    a.publish(0, 2, np.zeros(WIDTH))           # worker 1 has not published round 2 (the fit's 3rd)
    timeout = 0.5
    wall, cpu = time.perf_counter(), time.thread_time()
    with pytest.raises(TimeoutError, match=r"worker 1 of this host has not trained round 3 within 0\.5 s"):
        b.wait_published(2, timeout)
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    assert timeout <= wall < timeout + 0.7
    assert cpu < 0.2 * wall, f"the wait used {cpu:.3f} s of CPU in {wall:.3f} s"


class _FailingControl:
    """A driver connection whose check() raises on its ``at``-th call."""

    class Gone(RuntimeError):
        pass

    def __init__(self, at):
        self.at, self.calls = at, 0

    def check(self):
        self.calls += 1
        if self.calls >= self.at:
            raise self.Gone("the driver went away")


@pytest.mark.parametrize("wait", ["wait_published", "average_shares", "wait_mesh"])
def test_a_failing_driver_connection_ends_a_wait(groups, wait):
    a, b = _members(groups, 2, 10)
    control = _FailingControl(at=2)
    calls = {"wait_published": lambda: b.wait_published(0, 10.0, control),
             "average_shares": lambda: b.average_shares(1, 0, [0.5, 0.5], 10.0, control),
             "wait_mesh": lambda: b.wait_mesh(0, 10.0, control)}
    start = time.perf_counter()
    with pytest.raises(_FailingControl.Gone, match="went away"):
        calls[wait]()
    assert control.calls == 2                      # checked between naps, not only at the deadline
    assert time.perf_counter() - start < 1.0


def test_host_key_is_the_hostname_and_the_dev_shm_identity(monkeypatch):
    real_stat = os.stat
    key = host.host_key()
    assert key.split("|")[0] == socket.gethostname()

    def identity(dev, ino):
        def stat(path, *args, **kwargs):
            if path == shm.DIRECTORY:
                if dev is None:
                    raise FileNotFoundError(path)
                return os.stat_result((0o40777, ino, dev, 2, 0, 0, 0, 0, 0, 0))
            return real_stat(path, *args, **kwargs)
        return stat

    keys = {}
    for ident in ((10, 20), (10, 21), (11, 20), (None, None)):
        monkeypatch.setattr(os, "stat", identity(*ident))
        keys[ident] = host.host_key()
        assert keys[ident] == host.host_key()          # stable
        assert keys[ident].startswith(socket.gethostname() + "|")
    assert len(set(keys.values())) == 4
    assert keys[(10, 20)] == f"{socket.gethostname()}|10:20"
    assert keys[(None, None)].endswith("|none")
    monkeypatch.setattr(os, "stat", identity(10, 20))
    monkeypatch.setattr(socket, "gethostname", lambda: "another-host")
    assert host.host_key() == "another-host|10:20"
    monkeypatch.undo()
    assert host.host_key() == key


# ---- training in external buffers ------------------------------------------------------------------------

def _model():
    model = Sequential([Dense(8, activation="relu"), BatchNormalization(), Dense(3)], input_shape=(5,), seed=0)
    return model.compile(optim.Adam(0.01), "sparse_categorical_crossentropy")


def _batches():
    rng = np.random.default_rng(9)
    return [(rng.standard_normal((16, 5)).astype(np.float32), rng.integers(0, 3, 16)) for _ in range(4)]


def test_model_trains_in_external_buffers():
    model, twin = _model(), _model()
    np.testing.assert_array_equal(model.get_flat_params(), twin.get_flat_params())
    assert model.state.size > 0  # BatchNormalization's moving statistics
    params, state = model.get_flat_params(), model.get_flat_state()
    opt = model.optimizer.get_state()["buffer"]
    start = params.copy(), state.copy(), opt.copy()
    model.use_buffers(params, state)
    model.optimizer.use_buffer(opt)
    assert model.params is params and model.state is state and model.optimizer.state_buffer is opt
    for x, y in _batches():
        model.train_on_batch(x, y)
        twin.train_on_batch(x, y)
    for ext, before in zip((params, state, opt), start):
        assert not np.array_equal(ext, before)
    np.testing.assert_array_equal(params, model.get_flat_params())
    np.testing.assert_array_equal(state, model.get_flat_state())
    np.testing.assert_array_equal(opt, model.optimizer.get_state()["buffer"])
    np.testing.assert_array_equal(params, twin.get_flat_params())
    np.testing.assert_array_equal(state, twin.get_flat_state())
    np.testing.assert_array_equal(opt, twin.optimizer.get_state()["buffer"])
    # the layers read the external buffer: writing it changes the predictions
    x = _batches()[0][0]
    before = model.forward(x).copy()
    params *= 0.5
    assert not np.allclose(model.forward(x), before)


def test_use_buffers_checks_shape_and_dtype():
    model = _model()
    p, s = model.get_flat_params(), model.get_flat_state()
    with pytest.raises(ValueError, match="params"):
        model.use_buffers(p[:-1], s)
    with pytest.raises(ValueError, match="params"):
        model.use_buffers(p.astype(np.float64), s)
    with pytest.raises(ValueError, match="state"):
        model.use_buffers(p, s.astype(np.float64))
    with pytest.raises(ValueError, match="state"):
        model.use_buffers(p, None)
    with pytest.raises(ValueError, match="state"):
        model.use_buffers(p, np.zeros(s.size + 1, np.float32))
    opt = model.optimizer.get_state()["buffer"]
    with pytest.raises(ValueError, match="use_buffer"):
        model.optimizer.use_buffer(opt[:-1])
    with pytest.raises(ValueError, match="use_buffer"):
        model.optimizer.use_buffer(opt.astype(np.float64))
    # nothing was re-pointed by the refused calls
    assert model.params is not p and model.state is not s and model.optimizer.state_buffer is not opt
    with pytest.raises(RuntimeError, match="build"):
        optim.Adam(0.01).use_buffer(opt)
