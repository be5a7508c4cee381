"""Reuse of files the user already has: Hugging Face cache blobs (by sha256) and `sources.local_dirs` (by size),
verified, then linked.

`huggingface_hub` keeps each LFS file of a repository once, at
`<cache>/models--ORG--NAME/blobs/<sha256>`, and a plain git file under its git
blob id (the snapshot folders hold symlinks to those blobs). Before a file with
a known sha256 or blob id is fetched, the caches the
Hub's tools use (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
`~/.cache/huggingface/hub`) are searched for that blob: the repository's own
folder first, then every other repository's (the same weights are often in
several). A blob of the right size is read through a descriptor opened without
following links, hashed (sha256 and the piece hashes, off the event loop), and
only when it matches is it hard-linked into mavail's partial path (copied, and
hashed as copied, where a link is impossible: another filesystem, protected
hard links, another user's file). Then the folders of `sources.local_dirs`
(a ComfyUI `models/` tree, say) are searched for regular files of the file's
size, each verified the same way until one matches. The foreign cache is only ever read: mavail never writes into a
file whose inode is shared (repairs first give such a file its own copy).

The `adopted_files` table (this module owns it) records which files came from
where; `model_fields` puts them in `models.status` as `adopted_files`.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import stat
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mavail.core import safefs
from mavail.core.downloads.hf import hf_home, parse_resolve_url
from mavail.core.downloads.transfer import FileJob
from mavail.core.piecehash import new_piece_hasher

log = logging.getLogger("mavail.downloads")

CHUNK = 4 * 1024 * 1024
_LINK_FAILURES = (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.ENOENT, errno.EOPNOTSUPP)


def hub_cache_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The Hugging Face caches to look in: the one `huggingface_hub` would use (`HF_HUB_CACHE`,
    `HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`), then the default `~/.cache/huggingface/hub`."""
    env = os.environ if environ is None else environ
    first = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    out = [Path(first).expanduser()] if first else [hf_home(env) / "hub"]
    default = Path(env.get("HOME") or Path.home()).expanduser() / ".cache" / "huggingface" / "hub"
    if default not in out:
        out.append(default)
    return out


def repo_folder(repo_id: str) -> str:
    """The cache folder name of a model repository (`models--ORG--NAME`)."""
    return "models--" + repo_id.replace("/", "--")


def find_blob(dirs: Sequence[Path], sha256: str, size: int, repo_id: str | None = None) -> Path | None:
    """A regular file of `size` bytes named `sha256` in some repository's `blobs/` of the caches, or None (blocking)."""
    for d in dirs:
        candidates: list[Path] = []
        if repo_id:
            candidates.append(d / repo_folder(repo_id) / "blobs" / sha256)
        try:
            with os.scandir(d) as it:
                candidates += [d / e.name / "blobs" / sha256 for e in it if e.name.startswith("models--")]
        except OSError:
            continue
        for c in candidates:
            try:
                st = os.lstat(c)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_size == size:
                return c
    return None


MAX_WALK_ENTRIES = 200_000  # per folder of sources.local_dirs: a mistaken "/" costs a bounded scan, not an hour


def find_same_size(dirs: Sequence[str], size: int) -> list[Path]:
    """Regular files of exactly `size` bytes under the folders (links not followed), nearest first (blocking)."""
    out: list[Path] = []
    for top in dirs:
        seen = 0
        for root, subdirs, names in os.walk(os.path.expanduser(top), followlinks=False):
            subdirs.sort()
            for name in sorted(names):
                seen += 1
                p = Path(root) / name
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_size == size:
                    out.append(p)
            if seen > MAX_WALK_ENTRIES:
                log.warning("sources.local_dirs: stopped looking in %s after %d entries", top, seen)
                break
    return out


@dataclass(frozen=True)
class Adopted:
    """A file taken from a local copy: where from, how (hardlink or copy), its sha256 and piece hashes."""

    path: str
    source_path: str
    method: str
    sha256: str
    pieces: dict[int, str]
    origin: str = "hf_cache"


PieceSink = Callable[[int, str, int], None]
"""Told (piece index, its hash, its length) as each piece of an adoption is hashed (from the worker thread)."""


def _hash_fd(fd: int, size: int, piece_size: int, out_fd: int | None = None,
             on_piece: PieceSink | None = None, git_id: bool = True) -> tuple[str, str | None, dict[int, str]]:
    """sha256, git blob id (None unless `git_id`) and piece hashes of `size` bytes read from `fd` (written to `out_fd` as
    read, when given)."""
    whole = hashlib.sha256()
    git = hashlib.sha1(b"blob %d\0" % size) if git_id else None
    pieces: dict[int, str] = {}
    piece = new_piece_hasher()
    in_piece = idx = pos = 0
    while pos < size:
        data = os.pread(fd, min(CHUNK, size - pos), pos)
        if not data:
            raise OSError(errno.EIO, "the file ended early")
        if out_fd is not None:
            view = memoryview(data)
            off = pos
            while view:
                n = os.pwrite(out_fd, view, off)
                view, off = view[n:], off + n
        whole.update(data)
        if git is not None:
            git.update(data)
        view = memoryview(data)
        while view:
            take = min(len(view), piece_size - in_piece)
            piece.update(view[:take])
            in_piece += take
            view = view[take:]
            if in_piece == piece_size:
                pieces[idx] = piece.hexdigest()
                if on_piece is not None:
                    on_piece(idx, pieces[idx], piece_size)
                idx, in_piece, piece = idx + 1, 0, new_piece_hasher()
        pos += len(data)
    if in_piece or size == 0:
        pieces[idx] = piece.hexdigest()
        if on_piece is not None:
            on_piece(idx, pieces[idx], in_piece)
    return whole.hexdigest(), git.hexdigest() if git is not None else None, pieces


def adopt_file(home: Path, src: Path, partial: Path, size: int, sha256: str | None, piece_size: int,
               on_piece: PieceSink | None = None, git_sha1: str | None = None) -> tuple[str, str, dict[int, str]] | None:
    """Put a verified copy of `src` at `partial` (a hard link where possible); (method, its sha256, piece hashes), or
    None when `src` is not what it should be: its sha256, else its git blob id (`git_sha1`, a plain git file's only
    hash). Blocking; `src` is only read, and no link below `home` is followed."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return None
        safefs.unlink(home, partial)
        dfd, name = safefs.open_parent(home, partial, create=True)
        try:
            try:
                if st.st_uid != os.geteuid():
                    raise OSError(errno.EPERM, "another user's file is copied, not linked")
                # link the very inode opened above, not whatever the path names by now
                os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dfd, follow_symlinks=True)
                linked = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if linked.st_ino != st.st_ino or linked.st_dev != st.st_dev:
                    os.unlink(name, dir_fd=dfd)
                    raise OSError(errno.EXDEV, "linked another file")
                # a file the catalog gives a sha256 for is checked by it alone: its git blob id would cost a second hash
                digest, blob_id, pieces = _hash_fd(fd, size, piece_size, on_piece=on_piece, git_id=not sha256)
                method = "hardlink"
            except OSError as exc:
                if exc.errno not in _LINK_FAILURES:
                    raise
                out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
                try:
                    digest, blob_id, pieces = _hash_fd(fd, size, piece_size, out_fd=out, on_piece=on_piece, git_id=not sha256)
                    os.fdatasync(out)
                finally:
                    os.close(out)
                method = "copy"
            if (sha256 and digest != sha256) or (not sha256 and blob_id != git_sha1):
                os.unlink(name, dir_fd=dfd)
                log.warning("%s does not match its name (sha256 %s, blob id %s): not reused", src, digest, blob_id)
                return None
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return method, digest, pieces
    finally:
        os.close(fd)


class CacheAdopter:
    """Finds, verifies and takes files from the user's Hugging Face caches; also a status provider (`adopted_files`)."""

    def __init__(self, *, db: Any, home: Path, environ: Mapping[str, str] | None, status_changed: Callable[[list[str]], None],
                 clock: Callable[[], float], local_dirs: Callable[[], Sequence[str]] = lambda: ()) -> None:
        """`environ` (None: os.environ) names the caches; `local_dirs` gives the folders of `sources.local_dirs` (read at
        each use); `status_changed` is told when a model's record changes."""
        self._local_dirs = local_dirs
        self._db = db
        self._home = home
        self._environ = environ
        self._status_changed = status_changed
        self._clock = clock
        self._records: dict[str, dict[str, dict[str, Any]]] = {}  # model_id -> path -> record (latest version)

    async def load(self) -> None:
        """Read the records of earlier adoptions."""
        def q(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute("SELECT model_id, version, path, origin, source_path, method, adopted_at FROM adopted_files "
                                "ORDER BY adopted_at").fetchall()

        for r in await self._db.read(q):
            self._remember(r[0], r[1], r[2], r[3], r[4], r[5], r[6])

    def _remember(self, model_id: str, version: str, path: str, origin: str, source_path: str, method: str, at: float) -> None:
        per = self._records.setdefault(model_id, {})
        if any(rec["version"] != version for rec in per.values()):
            newest = max(rec["adopted_at"] for rec in per.values())
            if at < newest:
                return
            per.clear()
        per[path] = {"path": path, "version": version, "from": origin, "source_path": source_path, "method": method, "adopted_at": at}

    async def in_cache(self, job: FileJob) -> bool:
        """Whether a Hugging Face cache holds a blob of the file's name and size (not yet verified)."""
        if not (job.sha256 or job.git_sha1) or job.size == 0:
            return False
        parts = parse_resolve_url(job.urls[0]) if job.urls else None
        found = await asyncio.to_thread(find_blob, hub_cache_dirs(self._environ), job.sha256 or job.git_sha1 or "", job.size,
                                        parts[1] if parts else None)
        return found is not None

    async def adopt(self, model_id: str, version: str, job: FileJob, partial: Path, piece_size: int,
                    on_piece: PieceSink | None = None) -> Adopted | None:
        """Take `job`'s bytes from a cache blob into `partial` when one matches its sha256; None when none does (or
        the copy failed: the network then takes over). `on_piece` is called on the event loop as pieces are verified,
        so progress moves at disk speed."""
        if not (job.sha256 or job.git_sha1) or job.size == 0:
            return None
        parts = parse_resolve_url(job.urls[0]) if job.urls else None
        repo_id = parts[1] if parts else None
        dirs = hub_cache_dirs(self._environ)
        # the cache names an LFS blob by its sha256 and a plain git file by its blob id
        blob = await asyncio.to_thread(find_blob, dirs, job.sha256 or job.git_sha1 or "", job.size, repo_id)
        candidates: list[tuple[str, Path]] = [("hf_cache", blob)] if blob is not None else []
        local = list(self._local_dirs()) if job.sha256 else []
        if local:
            candidates += [("local_dir", p) for p in await asyncio.to_thread(find_same_size, local, job.size)]
        loop = asyncio.get_running_loop()
        sink = (lambda i, h, n: loop.call_soon_threadsafe(on_piece, i, h, n)) if on_piece is not None else None
        for origin, src in candidates:
            try:
                got = await asyncio.to_thread(adopt_file, self._home, src, partial, job.size, job.sha256, piece_size, sink,
                                              job.git_sha1)
            except OSError as exc:
                log.warning("%s: %s not taken from %s: %s", model_id, job.path, src, exc)
                got = None
            if got is not None:
                return await self._adopted(model_id, version, job, origin, src, got)
        return None

    async def _adopted(self, model_id: str, version: str, job: FileJob, origin: str, src: Path,
                       got: tuple[str, str, dict[int, str]]) -> Adopted:
        method, digest, pieces = got
        now = self._clock()
        row = (model_id, version, job.path, origin, str(src), method, now)
        await self._db.write(lambda conn: conn.execute("INSERT OR REPLACE INTO adopted_files VALUES (?,?,?,?,?,?,?)", row))
        self._remember(*row)
        self._status_changed([model_id])
        log.info("%s: %s taken from %s (%s, %s)", model_id, job.path, origin, method, src)
        return Adopted(job.path, str(src), method, digest, pieces, origin)

    def model_fields(self, model_id: str) -> dict[str, Any]:
        """`adopted_files`: the files of the model's latest download that came from a local cache, and from where."""
        per = self._records.get(model_id)
        if not per:
            return {}
        return {"adopted_files": [{k: v for k, v in rec.items() if k != "adopted_at"} for _, rec in sorted(per.items())]}
