"""Shared memory between the driver and the workers on its host: a Region is a file in /dev/shm that every
process maps (sparkdl.dist.peers lays its control block and buffers out in one).

Plain files and mmap rather than ``multiprocessing.shared_memory``: on Python < 3.13 attaching to a segment
registers it with the attaching process's resource tracker, which unlinks it when that process exits.
The creator (the driver) reserves the pages with posix_fallocate, so a full /dev/shm (docker's default is
64 MB) is an OSError at creation (and the fit uses the socket) rather than a SIGBUS at the first write.
"""
import mmap
import os
import re
import secrets

import numpy as np

DIRECTORY = "/dev/shm"
ALIGN = 64
_NAME = re.compile(r"sparkdl-[0-9a-f]{32}")
# map every page up front (Linux): a worker touches a new slot every round for the first rounds, and the driver
# the slots of another round at each epoch end; faulting 2.8 MB of pages in costs ~1-2 ms each time
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_TOKEN = 16  # random bytes at offset 0: proof that a mapping is the creator's region, not a namesake


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
