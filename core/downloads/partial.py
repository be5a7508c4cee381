"""Partial files: positional writes, reads and flushes of a download's data, behind an injectable opener."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Callable

from mavail.core import safefs

try:  # Linux: start writeback of written ranges early, so a later fdatasync has little left to do
    _sync_file_range = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).sync_file_range
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
except (OSError, AttributeError):
    _sync_file_range = None
_SYNC_FILE_RANGE_WRITE = 2


class PartialFile:
    """One file under `partial/` opened for positional I/O; thread-safe for disjoint ranges."""

    def __init__(self, path: Path, home: Path | None = None) -> None:
        """Open (creating it and its folders) `path`; with `home`, no link below the home is followed (LinkRefused)."""
        self.path = path
        self.fd = self._open(path, home)
        if os.fstat(self.fd).st_nlink > 1:
            # never written in place: a partial file that shares its inode (an adoption from the Hugging Face
            # cache that a crash or a pause cut short) is replaced by a file of its own
            os.close(self.fd)
            if home is not None:
                safefs.unlink(home, path)
            else:
                os.unlink(path)
            self.fd = self._open(path, home)

    @staticmethod
    def _open(path: Path, home: Path | None) -> int:
        if home is not None:
            return safefs.open_file(home, path, os.O_RDWR | os.O_CREAT, 0o600, create_parents=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)

    def write(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write all of `data` at `offset` (OSError ENOSPC when the disk is full)."""
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n

    def start_writeback(self, offset: int, length: int) -> None:
        """Ask the kernel to start writing [offset, offset+length) to disk now (no wait; a hint where unsupported)."""
        if _sync_file_range is not None:
            _sync_file_range(self.fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    def read(self, offset: int, length: int) -> bytes:
        """Read up to `length` bytes at `offset`."""
        return os.pread(self.fd, length, offset)

    def readinto(self, offset: int, view: memoryview) -> int:
        """Read into `view` at `offset` until it is full or the file ends; the bytes read."""
        got = 0
        while got < len(view):
            n = os.preadv(self.fd, [view[got:]], offset + got)
            if n == 0:
                break
            got += n
        return got

    def flush(self) -> None:
        """Make written data durable (fdatasync)."""
        os.fdatasync(self.fd)

    def size(self) -> int:
        """The file's current size."""
        return os.fstat(self.fd).st_size

    def truncate(self, size: int) -> None:
        """Cut or extend the file to `size` bytes."""
        os.ftruncate(self.fd, size)

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


Opener = Callable[[Path], PartialFile]
"""How the download engine opens partial files; tests inject one that fails like a full disk."""
