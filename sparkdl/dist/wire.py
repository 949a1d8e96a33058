"""Barrier mode's wire format, handshakes and listening sockets. Never pickle: the driver and the workers listen
on network ports, so a message is a JSON header plus raw little-endian arrays of whitelisted dtypes, and a peer
must prove it holds the per-fit secret (HMAC-SHA256 over a fresh nonce) before anything it sends is read.

frame = b"SDL1" | u32 header length | header JSON | the arrays' bytes, in header["arrays"] order
"""
import hashlib
import hmac
import json
import math
import os
import socket
import struct

import numpy as np

MAGIC = b"SDL1"
DTYPES = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8"), "int64": np.dtype("<i8")}
MAX_HEADER = 1 << 20


class WireError(ConnectionError):
    """The peer closed the connection or sent something that is not a valid frame."""


def _recv_exact(sock, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise WireError(f"connection closed after {got} of {n} bytes")
        got += k
    return buf


def send(sock, header, arrays=None):
    """Send one frame; returns its size in bytes."""
    arrays = {k: v for k, v in (arrays or {}).items() if v is not None}
    meta = []
    for name, a in arrays.items():
        dtype = np.dtype(a.dtype).name
        if dtype not in DTYPES:
            raise TypeError(f"cannot send array {name!r} of dtype {dtype}; allowed: {sorted(DTYPES)}")
        meta.append([name, dtype, list(a.shape)])
    raw = json.dumps({**header, "arrays": meta}).encode()
    sock.sendall(MAGIC + struct.pack("<I", len(raw)) + raw)
    size = 8 + len(raw)
    for a in arrays.values():
        view = memoryview(np.ascontiguousarray(a, DTYPES[np.dtype(a.dtype).name])).cast("B")
        sock.sendall(view)
        size += view.nbytes
    return size


def recv(sock, max_bytes=1 << 34):
    """(header dict, {name: array}); raises WireError on a closed connection or a malformed frame."""
    header, arrays, _ = recv_sized(sock, max_bytes)
    return header, arrays


def recv_sized(sock, max_bytes=1 << 34):
    """``recv`` and the frame's size in bytes."""
    head = _recv_exact(sock, 8)
    if bytes(head[:4]) != MAGIC:
        raise WireError("not a sparkdl frame (bad magic)")
    (length,) = struct.unpack("<I", head[4:])
    if length > MAX_HEADER:
        raise WireError(f"header of {length} bytes is larger than {MAX_HEADER}")
    try:
        header = json.loads(bytes(_recv_exact(sock, length)))
        meta = header.pop("arrays")
        if not isinstance(meta, list) or not all(isinstance(m, list) and len(m) == 3 and isinstance(m[0], str)
                                                 and isinstance(m[2], list) for m in meta):
            raise ValueError(f"'arrays' must list [name, dtype, shape] triples, not {meta!r}"[:200])
    except (ValueError, KeyError, AttributeError, TypeError, RecursionError) as e:   # RecursionError: [[[[...
        raise WireError(f"malformed header: {e}") from None
    arrays, total = {}, 0
    for name, dtype, shape in meta:
        if not isinstance(dtype, str) or dtype not in DTYPES or len(shape) > 32 or \
                not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise WireError(f"array {name!r}: bad dtype {dtype!r} or shape {shape!r}"[:200])
        # exact ints, checked before anything is allocated; zero-size arrays too, so no dimension is absurd
        if math.prod(max(d, 1) for d in shape) * DTYPES[dtype].itemsize > max_bytes - total:
            raise WireError(f"frame of more than {max_bytes} bytes")
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        total += nbytes
        arrays[name] = np.frombuffer(_recv_exact(sock, nbytes), DTYPES[dtype]).reshape(shape)
    return header, arrays, 8 + length + total


def proof(secret, nonce):
    return hmac.new(secret, nonce, hashlib.sha256).digest()


def challenge(sock, secret):
    """Server side: True when the peer answers the nonce with the right HMAC."""
    nonce = os.urandom(32)
    sock.sendall(nonce)
    answer = bytes(_recv_exact(sock, 32))
    return hmac.compare_digest(answer, proof(secret, nonce))


def respond(sock, secret):
    """Client side: answer the server's nonce."""
    nonce = bytes(_recv_exact(sock, 32))
    sock.sendall(proof(secret, nonce))


def parse_ports(ports):
    """None (any free port) or an inclusive (low, high) range, also given as "low-high" or one port."""
    if ports is None:
        return None
    given, lo = ports, None
    try:
        if isinstance(ports, str):
            low, dash, high = ports.strip().partition("-")
            parts = (low, high) if dash else (low, low)
        elif isinstance(ports, int) and not isinstance(ports, bool):
            parts = (ports, ports)
        else:
            parts = tuple(ports)
        if len(parts) == 2 and all(isinstance(p, (int, str)) and not isinstance(p, bool) for p in parts):
            lo, hi = (int(p) for p in parts)
    except (TypeError, ValueError):
        lo = None
    if lo is None or not 1 <= lo <= hi <= 65535:
        raise ValueError(f"ports must be None, a port or a range 'low-high' within 1-65535. Received: ports={given!r}")
    return lo, hi


def listen(host, ports=None, backlog=64):
    """A listening TCP socket on ``host``: on a free port, or on the first free one of the ``ports`` range (for
    clusters whose firewalls open only some ports)."""
    ports = parse_ports(ports)
    if ports is None:
        return socket.create_server((host, 0), backlog=backlog)
    last = None
    for port in range(ports[0], ports[1] + 1):
        try:
            return socket.create_server((host, port), backlog=backlog)
        except OSError as e:
            last = e
    raise OSError(f"no free port on {host} in the range {ports[0]}-{ports[1]} (ports): {last}")


def encode_partials(partials):
    """Metric partial sums (dicts of floats and arrays) as JSON-able values."""
    return {k: {n: [np.asarray(v).tolist(), np.ndim(v) > 0] for n, v in part.items()} for k, part in partials.items()}


def decode_partials(plain):
    return {k: {n: (np.asarray(v) if is_array else v) for n, (v, is_array) in part.items()}
            for k, part in plain.items()}
