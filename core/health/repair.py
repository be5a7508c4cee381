"""Repairing model files: piece-level fixes through a journal, whole-file redownloads through a temp file.

integrity_fix
    The broken pieces are fetched with Range requests and each is checked
    against its recorded piece hash (in the algorithm it was recorded with), then written to a journal in
    `partial/.repair/<key>/` (data file, fsync), and the journal is committed by
    atomically writing `journal.json`. Only then are the pieces written in
    place (and the size cut or extended to the catalog's), the file fsynced,
    and the whole-file sha256 confirmed (the file's pieces are hashed again in
    the same pass and recorded in PIECE_ALGO). The journal is deleted last.
    A crash before the commit leaves the file untouched (the uncommitted
    journal is deleted at the next start); a crash after it is finished at the
    next start by replaying the journal, which writes the same good bytes
    again. Every byte ever written in place is a verified good byte, so the
    file can only get closer to right, never worse.

redownload
    The whole file is fetched into `partial/.redownload/<key>/data`, piece by
    piece, each piece flushed and recorded in `progress.json`, so an
    interrupted redownload resumes after its last flushed piece. The finished
    file is checked against its sha256, then renamed over the original; the
    directory is fsynced.

Every write, rename and delete goes through `core.safefs`: a symbolic link at
any level below the home is refused and left alone, never written through.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Awaitable, Callable, Sequence

from mavail.core.errors import IntegrityError, InvalidState, MavailError, SourceUnavailable
from mavail.core import crash, safefs
from mavail.core.health.scan import CHUNK, TEMP_SUFFIX, ManifestFile, ReadBudget, _symlink_component
from mavail.core.piecehash import PIECE_ALGO, new_piece_hasher, piece_digest

log = logging.getLogger("mavail.health")

FetchRange = Callable[..., Awaitable[bytes]]


async def simple_fetch_range(client: Any, urls: Sequence[str], start: int, length: int, **_: Any) -> bytes:
    """A plain `FetchRange` (one Range GET per URL in turn) for when none with retries and mirrors is given."""
    import httpx  # only repairs fetch: most engines never load it

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


def target_path(base: Path, rel: str) -> Path:
    """The file's path, refusing one whose directories (from the version directory down) contain a symlink."""
    link = _symlink_component(base, rel)
    if link is not None:
        log.warning("refused to write %s: %s is a symbolic link (left alone)", rel, link)
        raise safefs.LinkRefused(f"{rel}: {link} is a symbolic link; mavail does not write through it, move it away by hand", file=rel, link=link)
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
    piece_algo: str = PIECE_ALGO


# --- journal ------------------------------------------------------------------------
def write_journal_piece(data_fh: Any, data: bytes) -> int:
    """Append one piece to the journal's data file; return its offset there."""
    off = data_fh.tell()
    data_fh.write(data)
    return off


def commit_journal(jdir: Path, record: dict[str, Any], data_fh: Any, home: Path) -> None:
    """fsync the data, then write journal.json atomically: from here on the repair will be finished."""
    data_fh.flush()
    os.fsync(data_fh.fileno())
    data_fh.close()
    safefs.atomic_write(home, jdir / "journal.json", json.dumps(record).encode())


def apply_journal(jdir: Path, base: Path, home: Path) -> tuple[int, int, int]:
    """Write a committed journal's pieces in place, set the size, fsync; return the file's (size, mtime_ns, inode).

    Idempotent: replaying it twice writes the same bytes twice.
    """
    rec = json.loads((jdir / "journal.json").read_text())
    p = target_path(base, rec["path"])
    fd = safefs.open_file(home, p, os.O_WRONLY)
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


def sha256_and_pieces(path: Path, piece_size: int) -> tuple[str, list[str]]:
    """sha256 of a file (not following a symlink) and its PIECE_ALGO piece hashes of `piece_size`, in one read."""
    piece_size = piece_size if piece_size > 0 else 1 << 62
    whole = hashlib.sha256()
    pieces: list[str] = []
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        pos = 0
        piece = new_piece_hasher()
        in_piece = 0
        while True:
            want = min(CHUNK, piece_size - in_piece)
            n = os.preadv(fd, [view[:want]], pos)
            if n <= 0:
                break
            whole.update(view[:n])
            piece.update(view[:n])
            pos += n
            in_piece += n
            if in_piece == piece_size:
                pieces.append(piece.hexdigest())
                piece, in_piece = new_piece_hasher(), 0
        if in_piece:
            pieces.append(piece.hexdigest())
    finally:
        os.close(fd)
    return whole.hexdigest(), pieces


def discard(jdir: Path, home: Path) -> None:
    """Remove a journal (or redownload) directory, never following a link on the way."""
    try:
        safefs.remove_tree(home, jdir)
    except (OSError, MavailError):
        log.warning("could not remove %s", jdir, exc_info=True)


def pending_journals(repair_dir: Path) -> list[tuple[Path, dict[str, Any] | None]]:
    """Journal directories left by a crash: (dir, record) when committed, (dir, None) when not."""
    out: list[tuple[Path, dict[str, Any] | None]] = []
    if not repair_dir.is_dir() or repair_dir.is_symlink():
        return out
    for d in sorted(repair_dir.iterdir()):
        if d.is_symlink() or not d.is_dir():
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


def unshare(home: Path, path: Path) -> bool:
    """Give a file that is hard-linked elsewhere (a Hugging Face cache blob it was taken from) a copy of its own,
    renamed over it, so a repair's writes in place never reach the other name; True when it copied (blocking)."""
    try:
        st = safefs.lstat(home, path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_nlink <= 1:
        return False
    tmp = path.with_name(path.name + ".unshare")
    safefs.unlink(home, tmp)
    src = safefs.open_file(home, path, os.O_RDONLY)
    try:
        out = safefs.open_file(home, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, st.st_mode & 0o777)
        try:
            pos = 0
            while pos < st.st_size:
                try:
                    n = os.copy_file_range(src, out, min(st.st_size - pos, 1 << 30), pos, pos)
                except OSError as exc:
                    if exc.errno not in (errno.ENOSYS, errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    data = os.pread(src, CHUNK, pos)
                    n = os.pwrite(out, data, pos) if data else 0
                if n == 0:
                    raise InvalidState(f"{path} ended while it was being copied", file=str(path))
                pos += n
            os.fsync(out)
        finally:
            os.close(out)
    finally:
        os.close(src)
    safefs.replace(home, tmp, path)
    log.info("%s was hard-linked elsewhere: it has its own copy now, before it is written in place", path)
    return True


# --- the repairs --------------------------------------------------------------------
async def integrity_fix(
    *, client: Any, fetch: FetchRange, to_thread: Callable[..., Awaitable[Any]], repair_dir: Path, base: Path, home: Path, model_id: str,
    version: str, f: ManifestFile, broken: Sequence[int], piece_hashes: Sequence[str], piece_size: int, piece_algo: str = PIECE_ALGO,
) -> RepairOutcome:
    """Fetch only the broken pieces, journal them, write them in place, confirm the whole-file sha256.

    Each fetched piece is compared with its recorded hash in `piece_algo`; the repaired file's
    pieces are returned in PIECE_ALGO, to be recorded with it.
    """
    p = target_path(base, f.path)
    await to_thread(safefs.ensure_dir, home, p.parent)  # refuse a link anywhere above the file before fetching anything
    await to_thread(unshare, home, p)
    jdir = repair_dir / journal_key(model_id, version, f.path)
    await to_thread(discard, jdir, home)

    def open_data() -> Any:
        safefs.ensure_dir(home, jdir)
        return os.fdopen(safefs.open_file(home, jdir / "data", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb")

    data_fh = await to_thread(open_data)
    fetched = 0
    record: dict[str, Any] = {"model_id": model_id, "version": version, "path": f.path, "target_size": f.size, "sha256": f.sha256, "pieces": []}
    try:
        for idx in broken:
            off = idx * piece_size
            length = min(piece_size, f.size - off)
            if length <= 0:
                continue
            blob = await fetch(client, list(f.urls), off, length)
            fetched += len(blob)
            matches = await to_thread(lambda b=blob: piece_digest(b, piece_algo) == piece_hashes[idx])
            if len(blob) != length or not matches:
                raise IntegrityError(f"{f.path}: piece {idx} from the source does not match its recorded {piece_algo} hash", file=f.path, piece=idx)
            # the journal checks its own bytes with sha256 at replay, whatever the pieces' algorithm
            digest = await to_thread(lambda b=blob: hashlib.sha256(b).hexdigest())
            data_off = await to_thread(write_journal_piece, data_fh, blob)
            record["pieces"].append({"idx": idx, "offset": off, "length": length, "sha256": digest, "data_offset": data_off})
        await to_thread(commit_journal, jdir, record, data_fh, home)
    except BaseException:
        data_fh.close()
        await to_thread(discard, jdir, home)
        raise
    crash.point("repair.committed")
    try:
        sig = await to_thread(apply_journal, jdir, base, home)
    except BaseException:
        await to_thread(discard, jdir, home)
        raise
    digest, new_pieces = await to_thread(sha256_and_pieces, p, piece_size)
    await to_thread(discard, jdir, home)
    if digest != f.sha256:
        raise IntegrityError(f"{f.path} still does not match its sha256 after the piece repair", file=f.path)
    log.info("integrity_fix %s %s %s: %d piece(s), %d bytes fetched", model_id, version, f.path, len(record["pieces"]), fetched)
    return RepairOutcome(f.path, "integrity_fix" if record["pieces"] else "truncate", fetched, sig, new_pieces, piece_size)


# --- redownload: fetched into partial/.redownload/<key>/, resumable ------------------------
def _load_progress(home: Path, rdir: Path, f: ManifestFile, step: int) -> tuple[int, list[str], Any]:
    """Open (or create) the redownload's data file; return (verified bytes to keep, their piece hashes, whole-file hasher).

    The kept prefix is what `progress.json` says was flushed, for the same file, size,
    sha256, piece size and piece algorithm, and whose pieces still hash as recorded; the rest is dropped.
    """
    safefs.ensure_dir(home, rdir)
    fd = safefs.open_file(home, rdir / "data", os.O_RDWR | os.O_CREAT)
    whole = hashlib.sha256()
    kept: list[str] = []
    try:
        rec = json.loads((rdir / "progress.json").read_text())
        same = (rec.get("path"), rec.get("size"), rec.get("sha256"), rec.get("piece_size"), rec.get("algo", "sha256")) == (
            f.path, f.size, f.sha256, step, PIECE_ALGO)
        hashes = [str(h) for h in rec.get("pieces", [])] if same else []
    except (OSError, ValueError, AttributeError):
        hashes = []
    off = 0
    for h in hashes:
        length = min(step, f.size - off)
        if length <= 0:
            break
        blob = os.pread(fd, length, off)
        if len(blob) != length or piece_digest(blob) != h:
            break
        whole.update(blob)
        kept.append(h)
        off += length
    os.ftruncate(fd, off)
    return fd, kept, whole


def _save_progress(home: Path, rdir: Path, fd: int, f: ManifestFile, step: int, pieces: list[str]) -> None:
    """Make the written pieces durable, then record them: a restart keeps exactly these."""
    os.fdatasync(fd)
    rec = {"path": f.path, "size": f.size, "sha256": f.sha256, "piece_size": step, "algo": PIECE_ALGO, "pieces": pieces}
    safefs.atomic_write(home, rdir / "progress.json", json.dumps(rec).encode())


async def redownload(
    *, client: Any, fetch: FetchRange, to_thread: Callable[..., Awaitable[Any]], base: Path, home: Path, redownload_dir: Path,
    model_id: str, version: str, f: ManifestFile, piece_size: int,
    replacing: Callable[[], AbstractContextManager[None]] | None = None,
) -> RepairOutcome:
    """Fetch the whole file into `redownload_dir`, piece by flushed piece, verify it, rename it over the original.

    An interrupted redownload resumes after its last flushed piece. `replacing`
    is entered on the event loop just before the rename and held until it is done:
    it raises to forbid the rename (a lease), and while held no lease is granted.
    The fetched data is kept when the rename is forbidden, for the next try.
    """
    if not f.urls:
        raise SourceUnavailable(f"{f.path}: no URL known for this version", file=f.path)
    p = target_path(base, f.path)
    await to_thread(safefs.ensure_dir, home, p.parent)  # a link anywhere above the file: refused before any fetch
    rdir = redownload_dir / journal_key(model_id, version, f.path)
    step = piece_size if piece_size > 0 else 8 * 1024 * 1024
    fd, pieces, whole = await to_thread(_load_progress, home, rdir, f, step)
    resumed = len(pieces)
    fetched = 0
    try:
        off = min(len(pieces) * step, f.size)
        while off < f.size:
            length = min(step, f.size - off)
            blob = await fetch(client, list(f.urls), off, length)
            fetched += len(blob)
            if len(blob) != length:
                raise SourceUnavailable(f"{f.path}: short read from the source", file=f.path)

            def put(b: bytes = blob, at: int = off) -> None:
                whole.update(b)
                pieces.append(piece_digest(b))
                view = memoryview(b)
                pos = at
                while view:
                    n = os.pwrite(fd, view, pos)
                    view = view[n:]
                    pos += n
                _save_progress(home, rdir, fd, f, step, pieces)

            await to_thread(put)
            off += length
        if whole.hexdigest() != f.sha256:
            os.close(fd)
            fd = -1
            await to_thread(discard, rdir, home)
            raise IntegrityError(f"{f.path}: the downloaded file does not match its sha256", file=f.path)
        def finish() -> tuple[int, int, int]:
            os.fchmod(fd, 0o644)
            os.fsync(fd)
            safefs.replace(home, rdir / "data", p, create_parents=True)
            st = safefs.lstat(home, p)
            return (st.st_size, st.st_mtime_ns, st.st_ino)

        with replacing() if replacing is not None else nullcontext():
            sig = await to_thread(finish)
    finally:
        if fd >= 0:
            os.close(fd)
    await to_thread(discard, rdir, home)
    log.info("redownload %s: %d bytes fetched%s", f.path, fetched, f" (resumed after {resumed} flushed piece(s))" if resumed else "")
    return RepairOutcome(f.path, "redownload", fetched, sig, pieces, step)


def fix_permissions(base: Path, rel: str, home: Path) -> tuple[int, int, int]:
    """Give the owner read (and write) access back to a regular file; return its new stat signature."""
    p = target_path(base, rel)
    dfd, name = safefs.open_parent(home, p)
    try:
        # O_PATH opens even a file without read permission, and the descriptor pins the inode checked below:
        # a link swapped in by name afterwards is never the one changed
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidState(f"{rel} is not a regular file", file=rel) from None
            raise
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # an O_PATH|O_NOFOLLOW open of a link gives the link itself
            raise InvalidState(f"{rel} is not a regular file", file=rel)
        if st.st_nlink > 1:
            # the inode is shared (a Hugging Face cache blob it was taken from): its mode is not mavail's to change
            raise InvalidState(f"{rel} is hard-linked with another file (such as a Hugging Face cache blob), whose mode "
                               f"is not changed; a redownload gives it a file of its own", file=rel)
        os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(st.st_mode) | stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def remove_temps(directory: Path, home: Path) -> int:
    """Delete the repair's temp files left in a version directory by a crash; return how many.

    A version directory reached through a link is left alone.
    """
    n = 0
    try:
        for dfd, _root, name in safefs.walk_files(home, directory):
            if name.endswith(TEMP_SUFFIX):
                try:
                    os.unlink(name, dir_fd=dfd)
                    n += 1
                except OSError:
                    pass
    except (OSError, MavailError):
        return n
    return n
