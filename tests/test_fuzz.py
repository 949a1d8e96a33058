"""Hostile bytes: the averaging wire protocol, the control server's handshake and model files, fed truncated,
flipped, oversized and crafted input. Every input must end in a decode or in the clear error of its kind (a
WireError, a refused connection, a ValueError), never in another exception, a hang or an allocation larger than
what the input declares and the receiver allows. Every random source is seeded."""
import functools
import io as _io
import json
import re
import socket
import struct
import threading
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

from sparkdl import io
from sparkdl.dist import wire
from sparkdl.dist.control import ControlServer, WorkerLost
from sparkdl.nn import Dense, Sequential
from waiting import until

SECRET = b"s" * 32


def _feed(socks, raw, max_bytes=1 << 34):
    """``wire.recv_sized`` of ``raw`` sent by a peer that then closes: a frame cut short ends in a WireError."""
    a, b = socket.socketpair()
    socks.extend((a, b))
    b.settimeout(5)    # a receiver that waited for bytes that never come would fail the test, not hang it

    def send():
        try:
            a.sendall(raw)
        except OSError:   # the receiver refused the frame and closed before all of it was sent
            pass
        a.shutdown(socket.SHUT_WR)
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        return wire.recv_sized(b, max_bytes)
    finally:
        b.close()
        sender.join(5)


def _frame(header):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return wire.MAGIC + struct.pack("<I", len(raw)) + raw


def _valid_frame():
    a, b = socket.socketpair()
    with a, b:
        wire.send(a, {"type": "model", "round": 3, "lo": 0, "hi": 6},
                  {"chunk": np.arange(6, dtype=np.float32), "ids": np.array([[-1, 2 ** 40]], np.int64)})
        a.shutdown(socket.SHUT_WR)
        return _read_all(b)


def _read_all(sock):
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


# ---- frames ----------------------------------------------------------------------------------------------

def test_a_frame_cut_at_any_point_is_a_wire_error(socks):
    raw = _valid_frame()
    header, arrays, size = _feed(socks, raw)
    assert size == len(raw) and header["round"] == 3 and arrays["ids"][0, 1] == 2 ** 40
    for cut in range(len(raw)):
        with pytest.raises(wire.WireError, match=r"connection closed after \d+ of \d+ bytes"):
            _feed(socks, raw[:cut])


def test_random_byte_flips_of_a_frame_decode_or_are_wire_errors(socks):
    raw = _valid_frame()
    rng = np.random.default_rng(13)
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(300):
        flipped = bytearray(raw)
        for at in rng.integers(0, len(raw), rng.integers(1, 4)):
            flipped[at] = rng.integers(0, 256)
        try:
            header, arrays, size = _feed(socks, bytes(flipped))
        except wire.WireError as e:
            assert re.match("connection closed after|not a sparkdl frame|header of|malformed header|array .* bad dtype|"
                            "frame of more than", str(e)), e
            outcomes["refused"] += 1
        else:   # a decode: of whitelisted dtypes, within the bytes that were sent
            assert isinstance(header, dict) and size <= len(raw)
            assert all(a.dtype in wire.DTYPES.values() for a in arrays.values())
            outcomes["decoded"] += 1
    assert outcomes["decoded"] > 20 and outcomes["refused"] > 100, outcomes


BAD = [
    (b"SDL2" + bytes(4), "bad magic"),
    (b"GET / HTTP/1.1\r\n\r\n", "bad magic"),
    (wire.MAGIC + struct.pack("<I", wire.MAX_HEADER + 1), "header of 1048577 bytes is larger than 1048576"),
    (wire.MAGIC + struct.pack("<I", 2 ** 32 - 1), "larger than"),
    (_frame(b"\xff\xfe{}"), "malformed header"),
    (_frame(b"[" * 100_000), "malformed header: maximum recursion depth"),
    (_frame(b'{"arrays": [], "n": ' + b"9" * 5000 + b"}"), "malformed header"),
    (_frame([1, 2, 3]), "malformed header"),
    (_frame('"arrays"'), "malformed header"),
    (_frame({"type": "round"}), "malformed header"),
    (_frame({"arrays": None}), "malformed header"),
    (_frame({"arrays": [[1, "float32", [2]]]}), "malformed header"),
    (_frame({"arrays": [[["x"], "float32", [2]]]}), "malformed header"),
    (_frame({"arrays": [["x", "float32", 2]]}), "malformed header"),
]
BAD += [(_frame({"arrays": [["x", dtype, [2]]]}), "bad dtype")
        for dtype in ("object", "O", "|O", "<U5", "bool", "int32", "float16", "V8", "complex64", ["float32"], None)]
BAD += [(_frame({"arrays": [["x", "float32", shape]]}), "bad dtype .* or shape")
        for shape in ([-1], [2, -3], [True], [2.0], [1e3], ["2"], [None], [[2]], [1] * 33)]
BAD += [(_frame({"arrays": [["x", "float32", shape]]}), "frame of more than 17179869184 bytes")
        for shape in ([2 ** 40], [2 ** 32, 2 ** 32], [2 ** 63], [2 ** 64], [10 ** 400], [0, 2 ** 70],
                      [2 ** 16] * 5, [0] * 10 + [2 ** 62])]


@pytest.mark.parametrize("raw,match", BAD, ids=range(len(BAD)))
def test_hostile_frames_are_wire_errors(socks, raw, match):
    with pytest.raises(wire.WireError, match=match):
        _feed(socks, raw)


def test_an_array_beyond_max_bytes_is_refused_before_its_payload_is_read_or_allocated(socks):
    for shape in ([2 ** 31], [2 ** 32, 2 ** 32], [3, 0, 2 ** 62]):   # 16 GiB, and products that wrap in int64
        a, b = socket.socketpair()
        socks.extend((a, b))
        b.settimeout(5)
        a.sendall(_frame({"type": "model", "arrays": [["a", "float32", [4]], ["x", "float64", shape]]})
                  + bytes(16) + b"payload")
        tracemalloc.start()
        try:
            with pytest.raises(wire.WireError, match="frame of more than 1073741824 bytes"):
                wire.recv(b, max_bytes=1 << 30)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, peak
        assert b.recv(100) == b"payload"    # the refused array's bytes were never read


def test_max_bytes_counts_every_array_of_the_frame(socks):
    raw = _frame({"arrays": [["a", "float32", [6]], ["b", "float32", [5]]]}) + bytes(44)
    assert sorted(_feed(socks, raw, max_bytes=44)[1]) == ["a", "b"]
    with pytest.raises(wire.WireError, match="frame of more than 43 bytes"):
        _feed(socks, raw, max_bytes=43)


# ---- handshakes ------------------------------------------------------------------------------------------

def _answer_in_thread(sock, answer, then_close=False):
    """The peer of ``wire.challenge``: reads the nonce, sends ``answer(nonce)``."""
    got = {}

    def run():
        got["nonce"] = sock.recv(32)
        sock.sendall(answer(got["nonce"]))
        if then_close:
            sock.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, got


def test_a_replayed_or_flipped_answer_fails_the_challenge(socks):
    a, b = socket.socketpair()
    socks.extend((a, b))
    t, first = _answer_in_thread(b, lambda nonce: wire.proof(SECRET, nonce))
    assert wire.challenge(a, SECRET) is True
    t.join(5)
    recorded = wire.proof(SECRET, first["nonce"])    # what an eavesdropper saw on the wire
    t, second = _answer_in_thread(b, lambda nonce: recorded)
    assert wire.challenge(a, SECRET) is False        # a fresh nonce each time
    t.join(5)
    assert second["nonce"] != first["nonce"]
    rng = np.random.default_rng(5)
    for bit in rng.choice(256, 16, replace=False):
        t, _ = _answer_in_thread(b, lambda nonce: (int.from_bytes(wire.proof(SECRET, nonce), "little")
                                                   ^ (1 << int(bit))).to_bytes(32, "little"))
        assert wire.challenge(a, SECRET) is False
        t.join(5)
    t, _ = _answer_in_thread(b, lambda nonce: wire.proof(SECRET, nonce)[:31], then_close=True)
    with pytest.raises(wire.WireError, match="connection closed after 31 of 32 bytes"):
        wire.challenge(a, SECRET)
    t.join(5)


@pytest.fixture
def server(socks):
    s = ControlServer(SECRET, "127.0.0.1", timeout=5.0, handshake_timeout=2.0)
    try:
        yield s
    finally:
        s.close()
        while not s.joined.empty():
            s.joined.get_nowait()[1].close()


def _connect(socks, server):
    s = socket.create_connection((server.host, server.port), timeout=5)
    socks.append(s)
    return s


def test_the_control_server_refuses_replayed_answers_and_odd_hellos(socks, server):
    good = _connect(socks, server)
    nonce = good.recv(32)
    good.sendall(wire.proof(SECRET, nonce))
    wire.send(good, {"type": "hello", "worker": 0, "attempt": 0})
    replay = _connect(socks, server)
    assert len(replay.recv(32)) == 32
    replay.sendall(wire.proof(SECRET, nonce))       # the answer to another connection's nonce
    wire.send(replay, {"type": "hello", "worker": 1, "attempt": 0})
    hellos = [{"type": "hello", "worker": 1, "attempt": "0"}, {"type": "hello", "worker": 1, "attempt": None},
              {"type": "hello", "worker": True}, {"type": "hello", "worker": 1.0}, {"type": "hello"}]
    for hello in hellos:
        s = _connect(socks, server)
        wire.respond(s, SECRET)
        wire.send(s, hello)
    s = _connect(socks, server)                     # a hello carrying arrays: nothing is read before the hello
    wire.respond(s, SECRET)
    wire.send(s, {"type": "hello", "worker": 1}, {"x": np.zeros(4, np.float32)})
    assert until(lambda: server.refused == 2 + len(hellos)), server.refused
    assert server.joined.qsize() == 1
    assert sorted(server.wait_for_workers(1)) == [0]
    assert server.bytes == {"control": 0, "model": 0, "stats": 0}


def test_flipped_hello_frames_are_joined_or_refused_never_lost(socks, server):
    """A handshake thread that died of an unexpected exception would neither refuse nor hand on its connection."""
    a, b = socket.socketpair()
    with a, b:
        wire.send(a, {"type": "hello", "worker": 0, "attempt": 2, "rows": 10, "host": "h", "pid": 7})
        a.shutdown(socket.SHUT_WR)
        hello = _read_all(b)
    rng = np.random.default_rng(21)
    for n in range(1, 41):
        flipped = bytearray(hello)
        for at in rng.integers(0, len(hello), rng.integers(1, 3)):
            flipped[at] = rng.integers(0, 256)
        s = _connect(socks, server)
        wire.respond(s, SECRET)
        try:
            s.sendall(bytes(flipped))
            s.shutdown(socket.SHUT_WR)
        except OSError:   # the server refused what it had read so far and closed
            pass
        assert until(lambda: server.refused + server.joined.qsize() == n), (n, server.refused, bytes(flipped))
    assert 0 < server.refused < 40


def test_replayed_and_odd_frames_after_the_hello_are_lost_workers(socks, server):
    clients = []
    for w in range(3):
        s = _connect(socks, server)
        wire.respond(s, SECRET)
        wire.send(s, {"type": "hello", "worker": w})
        clients.append(s)
    server.wait_for_workers(3)
    c0, c1, c2 = clients
    wire.send(c0, {"type": "hello", "worker": 0})                    # the hello again
    with pytest.raises(WorkerLost, match="worker 0 was lost: expected its round message for round 1, received hello"):
        server.recv(0, "round", 0)
    for _ in range(2):
        wire.send(c1, {"type": "round", "round": 0}, {"tally": np.ones(3)})   # one round message, twice
    assert server.recv(1, "round", 0)[0]["round"] == 0
    with pytest.raises(WorkerLost, match="expected its round message for round 2, received round for round 1"):
        server.recv(1, "round", 1)
    wire.send(c2, {"type": "bye", "round": "x"})                    # a round that is not a number
    with pytest.raises(WorkerLost, match="worker 2 was lost: it ended its fit before its round message for round 1; "
                                         "its last message was for round 'x'"):
        server.recv(2, "round", 0)


# ---- model files -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_bytes():
    m = Sequential([Dense(8, activation="relu"), Dense(3, activation="softmax")], input_shape=(4,), seed=0)
    m.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    m.fit(x, np.arange(16) % 3, epochs=1, batch_size=8, verbose=0)   # a non-zero optimizer state
    return io.model_to_bytes(m)


def _members(data):
    with zipfile.ZipFile(_io.BytesIO(data)) as z:
        return {name: z.read(name) for name in z.namelist()}


def _zip(members, compression=zipfile.ZIP_STORED):
    buf = _io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    return buf.getvalue()


def _npy(array, allow_pickle=False):
    buf = _io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _header_bytes(descr, shape):
    """The .npy header np.save writes for an array of ``descr`` and ``shape``, without the array."""
    buf = _io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _load_or_refuse(data):
    """'loaded' or 'refused' (a ValueError that names the input); any other exception fails the test."""
    try:
        model = io.model_from_bytes(data)
    except ValueError as e:
        assert str(e).startswith("model bytes"), e
        return "refused"
    assert model.count_params() == 4 * 8 + 8 + 8 * 3 + 3
    return "loaded"


def test_random_byte_flips_of_a_model_file_load_or_are_refused(model_bytes):
    rng = np.random.default_rng(7)
    seen = {"loaded": 0, "refused": 0}
    for _ in range(200):
        flipped = bytearray(model_bytes)
        for at in rng.integers(0, len(flipped), rng.integers(1, 4)):
            flipped[at] ^= 1 << int(rng.integers(0, 8))
        seen[_load_or_refuse(bytes(flipped))] += 1
    assert seen["refused"] > 150, seen


def test_byte_flips_inside_the_members_load_or_are_refused(model_bytes):
    """Flips the CRCs do not catch: inside the .npy headers and the JSON (members rewritten with fresh CRCs)."""
    members = _members(model_bytes)
    names = sorted(members)
    rng = np.random.default_rng(8)
    seen = {"loaded": 0, "refused": 0}
    for _ in range(200):
        name = names[rng.integers(len(names))]
        raw = bytearray(members[name])
        span = 128 if rng.random() < 0.6 else len(raw)              # mostly the header
        for at in rng.integers(0, min(span, len(raw)), rng.integers(1, 4)):
            raw[at] = rng.integers(32, 127) if rng.random() < 0.7 else rng.integers(0, 256)
        seen[_load_or_refuse(_zip({**members, name: bytes(raw)}))] += 1
    assert seen["refused"] > 100 and seen["loaded"] > 5, seen


def test_a_truncated_model_file_is_refused(model_bytes):
    rng = np.random.default_rng(9)
    cuts = sorted(set(range(0, 40)) | set(rng.integers(0, len(model_bytes), 60).tolist())
                  | set(range(len(model_bytes) - 40, len(model_bytes))))
    for cut in cuts:
        with pytest.raises(ValueError, match="model bytes is not a readable sparkdl model file"):
            io.model_from_bytes(model_bytes[:cut])
    compressed = _zip(_members(model_bytes), zipfile.ZIP_DEFLATED)
    for cut in rng.integers(0, len(compressed), 60):
        with pytest.raises(ValueError, match="model bytes is not a readable sparkdl model file"):
            io.model_from_bytes(compressed[:cut])


def _config(members, change):
    spec = json.loads(str(np.load(_io.BytesIO(members["config.npy"]))))
    change(spec)
    return _npy(np.array(json.dumps(spec)))


def _layer0(**changes):
    return lambda spec: spec["config"]["layers"][0].update(changes)


def _layer0_config(**changes):
    return lambda spec: spec["config"]["layers"][0]["config"].update(changes)


# (case, edit(members, params) -> {member: its new bytes, or None to leave it out}, the error's message as a regex)
HOSTILE = [
    ("pickled params", lambda m, p: {"params.npy": _npy(np.array([object()] * 96, dtype=object), True)},
     r"'params.npy' holds Python objects \(object\), which would need unpickling"),
    ("pickled meta", lambda m, p: {"meta.npy": _npy(np.array([{"a": 1}], dtype=object), True)},
     "'meta.npy' holds Python objects"),
    ("params too short", lambda m, p: {"params.npy": _npy(p[:-1])},
     "params has 95 values but the model config needs 96"),
    ("params too long", lambda m, p: {"params.npy": _npy(np.zeros(20_000, np.float32))},
     "'params.npy' unpacks to 80128 bytes; the model config allows at most 4864"),
    ("params 2-D", lambda m, p: {"params.npy": _npy(p.reshape(8, 12))},
     r"params has 96 values but the model config needs 96 in a 1-D array; received shape \(8, 12\)"),
    ("params of ints", lambda m, p: {"params.npy": _npy(p.astype(np.int64))},
     "params must hold floats; received int64"),
    ("params of text", lambda m, p: {"params.npy": _npy(p.astype("<U3"))}, "params must hold floats; received <U3"),
    ("params of complex", lambda m, p: {"params.npy": _npy(p.astype(np.complex64))}, "received complex64"),
    ("state of bools", lambda m, p: {"state.npy": _npy(np.zeros(0, bool))}, "state must hold floats; received bool"),
    ("optimizer buffer of one slot", lambda m, p: {"optimizer_buffer.npy": _npy(p)},
     r"model bytes: optimizer state size mismatch .* expected a 1-D buffer of 192 values. Received: shape \(96,\)"),
    ("no optimizer buffer", lambda m, p: {"optimizer_buffer.npy": None}, "a compiled model needs the optimizer state"),
    ("huge declared array", lambda m, p: {"params.npy": _header_bytes("<f4", (2 ** 40,)) + bytes(384)},
     r"'params.npy' declares a float32 array of shape \(1099511627776,\) but holds 384 bytes of data"),
    ("negative shape", lambda m, p: {"params.npy": _header_bytes("<f4", (-96, -1)) + bytes(384)},
     r"declares a float32 array of shape \(-96, -1\)"),
    ("zero-size dtype", lambda m, p: {"params.npy": _header_bytes("|V0", (2 ** 62,))}, "declares a |V0 array"),
    ("not npy", lambda m, p: {"params.npy": b"PK\x03\x04" + bytes(400)},
     r"\(ValueError: the magic string is not correct"),
    ("npy version 3", lambda m, p: {"params.npy": b"\x93NUMPY\x03\x00" + bytes(10)}, "unsupported .npy format version"),
    ("header numpy retries as Python 2's",
     lambda m, p: {"meta.npy": m["meta.npy"].replace(b"'shape': (), }", b"'shape': (q, }")},
     r"not a readable sparkdl model file \(TokenError"),
    ("config not json", lambda m, p: {"config.npy": _npy(np.array("{not json"))},
     "the 'config' entry is not valid JSON"),
    ("config of numbers", lambda m, p: {"config.npy": _npy(np.arange(3.0))},
     r"the 'config' entry is not valid JSON \(a float64 array of shape \(3,\), not a string\)"),
    ("config beyond unicode", lambda m, p: {"config.npy": _header_bytes("<U2", ()) + b"\xff" * 8},
     "the 'config' entry is not valid JSON .*code point not in range"),
    ("config not a model", lambda m, p: {"config.npy": _npy(np.array("[1, 2]"))}, "model class_name must be one of"),
    ("unknown layer", lambda m, p: {"config.npy": _config(m, _layer0(class_name="Dense3"))},
     r"unknown layer class_name.*Received: 'Dense3'"),
    ("unknown layer argument", lambda m, p: {"config.npy": _config(m, _layer0_config(units_=8))},
     r"the config does not describe a sparkdl model \(TypeError: .*units_"),
    ("compile not a dict", lambda m, p: {"compile.npy": _npy(np.array("[]"))}, "the compile settings are not valid"),
    ("unknown optimizer", lambda m, p: {"compile.npy": _npy(np.array('{"optimizer": "sgdx"}'))}, "unknown optimizer"),
    ("format from the future", lambda m, p: {"sparkdl_format.npy": _npy(np.array(2))},
     "has model format version 2; this sparkdl reads version 1"),
    ("format as text", lambda m, p: {"sparkdl_format.npy": _npy(np.array("1"))},
     "the 'sparkdl_format' entry must be one integer; received a <U1 array"),
    ("iterations of floats", lambda m, p: {"optimizer_iterations.npy": _npy(np.array(1.5))}, "must be one integer"),
    ("iterations negative", lambda m, p: {"optimizer_iterations.npy": _npy(np.array(-1))},
     "model bytes: iterations must be a non-negative integer"),
    ("no params", lambda m, p: {"params.npy": None}, r"not a sparkdl model file: missing \['params'\]"),
    ("empty zip", lambda m, p: dict.fromkeys(m),
     r"missing \['sparkdl_format', 'config', 'params', 'state'\]; found \[\]"),
]


@pytest.mark.parametrize("edit,match", [pytest.param(edit, match, id=case) for case, edit, match in HOSTILE])
def test_hostile_model_files_are_refused(model_bytes, edit, match):
    members = _members(model_bytes)
    for name, raw in edit(members, np.load(_io.BytesIO(members["params.npy"]))).items():
        if raw is None:
            del members[name]
        else:
            members[name] = raw
    data = _zip(members)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            io.model_from_bytes(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak


@pytest.mark.parametrize("data,match", [(b"", "File is not a zip file"), (b"hello", "File is not a zip file"),
                                        (b"PK\x05\x06" + bytes(18), "missing"),   # an empty zip
                                        (b"\x93NUMPY" + bytes(100), "not a zip")])
def test_files_that_are_no_zip_are_refused(tmp_path, data, match):
    with pytest.raises(ValueError, match=f"model bytes is not a .*{match}"):
        io.model_from_bytes(data)
    path = tmp_path / "model.npz"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=re.escape(repr(str(path))) + f" is not a .*{match}"):
        io.load_model(path)


def test_a_missing_path_or_a_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        io.load_model(tmp_path / "nowhere.npz")
    with pytest.raises(ValueError, match="is not a readable sparkdl model file"):
        io.load_model(tmp_path)


def test_members_compressed_otherwise_or_encrypted_are_refused(model_bytes):
    members = _members(model_bytes)
    bz2 = _zip(members, zipfile.ZIP_BZIP2)
    with pytest.raises(ValueError, match="'sparkdl_format.npy' is encrypted or compressed with method 12"):
        io.model_from_bytes(bz2)
    data = bytearray(_zip(members))
    at = data.index(b"PK\x01\x02")                   # the first entry of the zip directory: set "encrypted"
    data[at + 8] |= 1
    with pytest.raises(ValueError, match="is encrypted or compressed with method 0"):
        io.model_from_bytes(bytes(data))
    deflated = _zip(members, zipfile.ZIP_DEFLATED)   # what np.savez_compressed writes: fine
    assert io.model_from_bytes(deflated).count_params() == 67


def _raw_zip(entries):
    """A zip written by hand, so that a member may declare any size: [(name, method, crc, size, payload)]."""
    out, directory = bytearray(), bytearray()
    for name, method, crc, size, payload in entries:
        name = name.encode()
        directory += struct.pack("<4s6H3I5H2I", b"PK\1\2", 20, 20, 0, method, 0, 0, crc, len(payload), size,
                                 len(name), 0, 0, 0, 0, 0, len(out)) + name
        out += struct.pack("<4s5H3I2H", b"PK\3\4", 20, 0, method, 0, 0, crc, len(payload), size, len(name), 0)
        out += name + payload
    end = struct.pack("<4s4H2IH", b"PK\5\6", 0, 0, len(entries), len(entries), len(directory), len(out), 0)
    return bytes(out + directory + end)


@functools.lru_cache
def _bomb(header, zero_mib):
    """(deflated ``header`` + ``zero_mib`` MiB of zeros, its CRC, its size): one MiB of zeros deflates to about
    1 KB, repeated; each piece ends in a full flush, so none refers back into the one before. The CRC is the true
    one (about 1 s for 2 GiB), so that np.load would unpack all of it without complaint."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    head = packer.compress(header) + packer.flush(zlib.Z_FULL_FLUSH)
    mib = packer.compress(zeros) + packer.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(header)
    for _ in range(zero_mib):
        crc = zlib.crc32(zeros, crc)
    return head + mib * zero_mib + packer.flush(), crc, len(header) + (zero_mib << 20)


@pytest.mark.parametrize("member,declared,allowed", [("params.npy", 2 ** 31 + 128, 4864),
                                                     ("config.npy", 2 ** 31 + 128, 16 << 20),
                                                     ("optimizer_buffer.npy", 2 ** 31 + 128, 5632)])
def test_a_zip_bomb_is_refused_from_the_zip_directory_before_anything_is_unpacked(model_bytes, member, declared,
                                                                                  allowed):
    members = _members(model_bytes)
    descr = "<U536870912" if member == "config.npy" else "<f4"
    shape = () if member == "config.npy" else (2 ** 29,)
    payload, crc, size = _bomb(_header_bytes(descr, shape), 2048)    # 2 GiB of zeros in about 2 MB
    assert size == declared and len(payload) < 4 << 20
    entries = [(name, 0, zlib.crc32(raw), len(raw), raw) for name, raw in members.items() if name != member]
    data = _raw_zip(entries + [(member, zipfile.ZIP_DEFLATED, crc, size, payload)])
    with zipfile.ZipFile(_io.BytesIO(data)) as z:                   # a valid zip, which np.load would unpack
        assert z.getinfo(member).file_size == declared
        with z.open(member) as f:
            assert f.read(len(_header_bytes(descr, shape)) + 1000).endswith(bytes(1000))
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(ValueError, match=f"model bytes is not a readable sparkdl model file: '{member}' unpacks "
                                             f"to {declared} bytes; the model config allows at most {allowed}"):
            io.model_from_bytes(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20 and time.monotonic() - start < 2.0, peak


def test_unknown_members_are_never_read(model_bytes):
    members = _members(model_bytes)
    payload, crc, size = _bomb(_header_bytes("<f4", (2 ** 29,)), 2048)
    entries = [(name, 0, zlib.crc32(raw), len(raw), raw) for name, raw in members.items()]
    data = _raw_zip(entries + [("extra.npy", zipfile.ZIP_DEFLATED, crc, size, payload),
                               ("evil.pkl", 0, 0, 4, b"\x80\x04N.")])
    tracemalloc.start()
    try:
        model = io.model_from_bytes(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak
    np.testing.assert_array_equal(model.get_flat_params(), io.model_from_bytes(model_bytes).get_flat_params())
