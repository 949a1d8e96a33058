"""Same-host peer averaging without Spark: shared-memory regions, the peer control block and its barrier,
the Averager rule, and training in external buffers (Model.use_buffers / Optimizer.use_buffer)."""
import os
import secrets
import socket
import threading
import time

import numpy as np
import pytest

from sparkdl import optim
from sparkdl.nn import BatchNormalization, Dense, Sequential
from sparkdl.dist import peers, schedule, shm
from sparkdl.dist.averaging import Averager

needs_shm = pytest.mark.skipif(not os.path.isdir(shm.DIRECTORY), reason="no /dev/shm on this host")
needs_ordered = pytest.mark.skipif(not peers.ORDERED_STORES, reason="peer blocks are only attached on x86-64")


@pytest.fixture
def regions():
    """Regions and blocks a test opens, closed (and unlinked) afterwards even when it fails."""
    opened = []
    yield opened
    for r in reversed(opened):
        r.close()


def _block(regions, n_workers=2, first_round=0, last_round=10, arrays=None):
    if arrays is None:
        arrays = {"params": np.zeros(10, np.float32), "state": None, "opt": np.zeros(20, np.float32)}
    block = peers.PeerBlock.create(n_workers, arrays, first_round, last_round)
    if block is None:
        pytest.skip("no room in /dev/shm")
    regions.append(block)
    return block


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


# ---- PeerBlock -------------------------------------------------------------------------------------------

@needs_shm
@needs_ordered
def test_peer_block_attach_aliases_the_creators_slots(regions):
    block = _block(regions, first_round=3, last_round=8)
    assert [e[0] for e in block.like] == ["params", "opt"]   # the None part takes no room
    assert list(block.done) == [2, 2] and block.consumed[0] == 2 and block.stop[0] == 8 and block.abort[0] == 0
    other = peers.PeerBlock.attach(block.offer())
    assert other is not None
    regions.append(other)
    assert other.n_workers == 2 and other.like == block.like
    assert other.slot(1, 4)["opt"].shape == (20,) and other.slot(1, 4)["opt"].dtype == np.float32
    block.slot(1, 4)["opt"][:] = np.arange(20, dtype=np.float32)
    np.testing.assert_array_equal(other.slot(1, 4)["opt"], np.arange(20, dtype=np.float32))
    other.slot(0, 5)["params"][7] = 42.0
    assert block.slot(0, 5)["params"][7] == 42.0
    other.done[1] = 4
    other.consumed[0] = 3
    assert block.done[1] == 4 and block.consumed[0] == 3
    # rounds reuse slots modulo 3; different workers and rounds do not share memory
    assert block.slot(1, 4) is block.slot(1, 7)
    assert not np.shares_memory(block.slot(1, 4)["opt"], block.slot(1, 5)["opt"])
    assert not np.shares_memory(block.slot(1, 4)["opt"], block.slot(0, 4)["opt"])
    assert all(s is block.slot(w, 5) for w, s in enumerate(block.sources(5)))


@needs_shm
def test_peer_block_slots_do_not_overlap(regions):
    block = _block(regions)
    for w in range(2):
        for r in range(peers.SLOTS):
            for k, name in enumerate(("params", "opt")):
                block.slot(w, r)[name][:] = 100 * w + 10 * r + k
    for w in range(2):
        for r in range(peers.SLOTS):
            for k, name in enumerate(("params", "opt")):
                np.testing.assert_array_equal(block.slot(w, r)[name], 100 * w + 10 * r + k, err_msg=f"{w} {r} {name}")
    # the control words are intact too
    assert list(block.done) == [-1, -1] and block.consumed[0] == -1 and block.stop[0] == 10 and block.abort[0] == 0
    # every view lies inside the region, after the token header, and none overlap
    spans = sorted((a.__array_interface__["data"][0], a.nbytes) for pair in block.slots for s in pair
                   for a in s.values())
    for (start, n), (nxt, _) in zip(spans, spans[1:]):
        assert start + n <= nxt
    assert block.size(2, block.like) <= block.region.size


@needs_shm
@needs_ordered
def test_peer_block_attach_refuses_junk(regions):
    block = _block(regions)
    good = block.offer()
    bad_region = dict(good["region"], token=secrets.token_hex(16))
    for junk in (None, {}, [], "offer", {"region": {}}, {"region": "x", "workers": 2, "like": good["like"]},
                 {"region": bad_region, "workers": 2, "like": good["like"]},
                 {"region": dict(good["region"], path="/tmp/sparkdl-" + "0" * 32), "workers": 2, "like": good["like"]},
                 {"region": dict(good["region"], extra=1), "workers": 2, "like": good["like"]},
                 {"region": good["region"], "like": good["like"]},
                 {"region": good["region"], "workers": "two", "like": good["like"]},
                 {"region": good["region"], "workers": 2, "like": [["params", "float32", [10 ** 6]]]}):
        assert peers.PeerBlock.attach(junk) is None, junk
    again = peers.PeerBlock.attach(good)
    assert again is not None
    regions.append(again)


# ---- PeerBlock.wait --------------------------------------------------------------------------------------

def _later(delay, fn):
    t = threading.Timer(delay, fn)
    t.start()
    return t


@needs_shm
def test_wait_blocks_until_every_worker_published_and_the_driver_consumed(regions):
    block = _block(regions, first_round=0, last_round=10)
    block.done[:] = [3, 3]
    block.consumed[0] = 2
    assert block.wait(3, 1.0) is True           # already satisfied: no waiting
    block.done[0] = 4                            # worker 1 has not published round 4 yet
    block.consumed[0] = 3

    _assert_waits_for(block, 4, lambda: block.done.__setitem__(1, 4))
    # everyone published round 5, but the driver has not taken round 4: the slots of round 6 are still its
    block.done[:] = [5, 5]
    block.consumed[0] = 3
    _assert_waits_for(block, 5, lambda: block.consumed.__setitem__(0, 4))


def _assert_waits_for(block, round_, action):
    """wait(round_) blocks until ``action`` (run by a timer thread after 0.15 s) makes the round ready."""
    t = _later(0.15, action)
    start = time.monotonic()
    assert block.wait(round_, 5.0) is True
    waited = time.monotonic() - start
    t.join()
    assert 0.1 <= waited < 3.0


@needs_shm
def test_wait_stop_abort_and_timeout(regions):
    block = _block(regions, first_round=0, last_round=4)
    assert block.wait(4, 0.2) is False   # round >= stop: no waiting at all
    assert block.wait(9, 0.2) is False
    block.done[:] = [1, -1]              # worker 1 never publishes round 1
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"workers \[1\]"):
        block.wait(1, 0.2)
    assert 0.2 <= time.monotonic() - start < 3.0
    block.done[:] = [2, 2]
    with pytest.raises(TimeoutError):     # every worker published, but consumed = -1 < round - 1 = 1
        block.wait(2, 0.2)
    block.consumed[0] = 1
    assert block.wait(2, 0.2) is True
    block.abort[0] = 1                   # abort wins even over a round that is ready
    with pytest.raises(peers.Aborted):
        block.wait(2, 0.2)
    block.abort[0] = 0
    block.done[:] = [3, 0]

    def abort():
        block.abort[0] = 1

    t = _later(0.1, abort)
    with pytest.raises(peers.Aborted, match="aborted"):
        block.wait(3, 5.0)
    t.join()


@needs_shm
def test_wait_aborts_when_the_socket_becomes_readable(regions):
    block = _block(regions)
    block.done[:] = [0, -1]
    for how in ("byte", "close"):
        a, b = socket.socketpair()
        try:
            t = _later(0.1, (lambda: b.sendall(b"x")) if how == "byte" else b.close)
            start = time.monotonic()
            with pytest.raises(peers.Aborted, match="closed the connection"):
                block.wait(0, 5.0, sock=a)
            assert time.monotonic() - start < 3.0, how
            t.join()
        finally:
            a.close()
            b.close()
    # a quiet socket is no reason to give up
    a, b = socket.socketpair()
    try:
        with pytest.raises(TimeoutError):
            block.wait(0, 0.2, sock=a)
    finally:
        a.close()
        b.close()


# ---- the protocol: two workers, five rounds ----------------------------------------------------------------

SHARDS, BATCH, FREQ, ROUNDS = (300, 170), 32, 2, 5


def _deltas(worker, round_, shapes):
    rng = np.random.default_rng([11, worker, round_])
    return {name: (0.1 * rng.standard_normal(shape)).astype(np.float32) for name, shape in shapes.items()}


@needs_shm
def test_two_workers_average_through_the_block(regions):
    rng = np.random.default_rng(5)
    init = {"params": rng.uniform(-1, 1, 10).astype(np.float32), "opt": rng.uniform(0, 1, 20).astype(np.float32)}
    shapes = {k: v.shape for k, v in init.items()}
    assert schedule.rounds_per_epoch(SHARDS, BATCH, FREQ) == ROUNDS
    ns = [[schedule.round_examples(n, BATCH, FREQ, g) for n in SHARDS] for g in range(ROUNDS)]
    assert ns[3][1] == 0 and ns[4] == [44, 0]  # the small shard sits the last rounds out
    block = _block(regions, first_round=0, last_round=ROUNDS,
                   arrays={"params": init["params"], "state": None, "opt": init["opt"]})
    for w in range(2):
        for name, a in init.items():
            block.slot(w, 0)[name][:] = a
    errors, finished = [], []

    def worker(w):
        try:
            average = Averager()
            for g in range(ROUNDS):
                mine = block.slot(w, g)
                for name, d in _deltas(w, g, shapes).items():   # "training" in place in this round's slot
                    mine[name] += d
                block.done[w] = g
                assert block.wait(g, 5.0) is True
                out = block.slot(w, g + 1)
                got = average(out, block.sources(g), ns[g])
                assert got is out
            finished.append(w)
        except BaseException as e:  # reported by the main thread
            errors.append(e)
            block.abort[0] = 1

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(2)]
    for t in threads:
        t.start()
    # the driver: takes each round once every worker has published it
    deadline = time.monotonic() + 10.0
    for g in range(ROUNDS):
        while block.done.min() < g and not errors and time.monotonic() < deadline:
            time.sleep(0.001)
        block.consumed[0] = g
    for t in threads:
        t.join(10.0)
    if errors:
        raise errors[0]
    assert sorted(finished) == [0, 1]
    final = [block.slot(w, ROUNDS) for w in range(2)]
    # the serial float64 reference
    ref = [{k: v.astype(np.float64) for k, v in init.items()} for _ in range(2)]
    for g in range(ROUNDS):
        for w in range(2):
            for name, d in _deltas(w, g, shapes).items():
                ref[w][name] += d
        total = sum(ns[g])
        avg = {name: sum((n / total) * ref[w][name] for w, n in enumerate(ns[g])) for name in shapes}
        ref = [{k: v.copy() for k, v in avg.items()} for _ in range(2)]
    for name in shapes:
        assert final[0][name].dtype == np.float32
        np.testing.assert_array_equal(final[0][name], final[1][name])   # bitwise: the same floats everywhere
        np.testing.assert_allclose(final[0][name], ref[0][name], rtol=1e-6, atol=1e-6)
        assert not np.allclose(final[0][name], init[name], atol=1e-3)    # something really moved


# ---- Averager ----------------------------------------------------------------------------------------------

def test_averager_is_the_example_weighted_mean_in_place():
    rng = np.random.default_rng(3)
    sources = [{"params": rng.standard_normal(7).astype(np.float32), "opt": rng.standard_normal((2, 3))}
               for _ in range(3)]
    ns = [50, 7, 143]
    out = {"params": np.empty(7, np.float32), "opt": np.empty((2, 3), np.float64)}
    ids = {k: id(v) for k, v in out.items()}
    got = Averager()(out, sources, ns)
    assert got is out and {k: id(v) for k, v in got.items()} == ids
    for name in out:
        expected = sum(n * s[name].astype(np.float64) for s, n in zip(sources, ns)) / sum(ns)
        np.testing.assert_allclose(out[name], expected, rtol=1e-6, atol=1e-6)
        unweighted = np.mean([s[name] for s in sources], axis=0)
        assert not np.allclose(out[name], unweighted, atol=1e-3)
    assert out["params"].dtype == np.float32 and out["opt"].dtype == np.float64


def test_averager_skips_idle_workers_even_with_inf_or_nan():
    rng = np.random.default_rng(4)
    a, c = rng.standard_normal(5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    junk = np.array([np.inf, -np.inf, np.nan, np.nan, np.inf], np.float32)
    average = Averager()
    out = {"params": np.full(5, np.nan, np.float32)}
    average(out, [{"params": a}, {"params": junk}, {"params": c}], [10, 0, 30])
    assert np.all(np.isfinite(out["params"]))
    np.testing.assert_allclose(out["params"], (10 * a.astype(np.float64) + 30 * c) / 40, rtol=1e-6, atol=1e-6)
    # an idle first worker: the average starts from the second one
    out2 = {"params": np.full(5, np.nan, np.float32)}
    average(out2, [{"params": junk}, {"params": a}, {"params": c}], [0, 10, 30])
    np.testing.assert_array_equal(out2["params"], out["params"])
    with pytest.raises(ValueError, match="no worker fitted"):
        average(out, [{"params": a}], [0])


# ---- training in external buffers ----------------------------------------------------------------------------

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
