"""How the members of a mesh (sparkdl.dist.mesh) connect: every member connects to each member after it and accepts
each member before it, and both sides of every connection prove the per-fit secret and the attempt token (and the
connecting side its rank) with HMACs over fresh nonces; a peer that fails is refused and counted, one that is not
listening yet is retried until the deadline, and a member that never connects fails the setup with its name."""
import hashlib
import hmac
import os
import socket
import struct
import threading
import time

_SOCKET_BUFFER = 4 << 20
_HANDSHAKE_S = 5.0   # longest a handshake may take (a silent connection holds the accept loop this long)


class PeerLost(ConnectionError):
    pass


def _mac(secret, *parts):
    return hmac.new(secret, b"|".join(parts), hashlib.sha256).digest()


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed during the handshake")
        buf += chunk
    return bytes(buf)


def _offer(sock, secret, token, rank):
    """Connecting side: prove the secret, the attempt token and our rank; check the other side proves them too."""
    nonce = _recv_exact(sock, 32)
    mine = os.urandom(32)
    sock.sendall(_mac(secret, b"mesh-connect", nonce, token, struct.pack("<i", rank)) + struct.pack("<i", rank) + mine)
    if not hmac.compare_digest(_recv_exact(sock, 32), _mac(secret, b"mesh-accept", mine, token)):
        raise PeerLost("the member failed the handshake (not this fit's secret or attempt)")


def _check(sock, secret, token, expected):
    """Accepting side: the rank the peer proved (with the secret and the token), if it is one of ``expected``;
    else None."""
    nonce = os.urandom(32)
    sock.sendall(nonce)
    answer = _recv_exact(sock, 68)
    (rank,) = struct.unpack("<i", answer[32:36])
    if rank not in expected or not hmac.compare_digest(
            answer[:32], _mac(secret, b"mesh-connect", nonce, token, struct.pack("<i", rank))):
        return None
    sock.sendall(_mac(secret, b"mesh-accept", answer[36:], token))
    return rank


def connect_all(rank, addresses, listener, secret, token, names, timeout):
    """Member ``rank``'s connections {k: socket} to every other member (connecting to those after it at
    ``addresses[k]``, accepting those before it on ``listener``), and how many connections it refused."""
    size = len(addresses)
    expected = set(range(rank))
    accepted, failure, refused = {}, [], [0]
    deadline = time.monotonic() + timeout
    stop = threading.Event()

    def accept():
        try:
            while len(accepted) < len(expected) and not stop.is_set():
                listener.settimeout(min(max(deadline - time.monotonic(), 0.001), 0.1))
                try:
                    conn, _ = listener.accept()
                except socket.timeout:
                    if time.monotonic() < deadline:
                        continue
                    raise
                conn.settimeout(min(_HANDSHAKE_S, max(deadline - time.monotonic(), 0.001)))
                try:
                    k = _check(conn, secret, token, expected - set(accepted))
                    if k is not None:
                        conn.settimeout(None)
                        accepted[k] = conn
                        continue
                except (OSError, ConnectionError, struct.error):
                    pass
                refused[0] += 1
                conn.close()
        except OSError as e:
            failure.append(e)

    thread = threading.Thread(target=accept, name="sparkdl-mesh-accept", daemon=True)
    thread.start()
    connected = {}
    try:
        for k in range(rank + 1, size):
            connected[k] = _connect_to(k, addresses[k], names[k], secret, token, rank, deadline, timeout)
        thread.join(max(deadline - time.monotonic(), 0.001))
        if len(accepted) < len(expected):
            missing = ", ".join(names[k] for k in sorted(expected - set(accepted)))
            raise PeerLost(f"mesh member(s) {missing} did not connect within {timeout:.3g} s"
                           + (f": {failure[0]}" if failure else ""))
    except BaseException:
        stop.set()
        thread.join(_HANDSHAKE_S + 1)
        for sock in list(connected.values()) + list(accepted.values()):
            sock.close()
        raise
    socks = {**accepted, **connected}
    for s in socks.values():
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # room for a whole chunk in flight: one send() per chunk instead of dozens (2.2 -> 1.2 ms for an
        # all-reduce of 2.8 MB between two processes on loopback); the kernel caps it at net.core.*mem_max
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
    return socks, refused[0]


def _connect_to(k, address, name, secret, token, rank, deadline, timeout):
    """A connection to member k that passed the handshake, retried until ``deadline`` while k is not listening."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PeerLost(f"mesh member {name} at {address} did not accept within {timeout:.3g} s")
        try:
            sock = socket.create_connection(address, timeout=max(min(_HANDSHAKE_S, left), 0.001))
        except OSError:   # not listening yet: try again until the deadline
            time.sleep(0.05)
            continue
        try:
            _offer(sock, secret, token, rank)
        except socket.timeout:   # connected, but the member is not accepting yet
            sock.close()
            continue
        except (OSError, ConnectionError) as e:   # a refused or failed proof is final
            sock.close()
            raise PeerLost(f"mesh member {name} at {address} failed the handshake: {e}") from None
        sock.settimeout(None)
        return sock
