"""The record of what is installed: versions, verified files and their piece hashes.

This module is the only code that writes the tables `installed_versions`,
`installed_files` and `file_pieces`. Downloads record a file they verified,
health checks and repairs record what they proved or found broken, updates
switch and forget versions, and presence reads the whole record at each scan.

Every function takes a SQLite connection and runs inside the caller's
transaction (`Database.write(fn)` / `Database.read(fn)`), so a download's
install or a check's results land atomically with the caller's own rows.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Iterable, Sequence

from mavail.core.catalog import FileSpec, version_key
from mavail.core.inventory import VerifiedIndex
from mavail.core.piecehash import PIECE_ALGO, algo_of


@dataclass(frozen=True)
class VerifiedFile:
    """One file proven to match its sha256: what to record so later checks can tell whether it changed."""

    path: str
    size: int
    sha256: str
    mtime_ns: int | None
    inode: int | None
    verified_at: float | None  # None: the file is recorded but not (or no longer) proven
    piece_size: int = 0
    pieces: Sequence[str] | None = None  # piece hashes in order; None keeps the ones recorded
    piece_algo: str = PIECE_ALGO  # the algorithm of `pieces` (a name in core.piecehash.PIECE_ALGOS)


@dataclass(frozen=True)
class InstalledRecord:
    """Everything the store holds, as presence reads it at a scan."""

    current: dict[str, str]  # model_id -> current version
    verified: VerifiedIndex
    manifests: dict[tuple[str, str], list[FileSpec]]  # (model_id, version) -> its recorded files


def read_all(conn: sqlite3.Connection) -> InstalledRecord:
    """The current versions, the verified-file index and each version's recorded manifest."""
    current = current_versions(conn)
    verified: VerifiedIndex = {}
    manifests: dict[tuple[str, str], list[FileSpec]] = {}
    for r in conn.execute("SELECT model_id, version, path, size, sha256, mtime_ns, inode, verified_at FROM installed_files"):
        if r[7] is not None:
            verified[(r[0], r[1], r[2])] = (r[3], r[4], r[5], r[6])
        manifests.setdefault((r[0], r[1]), []).append(FileSpec(path=r[2], url="", size=r[3], sha256=r[4]))
    return InstalledRecord(current, verified, manifests)


def versions(conn: sqlite3.Connection, model_id: str) -> list[tuple[str, float, bool]]:
    """(version, installed_at, is_current) of every recorded version of a model."""
    return [(r[0], r[1], bool(r[2])) for r in conn.execute(
        "SELECT version, installed_at, is_current FROM installed_versions WHERE model_id = ?", (model_id,))]


def current_version(conn: sqlite3.Connection, model_id: str) -> str | None:
    """The version in use, or None when none is installed."""
    row = conn.execute("SELECT version FROM installed_versions WHERE model_id = ? AND is_current = 1", (model_id,)).fetchone()
    return row[0] if row else None


def add_version(conn: sqlite3.Connection, model_id: str, version: str, installed_at: float, replace: bool = True) -> bool:
    """Record `version` as installed; it becomes current when no other version is. Returns whether it is current.

    With `replace` false an existing record of that version is kept as it is.
    """
    other = conn.execute("SELECT 1 FROM installed_versions WHERE model_id = ? AND is_current = 1 AND version != ?",
                         (model_id, version)).fetchone()
    verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
    conn.execute(f"{verb} INTO installed_versions (model_id, version, installed_at, is_current) VALUES (?,?,?,?)",
                 (model_id, version, installed_at, 0 if other else 1))
    return not other


def record_files(conn: sqlite3.Connection, model_id: str, version: str, files: Iterable[VerifiedFile]) -> None:
    """Record each file (its size, sha256, stat signature and verification time) and, when given, its piece hashes."""
    for f in files:
        conn.execute(
            "INSERT INTO installed_files (model_id, version, path, size, sha256, mtime_ns, inode, verified_at) VALUES (?,?,?,?,?,?,?,?)"
            " ON CONFLICT (model_id, version, path) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256,"
            " mtime_ns = excluded.mtime_ns, inode = excluded.inode, verified_at = excluded.verified_at",
            (model_id, version, f.path, f.size, f.sha256, f.mtime_ns, f.inode, f.verified_at))
        if f.pieces is not None and f.piece_size:
            replace_pieces(conn, model_id, version, f.path, f.piece_size, f.pieces, f.piece_algo)


def replace_pieces(conn: sqlite3.Connection, model_id: str, version: str, path: str, piece_size: int, pieces: Sequence[str],
                   algo: str = PIECE_ALGO) -> None:
    """Replace a file's recorded piece hashes with `pieces` (in order, hashed with `algo`) of `piece_size` bytes each.

    The algorithm recorded is the one the digests' length shows when it does not fit `algo`:
    a caller that still hashes pieces with sha256 and names no algorithm is recorded as sha256.
    """
    if pieces:
        algo = algo_of(pieces[0], algo)
    conn.execute("DELETE FROM file_pieces WHERE model_id = ? AND version = ? AND path = ?", (model_id, version, path))
    conn.executemany("INSERT INTO file_pieces (model_id, version, path, piece_size, idx, sha256, algo) VALUES (?,?,?,?,?,?,?)",
                     [(model_id, version, path, piece_size, i, h, algo) for i, h in enumerate(pieces)])


def mark_unverified(conn: sqlite3.Connection, model_id: str, version: str, path: str) -> None:
    """The file no longer matches what was verified: a quick check must not call it verified again."""
    conn.execute("UPDATE installed_files SET verified_at = NULL WHERE model_id = ? AND version = ? AND path = ?",
                 (model_id, version, path))


def update_stat(conn: sqlite3.Connection, model_id: str, version: str, path: str, size: int, mtime_ns: int, inode: int,
                verified_at: float | None) -> None:
    """Record a file's new stat signature (after a check proved the bytes unchanged, say)."""
    conn.execute("UPDATE installed_files SET mtime_ns = ?, inode = ?, size = ?, verified_at = ? WHERE model_id = ? AND version = ? AND path = ?",
                 (mtime_ns, inode, size, verified_at, model_id, version, path))


def pieces(conn: sqlite3.Connection, model_id: str, version: str, path: str) -> tuple[int, list[str], str]:
    """(piece_size, piece hashes in order, their algorithm) recorded for a file; (0, [], PIECE_ALGO) when none is."""
    rows = conn.execute("SELECT piece_size, sha256, algo FROM file_pieces WHERE model_id = ? AND version = ? AND path = ? ORDER BY idx",
                        (model_id, version, path)).fetchall()
    return (rows[0][0], [r[1] for r in rows], rows[0][2]) if rows else (0, [], PIECE_ALGO)


def files(conn: sqlite3.Connection, model_id: str, version: str) -> list[VerifiedFile]:
    """Every recorded file of a version (pieces not loaded)."""
    return [VerifiedFile(r[0], r[1], r[2], r[3], r[4], r[5]) for r in conn.execute(
        "SELECT path, size, sha256, mtime_ns, inode, verified_at FROM installed_files WHERE model_id = ? AND version = ?",
        (model_id, version))]


def set_current(conn: sqlite3.Connection, model_id: str, version: str) -> None:
    """Make `version` the one in use (and no other)."""
    conn.execute("UPDATE installed_versions SET is_current = CASE WHEN version = ? THEN 1 ELSE 0 END WHERE model_id = ?",
                 (version, model_id))


def forget_version(conn: sqlite3.Connection, model_id: str, version: str, promote: bool = True) -> str | None:
    """Drop every record of one version; if it was current and `promote`, the newest other version becomes current.

    Returns the version current afterwards (None when none is).
    """
    row = conn.execute("SELECT is_current FROM installed_versions WHERE model_id = ? AND version = ?", (model_id, version)).fetchone()
    for table in ("installed_versions", "installed_files", "file_pieces"):
        conn.execute(f"DELETE FROM {table} WHERE model_id = ? AND version = ?", (model_id, version))
    if promote and row and row[0]:
        rest = [r[0] for r in conn.execute("SELECT version FROM installed_versions WHERE model_id = ?", (model_id,))]
        if rest:
            set_current(conn, model_id, max(rest, key=version_key))
    return current_version(conn, model_id)


def forget_model(conn: sqlite3.Connection, model_id: str) -> None:
    """Drop every record of every version of a model."""
    for table in ("installed_versions", "installed_files", "file_pieces"):
        conn.execute(f"DELETE FROM {table} WHERE model_id = ?", (model_id,))


def latest_install_times(conn: sqlite3.Connection) -> dict[str, float]:
    """When each model's newest recorded version was installed, by model id."""
    return {r[0]: r[1] for r in conn.execute("SELECT model_id, MAX(installed_at) FROM installed_versions GROUP BY model_id")}


def every_version(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(model_id, version) of every recorded version of every model."""
    return [(r[0], r[1]) for r in conn.execute("SELECT model_id, version FROM installed_versions")]


def current_versions(conn: sqlite3.Connection) -> dict[str, str]:
    """model_id -> the version in use, for every model with one."""
    return {r[0]: r[1] for r in conn.execute("SELECT model_id, version FROM installed_versions WHERE is_current = 1")}
