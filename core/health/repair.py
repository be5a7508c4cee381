"""Repairing model files: piece-level fixes through a journal, whole-file redownloads through a temp file.

integrity_fix
    The broken pieces are fetched with Range requests and each is checked
    against its recorded piece sha256, then written to a journal in
    `partial/repair/<key>/` (data file, fsync), and the journal is committed by
    atomically writing `journal.json`. Only then are the pieces written in
    place (and the size cut or extended to the catalog's), the file fsynced,
    and the whole-file sha256 confirmed. The journal is deleted last.
    A crash before the commit leaves the file untouched (the uncommitted
    journal is deleted at the next start); a crash after it is finished at the
    next start by replaying the journal, which writes the same good bytes
    again. Every byte ever written in place is a verified good byte, so the
    file can only get closer to right, never worse.

redownload
    The whole file is fetched into a temp file beside it, hashed on the way,
    fsynced and renamed over the original (or over a symlink, replacing the
    link itself, never writing through it); the directory is fsynced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Awaitable, Callable, Sequence

from core.errors import IntegrityError, InvalidState, SourceUnavailable
from core.fsutil import atomic_write_bytes, fsync_dir
from core import crash
from core.health.scan import CHUNK, TEMP_SUFFIX, ManifestFile, ReadBudget, _symlink_component

log = logging.getLogger("mavail.health")

FetchRange = Callable[..., Awaitable[bytes]]


async def _simple_fetch_range(client: Any, urls: Sequence[str], start: int, length: int, **_: Any) -> bytes:
    """Fallback used only when the downloads engine's `fetch_range` is not installed: one Range GET per URL in turn."""
    import httpx

    if length == 0:
        return b""
    last: Exception | None = None
    for url in urls:
        try:
            r = await client.get(url, headers={"Range": f"bytes={start}-{start + length - 1}"})
            if r.status_code == 206 and len(r.content) == length:
                return r.content
            if r.status_code == 200 and len(r.content) >= start + length:
                return r.content[start : start + length]
            last = SourceUnavailable(f"{url} answered {r.status_code}")
        except httpx.HTTPError as exc:
            last = exc
    raise SourceUnavailable("every URL of the file failed", urls=len(urls), reason=type(last).__name__ if last else None)


def get_fetch_range() -> FetchRange:
    """The downloads engine's `fetch_range` (retries, mirrors) when present, else a plain fallback."""
    try:
        from core.downloads.transfer import fetch_range  # type: ignore[import-not-found]

        return fetch_range  # type: ignore[no-any-return]
    except ImportError:
        return _simple_fetch_range


def target_path(base: Path, rel: str) -> Path:
    """The file's path, refusing one whose directories (from the version directory down) contain a symlink."""
    link = _symlink_component(base, rel)
    if link is not None:
        raise InvalidState(f"{rel}: {link} is a symlink; mavail does not write through it, move it away by hand", file=rel, link=link)
    return base.joinpath(*PurePosixPath(rel).parts)


def journal_key(model_id: str, version: str, rel: str) -> str:
    """A journal directory name for one file."""
    return f"{model_id}--{version}--{hashlib.sha256(rel.encode()).hexdigest()[:16]}"


@dataclass
class RepairOutcome:
    """What repairing one file did."""

    path: str
    action: str
    bytes_fetched: int
    stat_sig: tuple[int, int, int] | None = None
    pieces: list[str] | None = None
    piece_size: int | None = None


# --- journal ------------------------------------------------------------------------
def write_journal_piece(data_fh: Any, data: bytes) -> int:
    """Append one piece to the journal's data file; return its offset there."""
    off = data_fh.tell()
    data_fh.write(data)
    return off


def commit_journal(jdir: Path, record: dict[str, Any], data_fh: Any) -> None:
    """fsync the data, then write journal.json atomically: from here on the repair will be finished."""
    data_fh.flush()
    os.fsync(data_fh.fileno())
    data_fh.close()
    atomic_write_bytes(jdir / "journal.json", json.dumps(record).encode())
    fsync_dir(jdir)


def apply_journal(jdir: Path, base: Path) -> tuple[int, int, int]:
    """Write a committed journal's pieces in place, set the size, fsync; return the file's (size, mtime_ns, inode).

    Idempotent: replaying it twice writes the same bytes twice.
    """
    rec = json.loads((jdir / "journal.json").read_text())
    p = target_path(base, rec["path"])
    fd = os.open(p, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidState(f"{rec['path']} is not a regular file", file=rec["path"])
        with open(jdir / "data", "rb") as data:
            for i, piece in enumerate(rec["pieces"]):
                data.seek(piece["data_offset"])
                blob = data.read(piece["length"])
                if hashlib.sha256(blob).hexdigest() != piece["sha256"]:
                    raise IntegrityError(f"repair journal of {rec['path']} is damaged", file=rec["path"])
                os.pwrite(fd, blob, piece["offset"])
                if i == 0:
                    crash.point("repair.mid_apply")
        if os.fstat(fd).st_size != rec["target_size"]:
            os.ftruncate(fd, rec["target_size"])
        os.fsync(fd)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def whole_sha256(path: Path, budget: ReadBudget | None = None) -> str:
    """sha256 of a file (not following a symlink), in chunks."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as fh:
            while True:
                n = fh.readinto(view)
                if not n:
                    break
                h.update(view[:n])
                if budget is not None:
                    budget.consume(n)
    finally:
        os.close(fd)
    return h.hexdigest()


def discard(jdir: Path) -> None:
    """Remove a journal directory."""
    shutil.rmtree(jdir, ignore_errors=True)


def pending_journals(repair_dir: Path) -> list[tuple[Path, dict[str, Any] | None]]:
    """Journal directories left by a crash: (dir, record) when committed, (dir, None) when not."""
    out: list[tuple[Path, dict[str, Any] | None]] = []
    if not repair_dir.is_dir():
        return out
    for d in sorted(repair_dir.iterdir()):
        if not d.is_dir():
            continue
        j = d / "journal.json"
        rec = None
        if j.exists():
            try:
                rec = json.loads(j.read_text())
            except (OSError, ValueError):
                rec = None
        out.append((d, rec))
    return out


# --- the repairs --------------------------------------------------------------------
async def integrity_fix(
    *, client: Any, fetch: FetchRange, to_thread: Callable[..., Awaitable[Any]], repair_dir: Path, base: Path, model_id: str, version: str,
    f: ManifestFile, broken: Sequence[int], piece_hashes: Sequence[str], piece_size: int,
) -> RepairOutcome:
    """Fetch only the broken pieces, journal them, write them in place, confirm the whole-file sha256."""
    p = target_path(base, f.path)
    jdir = repair_dir / journal_key(model_id, version, f.path)
    await to_thread(discard, jdir)
    jdir.mkdir(parents=True, exist_ok=True)
    fetched = 0
    record: dict[str, Any] = {"model_id": model_id, "version": version, "path": f.path, "target_size": f.size, "sha256": f.sha256, "pieces": []}
    data_fh = open(jdir / "data", "wb")
    try:
        for idx in broken:
            off = idx * piece_size
            length = min(piece_size, f.size - off)
            if length <= 0:
                continue
            blob = await fetch(client, list(f.urls), off, length)
            fetched += len(blob)
            digest = await to_thread(lambda b=blob: hashlib.sha256(b).hexdigest())
            if len(blob) != length or digest != piece_hashes[idx]:
                raise IntegrityError(f"{f.path}: piece {idx} from the source does not match its recorded sha256", file=f.path, piece=idx)
            data_off = await to_thread(write_journal_piece, data_fh, blob)
            record["pieces"].append({"idx": idx, "offset": off, "length": length, "sha256": digest, "data_offset": data_off})
        await to_thread(commit_journal, jdir, record, data_fh)
    except BaseException:
        data_fh.close()
        await to_thread(discard, jdir)
        raise
    crash.point("repair.committed")
    sig = await to_thread(apply_journal, jdir, base)
    digest = await to_thread(whole_sha256, p)
    await to_thread(discard, jdir)
    if digest != f.sha256:
        raise IntegrityError(f"{f.path} still does not match its sha256 after the piece repair", file=f.path)
    log.info("integrity_fix %s %s %s: %d piece(s), %d bytes fetched", model_id, version, f.path, len(record["pieces"]), fetched)
    return RepairOutcome(f.path, "integrity_fix" if record["pieces"] else "truncate", fetched, sig)


async def redownload(
    *, client: Any, fetch: FetchRange, to_thread: Callable[..., Awaitable[Any]], base: Path, f: ManifestFile, piece_size: int,
) -> RepairOutcome:
    """Fetch the whole file into a temp file beside it, verify it, rename it over the original."""
    if not f.urls:
        raise SourceUnavailable(f"{f.path}: no URL known for this version", file=f.path)
    p = target_path(base, f.path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    whole = hashlib.sha256()
    pieces: list[str] = []
    fetched = 0
    fh = open(tmp, "wb")
    try:
        off = 0
        step = piece_size if piece_size > 0 else 8 * 1024 * 1024
        while off < f.size:
            length = min(step, f.size - off)
            blob = await fetch(client, list(f.urls), off, length)
            fetched += len(blob)
            if len(blob) != length:
                raise SourceUnavailable(f"{f.path}: short read from the source", file=f.path)

            def put(b: bytes = blob) -> None:
                whole.update(b)
                pieces.append(hashlib.sha256(b).hexdigest())
                fh.write(b)

            await to_thread(put)
            off += length

        def finish() -> tuple[int, int, int]:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            if whole.hexdigest() != f.sha256:
                raise IntegrityError(f"{f.path}: the downloaded file does not match its sha256", file=f.path)
            os.chmod(tmp, 0o644)
            os.replace(tmp, p)  # replaces a symlink itself, never its target
            fsync_dir(p.parent)
            st = os.lstat(p)
            return (st.st_size, st.st_mtime_ns, st.st_ino)

        sig = await to_thread(finish)
    except BaseException:
        fh.close()
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    log.info("redownload %s: %d bytes fetched", f.path, fetched)
    return RepairOutcome(f.path, "redownload", fetched, sig, pieces, piece_size)


def fix_permissions(base: Path, rel: str) -> tuple[int, int, int]:
    """Give the owner read (and write) access back to a regular file; return its new stat signature."""
    p = target_path(base, rel)
    st = os.lstat(p)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidState(f"{rel} is not a regular file", file=rel)
    os.chmod(p, stat.S_IMODE(st.st_mode) | stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP)
    st = os.lstat(p)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def remove_temps(directory: Path) -> int:
    """Delete the repair's temp files left in a version directory by a crash; return how many."""
    n = 0
    if not directory.is_dir() or directory.is_symlink():
        return 0
    for root, dnames, fnames in os.walk(directory, followlinks=False):
        for name in fnames:
            if name.endswith(TEMP_SUFFIX):
                try:
                    os.unlink(os.path.join(root, name))
                    n += 1
                except OSError:
                    pass
    return n
