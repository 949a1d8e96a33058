"""Shared memory among the workers of one host: a Region is a file in /dev/shm that every one of them maps
(sparkdl.dist.host lays its control words and buffers out in one), and sleeping waits on its int32 words.

Plain files and mmap rather than ``multiprocessing.shared_memory``: on Python < 3.13 attaching to a segment
registers it with the attaching process's resource tracker, which unlinks it when that process exits.
The creator (the driver) reserves the pages with posix_fallocate, so a full /dev/shm (docker's default is
64 MB) is an OSError at creation (and the fit uses the socket) rather than a SIGBUS at the first write.
"""
import ctypes
import mmap
import os
import platform
import re
import secrets
import time

import numpy as np

DIRECTORY = "/dev/shm"
ALIGN = 64
_NAME = re.compile(r"sparkdl-[0-9a-f]{32}")
# map every page up front (Linux): a worker touches a new slot every round for the first rounds, and the driver
# the slots of another round at each epoch end; faulting 2.8 MB of pages in costs ~1-2 ms each time
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_TOKEN = 16  # random bytes at offset 0: proof that a mapping is the creator's region, not a namesake
# plain aligned stores become visible to other cores in program order only on x86-64 (TSO): elsewhere the
# workers of a host do not share memory and go through the network path instead
ORDERED_STORES = platform.machine().lower() in ("x86_64", "amd64")


def aligned(n):
    return -(-n // ALIGN) * ALIGN


class Region:
    def __init__(self, path, size, fd, token):
        """Map ``fd`` (closed here, mapped or not); use ``create`` or ``attach``."""
        self.path, self.size, self.token, self.linked = path, size, token, True
        try:
            self.mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE)
        finally:
            os.close(fd)

    @classmethod
    def create(cls, size):
        """A new region of ``size`` bytes readable by this user only, or None where there is no shared memory
        to use (no /dev/shm, not enough room in it)."""
        if not os.path.isdir(DIRECTORY):
            return None
        path = os.path.join(DIRECTORY, f"sparkdl-{secrets.token_hex(16)}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return None
        try:
            os.posix_fallocate(fd, 0, size)
        except (OSError, AttributeError):  # no room (or no posix_fallocate): the socket path is used instead
            os.close(fd)
            os.unlink(path)
            return None
        try:
            region = cls(path, size, fd, secrets.token_bytes(_TOKEN))  # closes fd
        except OSError:
            os.unlink(path)
            return None
        region.mm[:_TOKEN] = region.token
        return region

    @classmethod
    def attach(cls, path, size, token):
        """Map the region another process offered, or None when it is not reachable from here (another host or
        container, another user) or not the offered one."""
        try:
            token = bytes.fromhex(token)
        except (TypeError, ValueError):
            return None
        if not (isinstance(path, str) and os.path.dirname(path) == DIRECTORY and _NAME.fullmatch(os.path.basename(path))
                and isinstance(size, int) and size > ALIGN and len(token) == _TOKEN):
            return None
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:
            if os.fstat(fd).st_size != size:
                raise OSError("not the offered size")
        except OSError:
            os.close(fd)
            return None
        try:
            region = cls(path, size, fd, token)
        except OSError:
            return None
        region.linked = False  # the creator unlinks it
        if region.mm[:_TOKEN] != token:
            region.close()
            return None
        return region

    def offer(self):
        return {"path": self.path, "size": self.size, "token": self.token.hex()}

    def view(self, dtype, shape, offset):
        """The array at ``offset`` (no copy: valid until the other side writes the region again)."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        if not (isinstance(offset, int) and ALIGN <= offset and offset + count * dtype.itemsize <= self.size):
            raise ValueError(f"an array of {count} x {dtype} at offset {offset!r} lies outside the shared region "
                             f"of {self.size} bytes")
        return np.frombuffer(self.mm, dtype, count, offset).reshape(shape)

    def unlink(self):
        """Remove the name (the mappings stay valid): done as soon as every peer has mapped it, so that a
        killed driver leaves nothing behind in /dev/shm."""
        if self.linked:
            self.linked = False
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def close(self):
        self.unlink()
        try:
            self.mm.close()
        except BufferError:  # arrays still view it: the mapping goes when they do
            pass


# -- sleeping waits on int32 words of a region (Linux futex: the kernel parks the waiter until a store + wake) ---
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98}.get(platform.machine().lower())


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc() if _SYS_FUTEX is not None and os.uname().sysname == "Linux" else None


def address(words, i):
    """The address of ``words[i]`` (an int32 array in shared memory), for the two calls below."""
    return words.ctypes.data + 4 * i


def sleep_until_changed(addr, value, timeout):
    """Block (without using the CPU) until the int32 word at ``addr`` may differ from ``value``, a wake arrives,
    or ``timeout`` seconds pass; returns at once if it already differs. Spurious returns are allowed: callers
    re-check their condition. Without futexes, a short sleep."""
    if _LIBC is None:
        time.sleep(min(timeout, 0.0005))
        return
    ts = _Timespec(int(timeout), int((timeout % 1.0) * 1e9))
    _LIBC.syscall(_SYS_FUTEX, ctypes.c_void_p(addr), _FUTEX_WAIT, ctypes.c_int(int(value)), ctypes.byref(ts), None, 0)


def wake(addr):
    """Wake every process sleeping on the word at ``addr`` (call after storing the new value)."""
    if _LIBC is not None:
        _LIBC.syscall(_SYS_FUTEX, ctypes.c_void_p(addr), _FUTEX_WAKE, ctypes.c_int(2 ** 31 - 1), None, None, 0)
