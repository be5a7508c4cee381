"""What is on disk: which catalog models have their files present, at the right sizes, verified or not."""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from typing import Sequence

from mavail.core.catalog import FileSpec
from mavail.core.paths import HomeLayout, safe_join


@dataclass(frozen=True)
class FilePresence:
    """One catalog file as found on disk."""

    path: str
    size_bytes: int  # the catalog's size
    present: bool  # a regular file (not a symlink) of exactly that size
    actual_size: int | None  # None when absent or not a regular file
    verified: bool  # sha256 matched when last verified and size, mtime, inode are unchanged since
    is_symlink: bool = False

    def to_dict(self) -> dict[str, object]:
        """The contract's `{path, size_bytes, present, verified}` plus what was found."""
        return {
            "path": self.path,
            "size_bytes": self.size_bytes,
            "present": self.present,
            "verified": self.verified,
            "actual_size_bytes": self.actual_size,
        }


@dataclass(frozen=True)
class ModelPresence:
    """One model's files in the version directory in use."""

    model_id: str
    version: str
    directory: Path
    files: tuple[FilePresence, ...]
    scanned_at: float = field(default_factory=time.time)

    @cached_property
    def complete(self) -> bool:
        """Every file present at its size."""
        return bool(self.files) and all(f.present for f in self.files)

    @cached_property
    def missing_files(self) -> list[str]:
        """Paths that are absent (no file of any size)."""
        return [f.path for f in self.files if f.actual_size is None]

    @cached_property
    def wrong_size_files(self) -> list[str]:
        """Paths that exist with the wrong size (truncated or extended)."""
        return [f.path for f in self.files if f.actual_size is not None and not f.present]

    @cached_property
    def bytes_on_disk(self) -> int:
        """Bytes of the catalog files found in the directory."""
        return sum(f.actual_size or 0 for f in self.files)

    @cached_property
    def verified(self) -> bool:
        """Every file present and verified."""
        return self.complete and all(f.verified for f in self.files)


VerifiedIndex = dict[tuple[str, str, str], tuple[int, str, int | None, int | None]]
"""(model_id, version, path) -> (size, sha256, mtime_ns, inode) as last verified."""


def scan_model(layout: HomeLayout, model_id: str, version: str, manifest: Sequence[FileSpec], verified: VerifiedIndex) -> ModelPresence:
    """Stat every file of `manifest` under `models/<id>/<version>/` without following symlinks."""
    directory = layout.model_dir(model_id, version)
    files = []
    for f in manifest:
        p = safe_join(directory, f.path)
        try:
            st = os.lstat(p)
        except OSError:
            files.append(FilePresence(f.path, f.size, False, None, False))
            continue
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
            files.append(FilePresence(f.path, f.size, False, None, False, is_symlink=stat.S_ISLNK(st.st_mode)))
            continue
        present = st.st_size == f.size
        rec = verified.get((model_id, version, f.path))
        ok = bool(
            present
            and rec is not None
            and rec[0] == st.st_size
            and rec[1] == f.sha256
            and rec[2] == st.st_mtime_ns
            and rec[3] == st.st_ino
        )
        files.append(FilePresence(f.path, f.size, present, st.st_size, ok))
    return ModelPresence(model_id, version, directory, tuple(files))
