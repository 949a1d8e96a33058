"""Averaging among the workers of one host, without Spark: shared-memory regions and training in external
buffers (Model.use_buffers / Optimizer.use_buffer)."""
import os
import secrets
import socket
import threading
import time

import numpy as np
import pytest

from sparkdl import optim
from sparkdl.nn import BatchNormalization, Dense, Sequential
from sparkdl.dist import shm

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


# ---- PeerBlock -------------------------------------------------------------------------------------------

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
