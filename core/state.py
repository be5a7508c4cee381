"""The engine's SQLite database: WAL mode, named migrations, all access off the event loop.

Writes go through one dedicated thread with one connection, so they are
serialised without locks; reads use a small pool of read-only connections so a
long analytics query never waits behind, or delays, a write.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

T = TypeVar("T")

# Named migrations, applied once each in list order. Append; never edit one
# that has shipped. Each issue's tables arrive in migrations of their own.
MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_foundation",
        """
        CREATE TABLE installed_versions (
            model_id     TEXT NOT NULL,
            version      TEXT NOT NULL,
            installed_at REAL NOT NULL,
            is_current   INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (model_id, version)
        );
        -- What was last verified of each installed file: a quick check compares
        -- size, mtime and inode with these to tell whether the file changed.
        CREATE TABLE installed_files (
            model_id    TEXT NOT NULL,
            version     TEXT NOT NULL,
            path        TEXT NOT NULL,
            size        INTEGER NOT NULL,
            sha256      TEXT NOT NULL,
            mtime_ns    INTEGER,
            inode       INTEGER,
            verified_at REAL,
            PRIMARY KEY (model_id, version, path)
        );
        -- sha256 of every fixed-size piece of an installed file, recorded while it
        -- downloads (or on the first full check that matches): repair fetches only
        -- the pieces that no longer match.
        CREATE TABLE file_pieces (
            model_id   TEXT NOT NULL,
            version    TEXT NOT NULL,
            path       TEXT NOT NULL,
            piece_size INTEGER NOT NULL,
            idx        INTEGER NOT NULL,
            sha256     TEXT NOT NULL,
            PRIMARY KEY (model_id, version, path, idx)
        );
        """,
    ),
    (
        "0003_downloads",
        """
        -- One row per model with a download (the latest one): its place in the
        -- queue, limits and outcome. A restarted engine resumes the rows that were
        -- queued or downloading.
        CREATE TABLE downloads (
            model_id             TEXT PRIMARY KEY,
            download_id          TEXT NOT NULL,
            version              TEXT NOT NULL,
            status               TEXT NOT NULL,
            priority             TEXT NOT NULL,
            seq                  REAL NOT NULL,
            max_retries          INTEGER NOT NULL,
            bandwidth_limit_mbps REAL NOT NULL DEFAULT 0,
            retry_count          INTEGER NOT NULL DEFAULT 0,
            error_code           TEXT,
            error_message        TEXT,
            created_at           REAL NOT NULL,
            updated_at           REAL NOT NULL,
            completed_at         REAL
        );
        -- The files of a download as resolved at its start (catalog or Hub), the
        -- validators each URL gave, and whether the file is already installed.
        CREATE TABLE download_files (
            model_id     TEXT NOT NULL,
            ordinal      INTEGER NOT NULL,
            path         TEXT NOT NULL,
            urls         TEXT NOT NULL,
            size         INTEGER NOT NULL,
            sha256       TEXT,
            git_sha1     TEXT,
            piece_size   INTEGER NOT NULL,
            validators   TEXT NOT NULL DEFAULT '{}',
            installed_sha256 TEXT,
            PRIMARY KEY (model_id, path)
        );
        -- Pieces of partial files whose bytes were flushed to disk (fdatasync) before
        -- the row was written: what a restart can trust.
        CREATE TABLE download_pieces (
            model_id TEXT NOT NULL,
            path     TEXT NOT NULL,
            idx      INTEGER NOT NULL,
            sha256   TEXT NOT NULL,
            PRIMARY KEY (model_id, path, idx)
        );
        """,
    ),
    (
        "0004_health",
        """
        -- Every health check (quick, full, performance): its outcome as JSON.
        CREATE TABLE health_checks (
            check_id    TEXT PRIMARY KEY,
            model_id    TEXT NOT NULL,
            version     TEXT NOT NULL,
            check_type  TEXT NOT NULL,
            trigger     TEXT NOT NULL,
            status      TEXT NOT NULL,
            started_at  REAL NOT NULL,
            finished_at REAL,
            result      TEXT
        );
        CREATE INDEX health_checks_model ON health_checks (model_id, started_at);
        CREATE TABLE health_repairs (
            repair_id          TEXT PRIMARY KEY,
            model_id           TEXT NOT NULL,
            version            TEXT NOT NULL,
            repair_type        TEXT NOT NULL,
            status             TEXT NOT NULL,
            started_at         REAL NOT NULL,
            finished_at        REAL,
            bytes_redownloaded INTEGER NOT NULL DEFAULT 0,
            result             TEXT
        );
        CREATE TABLE model_updates (
            update_id    TEXT PRIMARY KEY,
            model_id     TEXT NOT NULL,
            from_version TEXT,
            to_version   TEXT NOT NULL,
            status       TEXT NOT NULL,
            started_at   REAL NOT NULL,
            finished_at  REAL,
            message      TEXT
        );
        """,
    ),
    (
        "0005_fallback_queue",
        """
        -- Generation requests waiting for a model, in priority then arrival (seq) order.
        -- status: waiting, ready, expired, cancelled; finished_at is set when it leaves waiting.
        CREATE TABLE fallback_queue (
            queue_id    TEXT PRIMARY KEY,
            seq         INTEGER NOT NULL,
            model_id    TEXT NOT NULL,
            request     TEXT NOT NULL,
            priority    TEXT NOT NULL,
            created_at  REAL NOT NULL,
            expires_at  REAL NOT NULL,
            session_id  TEXT,
            status      TEXT NOT NULL,
            finished_at REAL
        );
        CREATE INDEX fallback_queue_status ON fallback_queue (status, model_id);
        """,
    ),
    (
        "0006_analytics_storage",
        """
        -- One row per generation (kind 0, from analytics.record) or per request
        -- (kind 1, from models.request). Times are epoch seconds, UTC.
        CREATE TABLE usage_events (
            id                INTEGER PRIMARY KEY,
            model_id          TEXT NOT NULL,
            ts                REAL NOT NULL,
            kind              INTEGER NOT NULL DEFAULT 0,
            generation_time_s REAL,
            success           INTEGER,
            vram_peak_mb      REAL,
            parameters        TEXT
        );
        CREATE INDEX usage_events_model_ts ON usage_events (model_id, ts);
        CREATE INDEX usage_events_ts ON usage_events (ts);
        -- Per-model, per-UTC-day rollup maintained on insert (model_id '*' is every
        -- model together). The plain columns are that day's figures; the c_ columns
        -- are running totals of every day up to and including it, so any range of
        -- whole days is the difference of two rows (two index seeks per model).
        -- time_sum adds generation_time_s of successful generations; hNN counts
        -- generations that started in UTC hour NN.
        CREATE TABLE usage_daily (
            model_id     TEXT NOT NULL,
            day          INTEGER NOT NULL,
            uses         INTEGER NOT NULL DEFAULT 0,
            successes    INTEGER NOT NULL DEFAULT 0,
            time_sum     REAL NOT NULL DEFAULT 0,
            requests     INTEGER NOT NULL DEFAULT 0,
            h00        INTEGER NOT NULL DEFAULT 0,
            h01        INTEGER NOT NULL DEFAULT 0,
            h02        INTEGER NOT NULL DEFAULT 0,
            h03        INTEGER NOT NULL DEFAULT 0,
            h04        INTEGER NOT NULL DEFAULT 0,
            h05        INTEGER NOT NULL DEFAULT 0,
            h06        INTEGER NOT NULL DEFAULT 0,
            h07        INTEGER NOT NULL DEFAULT 0,
            h08        INTEGER NOT NULL DEFAULT 0,
            h09        INTEGER NOT NULL DEFAULT 0,
            h10        INTEGER NOT NULL DEFAULT 0,
            h11        INTEGER NOT NULL DEFAULT 0,
            h12        INTEGER NOT NULL DEFAULT 0,
            h13        INTEGER NOT NULL DEFAULT 0,
            h14        INTEGER NOT NULL DEFAULT 0,
            h15        INTEGER NOT NULL DEFAULT 0,
            h16        INTEGER NOT NULL DEFAULT 0,
            h17        INTEGER NOT NULL DEFAULT 0,
            h18        INTEGER NOT NULL DEFAULT 0,
            h19        INTEGER NOT NULL DEFAULT 0,
            h20        INTEGER NOT NULL DEFAULT 0,
            h21        INTEGER NOT NULL DEFAULT 0,
            h22        INTEGER NOT NULL DEFAULT 0,
            h23        INTEGER NOT NULL DEFAULT 0,
            c_uses       INTEGER NOT NULL DEFAULT 0,
            c_successes  INTEGER NOT NULL DEFAULT 0,
            c_time_sum   REAL NOT NULL DEFAULT 0,
            c_requests   INTEGER NOT NULL DEFAULT 0,
            c_h00      INTEGER NOT NULL DEFAULT 0,
            c_h01      INTEGER NOT NULL DEFAULT 0,
            c_h02      INTEGER NOT NULL DEFAULT 0,
            c_h03      INTEGER NOT NULL DEFAULT 0,
            c_h04      INTEGER NOT NULL DEFAULT 0,
            c_h05      INTEGER NOT NULL DEFAULT 0,
            c_h06      INTEGER NOT NULL DEFAULT 0,
            c_h07      INTEGER NOT NULL DEFAULT 0,
            c_h08      INTEGER NOT NULL DEFAULT 0,
            c_h09      INTEGER NOT NULL DEFAULT 0,
            c_h10      INTEGER NOT NULL DEFAULT 0,
            c_h11      INTEGER NOT NULL DEFAULT 0,
            c_h12      INTEGER NOT NULL DEFAULT 0,
            c_h13      INTEGER NOT NULL DEFAULT 0,
            c_h14      INTEGER NOT NULL DEFAULT 0,
            c_h15      INTEGER NOT NULL DEFAULT 0,
            c_h16      INTEGER NOT NULL DEFAULT 0,
            c_h17      INTEGER NOT NULL DEFAULT 0,
            c_h18      INTEGER NOT NULL DEFAULT 0,
            c_h19      INTEGER NOT NULL DEFAULT 0,
            c_h20      INTEGER NOT NULL DEFAULT 0,
            c_h21      INTEGER NOT NULL DEFAULT 0,
            c_h22      INTEGER NOT NULL DEFAULT 0,
            c_h23      INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (model_id, day)
        ) WITHOUT ROWID;
        CREATE INDEX usage_daily_day ON usage_daily (day, model_id);
        -- All-time figures per model, loaded at start for the status fields.
        CREATE TABLE usage_models (
            model_id          TEXT PRIMARY KEY,
            uses              INTEGER NOT NULL DEFAULT 0,
            successes         INTEGER NOT NULL DEFAULT 0,
            time_sum          REAL NOT NULL DEFAULT 0,
            requests          INTEGER NOT NULL DEFAULT 0,
            first_ts          REAL,
            last_used_ts      REAL,
            last_requested_ts REAL
        ) WITHOUT ROWID;
        -- The cleanup journal: a model directory moved aside into trash/ before it
        -- is deleted. A restart finishes (state 'moved', or 'moving' with the
        -- directory found in trash) or reverts ('moving' with it still in place).
        CREATE TABLE storage_trash (
            id         INTEGER PRIMARY KEY,
            cleanup_id TEXT NOT NULL,
            model_id   TEXT,
            kind       TEXT NOT NULL,
            src        TEXT NOT NULL,
            dst        TEXT NOT NULL,
            size_bytes INTEGER NOT NULL DEFAULT 0,
            state      TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        """,
    ),
    (
        "0006b_analytics_indexes",
        """
        -- usage_daily is read by model (primary key) only: a (day, model_id) index
        -- cost a page write per recorded event for no query.
        DROP INDEX IF EXISTS usage_daily_day;
        """,
    ),
    (
        "0003_downloads_prefixes",
        """
        -- The flushed prefix (bytes from the piece's start) of pieces still in
        -- progress, written after the bytes were flushed (fdatasync): a restart
        -- re-hashes that prefix from disk and fetches only the rest of the piece.
        CREATE TABLE download_prefixes (
            model_id TEXT NOT NULL,
            path     TEXT NOT NULL,
            idx      INTEGER NOT NULL,
            length   INTEGER NOT NULL,
            PRIMARY KEY (model_id, path, idx)
        );
        """,
    ),
    (
        "0007_piece_algo",
        """
        -- The algorithm of each piece hash (the column `sha256` holds the hex
        -- digest, whatever its algorithm): pieces recorded before it are sha256,
        -- new ones XXH3-128 (core.piecehash); full checks re-record old ones.
        ALTER TABLE file_pieces ADD COLUMN algo TEXT NOT NULL DEFAULT 'sha256';
        """,
    ),
    (
        "0008_hub_pins",
        """
        -- The commit each hf:// model version resolved to at its download's start
        -- (core.downloads.hubpins owns it): resumes, repairs and health fetch
        -- /resolve/<commit>/ on the recorded endpoint, not the moving branch.
        CREATE TABLE hub_pins (
            model_id    TEXT NOT NULL,
            version     TEXT NOT NULL,
            source      TEXT NOT NULL,
            endpoint    TEXT NOT NULL,
            commit_sha  TEXT NOT NULL,
            resolved_at REAL NOT NULL,
            PRIMARY KEY (model_id, version)
        );
        """,
    ),
    (
        "0009_adopted_files",
        """
        -- Files a download took from a local copy instead of the network (a
        -- Hugging Face cache blob, verified by sha256; core.downloads.adopt owns it).
        CREATE TABLE adopted_files (
            model_id    TEXT NOT NULL,
            version     TEXT NOT NULL,
            path        TEXT NOT NULL,
            origin      TEXT NOT NULL,
            source_path TEXT NOT NULL,
            method      TEXT NOT NULL,
            adopted_at  REAL NOT NULL,
            PRIMARY KEY (model_id, version, path)
        );
        """,
    ),
]


class DatabaseFull(sqlite3.OperationalError):
    """A write failed because the disk (or the database's quota) is full: SQLITE_FULL.

    Raised instead of the plain OperationalError so callers can treat it as the disk-full
    condition it is (pause and keep data) rather than as a bug.
    """


def _is_full(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_FULL
    return "database or disk is full" in str(exc)


class Database:
    """An SQLite file used from async code: `await db.write(fn)`, `await db.read(fn)`.

    `fn` receives a `sqlite3.Connection` and runs in a worker thread; a write
    runs inside a transaction that commits when `fn` returns and rolls back when
    it raises.
    """

    def __init__(self, path: Path, readers: int = 2) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-w")
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="sqlite-r")
        self._local = threading.local()
        self._wconn: sqlite3.Connection | None = None
        self._closed = False

    # --- connections -----------------------------------------------------
    def _connect(self, readonly: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA foreign_keys = ON")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
        else:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _writer_conn(self) -> sqlite3.Connection:
        if self._wconn is None:
            self._wconn = self._connect(readonly=False)
        return self._wconn

    def _reader_conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(readonly=True)
            self._local.conn = conn
        return conn

    # --- running work ----------------------------------------------------
    def _run_write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._writer_conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # SQLite may have rolled back already (SQLITE_FULL does)
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
        except sqlite3.OperationalError as exc:
            if _is_full(exc) and not isinstance(exc, DatabaseFull):
                raise DatabaseFull(f"cannot write {self.path.name}: the disk is full") from exc
            raise
        return result

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return fn(self._reader_conn())

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in one transaction on the writer thread."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, self._run_write, fn)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` on a read-only connection in a reader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._run_read, fn)

    def write_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in a transaction from a worker thread (never from the event loop)."""
        return self._writer.submit(self._run_write, fn).result()

    def read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` on a reader from a worker thread (never from the event loop)."""
        return self._readers.submit(self._run_read, fn).result()

    async def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Execute one write statement; return its rowcount."""
        return await self.write(lambda c: c.execute(sql, params).rowcount)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Execute one write statement for each row, in one transaction."""
        rows = list(rows)
        await self.write(lambda c: c.executemany(sql, rows))

    async def fetchall(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        """Run a query on a reader and return every row."""
        return await self.read(lambda c: c.execute(sql, params).fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Row | None:
        """Run a query on a reader and return its first row, or None."""
        return await self.read(lambda c: c.execute(sql, params).fetchone())

    # --- lifecycle -------------------------------------------------------
    def migrate_sync(self) -> list[str]:
        """Apply pending migrations (called once at start, from a worker thread); return their names."""

        def apply(conn: sqlite3.Connection) -> list[str]:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
            done = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
            applied = []
            for name, sql in MIGRATIONS:
                if name in done:
                    continue
                for statement in _split_sql(sql):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, time.time()))
                applied.append(name)
            return applied

        return self._writer.submit(self._run_write, apply).result()

    async def open(self) -> list[str]:
        """Create the file if needed and apply migrations; return the names applied."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return await asyncio.get_running_loop().run_in_executor(None, self.migrate_sync)

    def close(self) -> None:
        """Close every connection and stop the threads."""
        if self._closed:
            return
        self._closed = True

        def close_writer() -> None:
            if self._wconn is not None:
                self._wconn.close()
                self._wconn = None

        self._writer.submit(close_writer).result()
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)


def _split_sql(script: str) -> list[str]:
    """Split a migration script into statements (sqlite3.complete_statement aware)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--") and not buf.strip():
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
