"""Checking files on disk: quick (stat only) and full (every byte, piece by piece), run in worker threads.

Nothing here touches the event loop or the database: the service loads what was
recorded, calls these functions in a worker thread and stores what they return.
Symlinks are never followed: paths are examined with `lstat`, files are opened
with `O_NOFOLLOW`, and a symlink anywhere between the version directory and
the file is reported as such.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

from mavail.core.piecehash import PIECE_ALGO, new_piece_hasher

# Issue types and what each one recommends. `critical` issues make a model "corrupted".
CRITICAL = "critical"
WARNING = "warning"
INFO = "info"

# Files the repair writes next to a model file while it works; never "extra unknown files".
TEMP_SUFFIX = ".mavail-repair.tmp"

CHUNK = 4 * 1024 * 1024

PROOF_SHA256 = "sha256"
"""The proof a full check names when it hashed the whole file against its sha256."""


def pieces_proof(algo: str) -> str:
    """The proof a full check names when every piece matched its recorded `algo` hash (e.g. `xxh3_128_pieces`)."""
    return f"{algo}_pieces"


@dataclass(frozen=True)
class ManifestFile:
    """One file a model version should have: path, size and whole-file sha256."""

    path: str
    size: int
    sha256: str
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verified:
    """What `installed_files` says was last verified of a file."""

    size: int
    sha256: str
    mtime_ns: int | None
    inode: int | None
    verified_at: float | None


@dataclass
class Issue:
    """One problem found with a model, with the action that fixes it."""

    type: str  # missing | truncated | extended | changed_bytes | unreadable | symlink | not_regular_file | changed_since_verified | changed_during_check | extra_file | never_verified | performance_degraded
    severity: str  # critical | warning | info
    message: str
    recommendation: str  # integrity_fix | redownload | fix_permissions | full_check | review | none
    file: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form used in results and stored checks."""
        return {"type": self.type, "severity": self.severity, "message": self.message, "recommendation": self.recommendation,
                "file": self.file, "details": self.details}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Issue":
        """Inverse of `to_dict`."""
        return cls(d["type"], d["severity"], d["message"], d["recommendation"], d.get("file"), dict(d.get("details") or {}))


@dataclass
class FileResult:
    """The state of one manifest file after a check."""

    path: str
    size: int  # expected size
    state: str  # ok | unverified | missing | truncated | extended | changed_bytes | unreadable | symlink | not_regular_file | changed
    good_bytes: int = 0  # bytes known to be right (whole file when verified; the good pieces when pieces are known)
    actual_size: int | None = None
    stat_sig: tuple[int, int, int] | None = None  # (size, mtime_ns, inode) when examined
    broken_pieces: list[int] = field(default_factory=list)
    piece_size: int | None = None
    verified: bool = False  # sha256 proven right by this check (or unchanged since a verification)
    hashed_bytes: int = 0
    new_pieces: list[str] | None = None  # PIECE_ALGO piece hashes to record (first check, or pieces recorded in an older algorithm)
    proof: str | None = None  # how a full check proved it: PROOF_SHA256 or pieces_proof(algo)
    issues: list[Issue] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (stored with the check)."""
        return {"path": self.path, "size_bytes": self.size, "state": self.state, "good_bytes": self.good_bytes,
                "actual_size_bytes": self.actual_size, "stat": list(self.stat_sig) if self.stat_sig else None,
                "broken_pieces": list(self.broken_pieces), "piece_size": self.piece_size, "verified": self.verified, "proof": self.proof}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FileResult":
        """Inverse of `to_dict` (issues are stored with the model)."""
        return cls(d["path"], d["size_bytes"], d["state"], d.get("good_bytes", 0), d.get("actual_size_bytes"),
                   tuple(d["stat"]) if d.get("stat") else None, list(d.get("broken_pieces") or []), d.get("piece_size"),
                   bool(d.get("verified")), proof=d.get("proof"))


class ReadBudget:
    """Paces reads to at most `rate()` MiB/s (0 = no limit) and stops them when `cancel` is set.

    Used from one worker thread; the rate is read at every chunk, and again at
    least every `RECHECK_S` while waiting, so a live change (a configuration
    change, or a manual check lifting a scheduled one's budget) applies to a
    check already running, even one in the middle of a long wait.
    """

    RECHECK_S = 0.1

    def __init__(self, rate: Callable[[], float] = lambda: 0.0, cancel: threading.Event | None = None) -> None:
        self._rate = rate
        self.cancel = cancel or threading.Event()
        self._t0 = time.monotonic()
        self._done = 0

    @property
    def bytes_read(self) -> int:
        """Bytes read so far under this budget (the progress of the check it paces)."""
        return self._done

    def consume(self, n: int) -> None:
        """Account for `n` bytes read; sleep if ahead of the budget; raise CheckCancelled when asked to stop."""
        if self.cancel.is_set():
            raise CheckCancelled()
        self._done += n
        while True:
            mbps = self._rate()
            if not mbps or mbps <= 0:
                return
            due = self._done / (mbps * 1024 * 1024)
            ahead = due - (time.monotonic() - self._t0)
            if ahead <= 0:
                return
            if self.cancel.wait(min(ahead, self.RECHECK_S)):
                raise CheckCancelled()


class CheckCancelled(Exception):
    """The engine is stopping: a running check gives up without recording anything."""


def _symlink_component(base: Path, rel: str) -> str | None:
    """The first path (relative to the models dir level) that is a symlink, from `base` down to `rel`'s parent."""
    cur = base
    try:
        if stat.S_ISLNK(os.lstat(cur).st_mode):
            return str(cur)
    except OSError:
        return None
    for part in PurePosixPath(rel).parts[:-1]:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return str(cur)
    return None


def _sig(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _structural(base: Path, f: ManifestFile) -> tuple[FileResult | None, os.stat_result | None]:
    """Presence, type, permission and size issues of one file; (result, None) when it cannot be hashed."""
    p = base.joinpath(*PurePosixPath(f.path).parts)
    link = _symlink_component(base, f.path)
    if link is not None:
        r = FileResult(f.path, f.size, "symlink")
        r.issues.append(Issue("symlink", CRITICAL, f"{f.path}: a directory on its path is a symlink ({link}); it is never followed",
                              "redownload", f.path, {"link": link}))
        return r, None
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        r = FileResult(f.path, f.size, "missing")
        r.issues.append(Issue("missing", CRITICAL, f"{f.path} is missing", "redownload", f.path))
        return r, None
    except OSError as exc:
        r = FileResult(f.path, f.size, "unreadable")
        r.issues.append(Issue("unreadable", CRITICAL, f"{f.path} cannot be examined ({os.strerror(exc.errno or 0)})", "fix_permissions", f.path,
                              {"errno": exc.errno}))
        return r, None
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(p)
        except OSError:
            target = "?"
        r = FileResult(f.path, f.size, "symlink")
        r.issues.append(Issue("symlink", CRITICAL, f"{f.path} is a symlink (to {target}); it is never followed or written through",
                              "redownload", f.path, {"target": target}))
        return r, None
    if not stat.S_ISREG(st.st_mode):
        r = FileResult(f.path, f.size, "not_regular_file")
        r.issues.append(Issue("not_regular_file", CRITICAL, f"{f.path} is not a regular file", "redownload", f.path))
        return r, None
    if not st.st_mode & stat.S_IRUSR:
        # reported from the mode bits too: an engine running as root can read it, the generation process may not
        r = FileResult(f.path, f.size, "unreadable", actual_size=st.st_size, stat_sig=_sig(st))
        r.issues.append(Issue("unreadable", CRITICAL, f"{f.path} is not readable (mode {stat.S_IMODE(st.st_mode):04o})", "fix_permissions",
                              f.path, {"mode": f"{stat.S_IMODE(st.st_mode):04o}"}))
        return r, None
    return None, st


def _size_issue(f: ManifestFile, actual: int, fixable: bool) -> Issue | None:
    if actual < f.size:
        return Issue("truncated", CRITICAL, f"{f.path} is truncated: {actual} of {f.size} bytes", "integrity_fix" if fixable else "redownload",
                     f.path, {"actual_size_bytes": actual, "expected_size_bytes": f.size})
    if actual > f.size:
        return Issue("extended", CRITICAL, f"{f.path} has {actual - f.size} bytes too many: {actual} instead of {f.size}",
                     "integrity_fix" if fixable else "redownload", f.path, {"actual_size_bytes": actual, "expected_size_bytes": f.size})
    return None


def quick_check_file(base: Path, f: ManifestFile, verified: Verified | None, previous: FileResult | None = None) -> FileResult:
    """Presence, type, permissions, size and whether the file changed since it was last verified (size, mtime, inode)."""
    r, st = _structural(base, f)
    if r is not None:
        return r
    assert st is not None
    sig = _sig(st)
    size_issue = _size_issue(f, st.st_size, fixable=True)
    if size_issue is not None:
        r = FileResult(f.path, f.size, size_issue.type, actual_size=st.st_size, stat_sig=sig)
        if previous is not None and previous.stat_sig == sig:
            r.good_bytes, r.broken_pieces, r.piece_size = previous.good_bytes, list(previous.broken_pieces), previous.piece_size
        r.issues.append(size_issue)
        return r
    if verified is not None and verified.verified_at is not None and verified.sha256 == f.sha256 and (verified.size, verified.mtime_ns, verified.inode) == sig:
        return FileResult(f.path, f.size, "ok", good_bytes=f.size, actual_size=st.st_size, stat_sig=sig, verified=True)
    if previous is not None and previous.stat_sig == sig and previous.state == "changed_bytes":
        # unchanged since a full check found broken pieces: they are still broken
        r = FileResult(f.path, f.size, "changed_bytes", previous.good_bytes, st.st_size, sig, list(previous.broken_pieces), previous.piece_size)
        r.issues = [i for i in (previous.issues or []) if i.type == "changed_bytes"] or [
            Issue("changed_bytes", CRITICAL, f"{f.path} has bytes that do not match its sha256", "integrity_fix" if previous.broken_pieces else "redownload", f.path)]
        return r
    r = FileResult(f.path, f.size, "unverified" if verified is None or verified.verified_at is None else "changed", actual_size=st.st_size, stat_sig=sig)
    if r.state == "changed":
        r.issues.append(Issue("changed_since_verified", WARNING, f"{f.path} changed since it was last verified (mtime or inode differ)",
                              "full_check", f.path))
    else:
        r.issues.append(Issue("never_verified", WARNING, f"{f.path} has not been verified against its sha256 yet", "full_check", f.path))
    return r


def full_check_file(base: Path, f: ManifestFile, pieces: Sequence[str] | None, piece_size: int, budget: ReadBudget,
                    piece_algo: str = PIECE_ALGO, verify_sha256: bool = False) -> FileResult:
    """Hash `f` against its piece hashes (naming broken pieces) and, without them or when asked, its whole-file sha256.

    Recorded `pieces` (hashed with `piece_algo`) were taken from bytes whose
    whole sha256 matched, so a file whose every piece matches is proven
    unchanged since, each byte hashed once with the (fast) piece hash. With
    `verify_sha256`, or without pieces, the whole-file sha256 is computed in the
    same pass and decides. PIECE_ALGO piece hashes of `piece_size` are computed
    on the way and returned in `new_pieces` when the file proved good and its
    pieces were missing or recorded in another algorithm, for the next check
    and repair. `proof` says which proof was used.
    """
    r, st = _structural(base, f)
    if r is not None:
        return r
    assert st is not None
    p = base.joinpath(*PurePosixPath(f.path).parts)
    expected_n = (f.size + piece_size - 1) // piece_size if f.size else 0
    use_pieces = pieces is not None and len(pieces) == expected_n and piece_size > 0
    want_whole = verify_sha256 or not use_pieces
    # the PIECE_ALGO hash of each piece is needed unless it is the recorded one and nothing new is to be recorded
    want_new = not use_pieces or piece_algo != PIECE_ALGO or verify_sha256
    result = FileResult(f.path, f.size, "ok", actual_size=st.st_size, stat_sig=_sig(st), piece_size=piece_size if use_pieces else None)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        result.state = "symlink" if exc.errno == 40 else "unreadable"
        result.issues.append(Issue(result.state, CRITICAL, f"{f.path} cannot be opened ({os.strerror(exc.errno or 0)})",
                                   "redownload" if result.state == "symlink" else "fix_permissions", f.path, {"errno": exc.errno}))
        return result
    try:
        fst = os.fstat(fd)
        if fst.st_ino != st.st_ino:
            result.state = "changed"
            result.issues.append(Issue("changed_during_check", WARNING, f"{f.path} was replaced while it was checked", "full_check", f.path))
            return result
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (AttributeError, OSError):
            pass
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        whole = hashlib.sha256() if want_whole else None
        computed: list[str] = []
        broken: list[int] = []
        good = 0
        pos = 0
        idx = 0
        step = piece_size if piece_size > 0 else max(f.size, 1)
        while pos < f.size:
            plen = min(step, f.size - pos)
            rec_h = new_piece_hasher(piece_algo) if use_pieces else None
            new_h = (rec_h if rec_h is not None and piece_algo == PIECE_ALGO else new_piece_hasher()) if want_new else None
            hashers = [h for h in (rec_h, new_h if new_h is not rec_h else None, whole) if h is not None]
            got = 0
            while got < plen:
                want = min(CHUNK, plen - got)
                n = os.preadv(fd, [view[:want]], pos + got)
                if n <= 0:
                    break
                chunk = view[:n]
                for h in hashers:
                    h.update(chunk)
                got += n
                result.hashed_bytes += n
                budget.consume(n)
            if rec_h is not None:
                if got == plen and rec_h.hexdigest() == pieces[idx]:  # type: ignore[index]
                    good += plen
                else:
                    broken.append(idx)
            if new_h is not None:
                computed.append(new_h.hexdigest())
            pos += plen
            idx += 1
            if got < plen:
                # the file ended early: every later piece is missing
                for j in range(idx, expected_n):
                    broken.append(j)
                break
        after = os.fstat(fd)
    except CheckCancelled:
        raise
    except OSError as exc:
        result.state = "unreadable"
        result.good_bytes = 0
        result.issues.append(Issue("unreadable", CRITICAL, f"{f.path} could not be read ({os.strerror(exc.errno or 0)})", "redownload", f.path,
                                   {"errno": exc.errno}))
        return result
    finally:
        os.close(fd)
    if _sig(after) != _sig(st):
        result.state = "changed"
        result.issues.append(Issue("changed_during_check", WARNING, f"{f.path} changed while it was checked", "full_check", f.path))
        return result
    size_issue = _size_issue(f, st.st_size, fixable=use_pieces)
    whole_ok = whole is not None and whole.hexdigest() == f.sha256
    if use_pieces:
        rerecord = piece_algo != PIECE_ALGO
        if whole_ok and size_issue is None and broken:
            # the bytes are right and the recorded pieces are not: record them again
            broken = []
            good = f.size
            rerecord = True
        result.broken_pieces = broken
        result.good_bytes = good
        if size_issue is not None:
            result.state = size_issue.type
            result.issues.append(size_issue)
            if st.st_size > f.size and not broken:
                result.good_bytes = f.size
        if broken:
            bad_bytes = sum(min(piece_size, f.size - i * piece_size) for i in broken)
            if size_issue is None:
                result.state = "changed_bytes"
                result.issues.append(Issue("changed_bytes", CRITICAL,
                                           f"{f.path}: {len(broken)} piece(s) of {piece_size} bytes do not match ({bad_bytes} bytes)",
                                           "integrity_fix", f.path, {"broken_pieces": broken[:1000], "broken_bytes": bad_bytes, "piece_size": piece_size}))
        elif size_issue is None and whole is not None and not whole_ok:
            # every piece matches its record, the whole file does not match its sha256: the record cannot be trusted
            result.state = "changed_bytes"
            result.good_bytes = 0
            result.issues.append(Issue("changed_bytes", CRITICAL, f"{f.path} does not match its sha256 although its recorded pieces match",
                                       "redownload", f.path))
        if not broken and size_issue is None and result.state == "ok":
            result.verified = True
            result.good_bytes = f.size
            result.proof = PROOF_SHA256 if whole is not None else pieces_proof(piece_algo)
            if rerecord:
                result.new_pieces = computed
        return result
    assert whole is not None
    if size_issue is not None and st.st_size > f.size and whole_ok:
        # only bytes appended after the right content: cutting them off repairs it
        result.state = "extended"
        result.good_bytes = f.size
        result.new_pieces = computed
        result.piece_size = piece_size
        result.issues.append(_size_issue(f, st.st_size, fixable=True))  # type: ignore[arg-type]
        return result
    if size_issue is not None:
        result.state = size_issue.type
        result.issues.append(size_issue)
        return result
    if whole_ok:
        result.verified = True
        result.good_bytes = f.size
        result.new_pieces = computed if piece_size > 0 else None
        result.piece_size = piece_size
        result.proof = PROOF_SHA256
        return result
    result.state = "changed_bytes"
    result.issues.append(Issue("changed_bytes", CRITICAL, f"{f.path} does not match its sha256 (no piece hashes recorded to locate the damage)",
                               "redownload", f.path))
    return result


def extra_files(base: Path, manifest: Sequence[ManifestFile]) -> list[Issue]:
    """Files in the version directory that the manifest does not name: reported, never deleted."""
    known = {f.path for f in manifest}
    out: list[Issue] = []
    try:
        if stat.S_ISLNK(os.lstat(base).st_mode):
            return out
    except OSError:
        return out
    for root, dnames, fnames in os.walk(base, followlinks=False):
        rel_root = os.path.relpath(root, base)
        for name in sorted(fnames) + sorted(d for d in dnames if os.path.islink(os.path.join(root, d))):
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if rel in known or name.endswith(TEMP_SUFFIX):
                continue
            out.append(Issue("extra_file", INFO, f"{rel} is not part of the model; it is left alone", "review", rel))
        dnames[:] = [d for d in dnames if not os.path.islink(os.path.join(root, d))]
    return out[:200]


def is_file_temp(name: str) -> bool:
    """Whether a name is one of the repair's temporary files."""
    return name.endswith(TEMP_SUFFIX)
