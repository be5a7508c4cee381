"""The download manager: queue, scheduler, state in SQLite, progress, events, installs.

The engine builds one `DownloadManager` and gives it its ports. Downloads are kept per model (one
at a time per model; a second request joins it). The scheduler runs the first
`downloads.max_concurrent` downloads in queue order (priority, then arrival or
the order `move` gave) and pre-empts a running one when a more urgent one
arrives: pre-empted, paused and interrupted downloads keep every byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator, Mapping

import httpx

from mavail.core.downloads.adopt import CacheAdopter
from mavail.core.downloads.hubadd import AddedModel, add_from_hub
from mavail.core.downloads.hf import BranchMove, HubAccess, branch_moves, ca_bundle, locate, proxy_mounts, resolve_pinned
from mavail.core.downloads.http_range import proxy_for
from mavail.core.downloads.limiter import MIB, RateLimiter
from mavail.core.downloads.partial import Opener, PartialFile
from mavail.core.downloads.reasons import retry_reason
from mavail.core.downloads.transfer import ConnectionBudget, DiskFull, FileJob, FileTransfer, TransferContext, describe_error
from mavail.core.priority import normalise_priority, priority_rank
from mavail.core.errors import Conflict, InsufficientStorage, InvalidParams, InvalidState, MavailError, NotFound, SourceUnavailable
from mavail.core import installed, safefs
from mavail.core.fsutil import free_bytes
from mavail.core.paths import safe_join
from mavail.core.state import DatabaseFull
from mavail.core.tally import Tally
from mavail.core.history import HistoryEntry
from mavail.core.store import Holder, PieceJournal, SharedStore, VerifiedFile, VersionLock
from mavail.core.timeutil import iso

if TYPE_CHECKING:
    from mavail.core.paths import HomeLayout
    from mavail.core.ports import BusyView, CatalogView, Emit, LeaseView, PresenceView, Settings, Spawner, StatusSink, TallySink
    from mavail.core.state import Database
    from mavail.core.timeutil import Clock

log = logging.getLogger("mavail.downloads")

RUNNABLE = ("queued", "downloading", "verifying")
LIVE = RUNNABLE + ("paused", "failed")
PROGRESS_INTERVAL_S = 0.25  # at most 4 progress events a second per download
FINISHING_POLL_S = 0.05  # how often an engine waiting on the shared store looks once the holder has every byte (store.poll_s at its least)
SPEED_TAU_S = 2.0
BYTE_THREAD_NICE = 10  # added to the byte threads' nice (on Linux a thread's nice is its own)
BYTE_THREADS = 256  # one per connection; downloads.max_connections bounds how many run (threads start as needed)


def _return_big_buffers_to_the_os() -> None:
    """Make glibc map buffers of 256 KiB and more with mmap and unmap them when freed.

    Downloads allocate many short-lived buffers of a few hundred KiB in several
    threads; with glibc's adaptive threshold they end up in per-thread heaps
    that keep their peak size, and the engine's RSS grows with the number of
    connections instead of staying flat.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _yield_to_the_loop() -> None:
    """Lower this byte thread's scheduling priority, so that on a busy machine the thread answering calls runs first."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + BYTE_THREAD_NICE))
    except (OSError, AttributeError):
        pass  # not Linux, or not allowed: the threads keep the process's priority


@contextlib.contextmanager
def _full_is_disk_full() -> Iterator[None]:
    """Turn the database's disk-full error into the download's own (DiskFull), which pauses and keeps the data."""
    try:
        yield
    except DatabaseFull as exc:
        raise DiskFull(str(exc)) from None


@contextlib.contextmanager
def _full_is_insufficient_storage(model_id: str) -> Iterator[None]:
    """For control calls: the database's disk-full error is the caller's INSUFFICIENT_STORAGE, not a bug."""
    try:
        yield
    except DatabaseFull:
        raise InsufficientStorage(f"the disk is full: cannot record the change to the download of {model_id}; free space and "
                                  f"try again", model_id=model_id) from None


def _default_client(env: Mapping[str, str], proxy: str) -> httpx.AsyncClient:
    """The shared HTTP client of piece repairs: HTTP/1.1, redirects followed, the proxy the byte path would use.

    `proxy` is `downloads.proxy`: a proxy URL for every request, "direct" for none, or empty for the
    environment's (`proxy_mounts`), as `http_range.proxy_for` decides for downloads.
    """
    verify = ca_bundle(env)
    if proxy == "direct":
        mounts: dict[str, Any] = {}
    elif proxy:
        mounts = {"all://": httpx.AsyncHTTPTransport(proxy=proxy, verify=verify)}
    else:
        mounts = proxy_mounts(env, verify)
    return httpx.AsyncClient(http1=True, follow_redirects=True, trust_env=False, verify=verify, mounts=mounts,
                             limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
                             timeout=httpx.Timeout(30.0, pool=None))


def _close_quietly(file: PartialFile) -> None:
    """Close a partial file, ignoring errors (it is being let go of either way)."""
    try:
        file.close()
    except OSError:
        pass


@dataclass(frozen=True)
class Started:
    """A download `start` queued: its id, status, place in the queue, size, and expected completion (epoch seconds)."""

    model_id: str
    download_id: str
    status: str
    queue_position: int | None
    total_bytes: int
    estimated_completion: float | None


@dataclass(frozen=True)
class StatusChange:
    """What pause, resume or cancel did: the download's status afterwards and whether the call changed it."""

    model_id: str
    status: str
    changed: bool
    keep_partial: bool = False


@dataclass(frozen=True)
class QueuePlace:
    """A download's priority and 1-based place in the queue after `set_priority` or `move` (None: not queued)."""

    model_id: str
    priority: str
    queue_position: int | None


@dataclass(frozen=True)
class Limit:
    """A download's own bandwidth cap after `set_limit` (MiB/s, 0 = none)."""

    model_id: str
    bandwidth_limit_mbps: float


@dataclass(frozen=True)
class ActiveDownloads:
    """Every live download (progress objects, queue order first, then paused and failed) and the figures it runs under."""

    items: list[dict[str, Any]]
    total_running: int
    bandwidth_usage_mbps: float  # measured, all running downloads together
    bandwidth_limit_mbps: float  # the global cap in force (0 = none)
    max_concurrent: int


@dataclass
class FileRec:
    """One file of a download as resolved at its start, and what is known of its partial data."""

    job: FileJob
    piece_size: int
    recorded: dict[int, str] = field(default_factory=dict)
    prefixes: dict[int, int] = field(default_factory=dict)  # flushed prefix of pieces in progress
    validators: dict[str, list[str | None]] = field(default_factory=dict)
    installed_sha256: str | None = None
    stat: tuple[int, int] | None = None  # (mtime_ns, inode) once installed

    @property
    def recorded_bytes(self) -> int:
        """Bytes of the partial data proven so far: whole recorded pieces plus the flushed prefixes of the others."""
        ps, size = self.piece_size, self.job.size
        return sum(min(ps, size - i * ps) for i in self.recorded) + sum(self.prefixes.values())


@dataclass
class Download:
    """One model's download: queue state, files, and live figures."""

    model_id: str
    download_id: str
    version: str
    status: str
    priority: str
    seq: float
    max_retries: int
    bandwidth_limit_mbps: float
    created_at: float
    files: list[FileRec] = field(default_factory=list)
    retry_count: int = 0  # every retry, all files together (total_retries on the wire)
    error_code: str | None = None
    error_message: str | None = None
    completed_at: float | None = None
    task: asyncio.Task[Any] | None = None
    transfers: dict[str, FileTransfer] = field(default_factory=dict)
    limiter: RateLimiter | None = None
    speed: float = 0.0  # smoothed bytes/s
    received: int = 0  # bytes off the wire this session (for speed)
    _sample: tuple[float, int] = (0.0, 0)
    _warmup: tuple[float, int] | None = None  # (time, bytes) at the start of the first tick that saw bytes
    last_emit: float = 0.0
    last_emit_bytes: int = -1
    holding: bool = False
    stop_reason: str | None = None  # why the task is being cancelled: pause, cancel, preempt, shutdown
    current_file: str | None = None
    stopped_file_retries: int = 0  # retries_this_file when the download last stopped (a failure shows what it spent)
    waiting_for: Holder | None = None  # shared store: the engine downloading this version while this one waits
    store_lock: VersionLock | None = None  # shared store: the version's lock, while this engine holds it

    @property
    def wait_reason(self) -> str | None:
        """Why the download is not moving bytes here: another engine on the shared store downloads the version."""
        h = self.waiting_for
        return f"another engine ({h.describe()}) is downloading it" if h is not None else None

    @property
    def total_bytes(self) -> int:
        """Bytes of every file of the download."""
        return sum(f.job.size for f in self.files)

    @property
    def downloaded_bytes(self) -> int:
        """Bytes already here: installed files whole, files in transfer as written, the others as recorded."""
        n = 0
        for f in self.files:
            if f.installed_sha256 is not None:
                n += f.job.size
            elif f.job.path in self.transfers:
                n += self.transfers[f.job.path].written_bytes
            else:
                n += f.recorded_bytes
        return n

    @property
    def retries_this_file(self) -> int:
        """Failed attempts in a row on the file downloading now, the figure `max_retries` (per file) bounds."""
        tr = self.transfers.get(self.current_file) if self.current_file else None
        return tr.retries_in_a_row if tr is not None else self.stopped_file_retries

    @property
    def remaining_bytes(self) -> int:
        """Bytes still to download."""
        return max(0, self.total_bytes - self.downloaded_bytes)


def _capped(limit_mbps: float, cap_mbps: float) -> float:
    """The tighter of two MiB/s limits where 0 means none."""
    return min(x for x in (limit_mbps, cap_mbps) if x > 0) if limit_mbps > 0 or cap_mbps > 0 else 0.0


class DownloadManager:
    """Every download of one home: the queue, its scheduler and the installs; also a status provider."""

    def __init__(self, *, settings: Settings, clock: Clock, db: Database, layout: HomeLayout, catalog: CatalogView,
                 presence: PresenceView, status_changed: StatusSink, emit: Emit, tasks: Spawner, leases: LeaseView,
                 activity: BusyView, opener: Opener | None = None, environ: Mapping[str, str] | None = None,
                 client_factory: Callable[[], httpx.AsyncClient] | None = None, piece_size: int | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, tally: TallySink | None = None,
                 store: SharedStore | None = None) -> None:
        """Every port is given by the composition root; `opener`, `environ` (None: os.environ, for HF_ENDPOINT and
        HF_TOKEN), `client_factory`, `piece_size` (None: downloads.piece_size_mb) and `sleep` are there for tests.
        `tally` counts the bytes received (`download_bytes`), retries made (`download_retries`) and failures as they happen.
        `store` (with store.shared): the shared model store whose lock a download holds before it fetches anything."""
        self._tally = tally or Tally()
        self._store = store
        self._settings = settings
        self._clock = clock
        self._db = db
        self._layout = layout
        self._catalog = catalog
        self._presence = presence
        self._status_changed = status_changed
        self._emit = emit
        self._tasks = tasks
        self._leases = leases
        self._activity = activity
        self.opener: Opener = opener or (lambda path: PartialFile(path, layout.home))
        self.environ = environ
        self.hub = HubAccess(environ)  # the Hub's endpoint and token (HF_TOKEN, else the token file)
        self.adopter = CacheAdopter(db=db, home=layout.home, environ=environ, status_changed=status_changed, clock=clock.time,
                                    local_dirs=lambda: settings.get("sources.local_dirs"))
        self.piece_size = piece_size
        self.sleep = sleep
        self._client_factory = client_factory or (
            lambda: _default_client(os.environ if environ is None else environ, str(settings.get("downloads.proxy"))))
        self._dl: dict[str, Download] = {}
        self._listeners: list[Callable[[str, str, str], None]] = []
        self._seq = itertools.count(1)
        self._client: httpx.AsyncClient | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._budget = ConnectionBudget(lambda: int(settings.get("downloads.max_connections")))
        self._restraint: tuple[bool, float] = (False, 0.0)  # (hold every download queued, cap in MiB/s; 0 = none), see restrain
        self._global = RateLimiter(lambda: _capped(float(settings.get("downloads.bandwidth_limit_mbps")), self._restraint[1]) * MIB)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._aggregate_rate = 0.0  # last smoothed total bytes/s seen while something downloaded
        self._stopping = False

    # --- lifecycle -------------------------------------------------------------
    @property
    def client(self) -> httpx.AsyncClient:
        """The shared HTTP client (also used by health repairs with `fetch_range`)."""
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def _byte_threads(self) -> ThreadPoolExecutor:
        """The threads every connection's bytes move on (apart from the default executor, which SQLite and scans use)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=BYTE_THREADS, thread_name_prefix="mavail-bytes",
                                                initializer=_yield_to_the_loop)
        return self._executor

    async def start_service(self) -> None:
        """Load downloads from the database, resume those that were running or queued, start the ticker."""
        _return_big_buffers_to_the_os()
        await self.hub.refresh()
        await self.adopter.load()
        await self._load()
        self._settings.on_change(self._on_config)
        self._tasks.on_stop(self._shutdown)
        self._tasks.spawn(self._ticker(), name="downloads-progress")
        self._kick()

    async def _shutdown(self) -> None:
        self._stopping = True
        tasks = []
        for d in self._dl.values():
            if d.task is not None:
                d.stop_reason = "shutdown"
                d.task.cancel()
                tasks.append(d.task)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        await self.hub.aclose()

    def _on_config(self, changed: dict[str, Any]) -> None:
        if "downloads.max_concurrent" in changed:
            self._kick()
        if "downloads.bandwidth_limit_mbps" in changed:
            self._report()  # the global cap bounds the queue's estimates
        if "downloads.proxy" in changed and self._client is not None:
            old, self._client = self._client, None  # the next repair builds a client with the new proxy
            self._tasks.spawn(old.aclose(), name="downloads-client-close")

    def restrain(self, hold: bool, cap_mbps: float = 0.0) -> None:
        """Hold every download queued (running ones stop, keeping their bytes) or cap them all at `cap_mbps` (0 = no cap),
        on top of the settings, until called again with (False, 0)."""
        self._restraint = (hold, cap_mbps)
        self._kick()
        self._report()

    def add_listener(self, cb: Callable[[str, str, str], None]) -> None:
        """Call `cb(model_id, version, status)` on every status change of any download."""
        self._listeners.append(cb)

    # --- persistence -------------------------------------------------------------
    async def _load(self) -> None:
        def q(conn: Any) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
            return (conn.execute("SELECT * FROM downloads").fetchall(),
                    conn.execute("SELECT * FROM download_files ORDER BY model_id, ordinal").fetchall(),
                    conn.execute("SELECT model_id, path, idx, sha256 FROM download_pieces").fetchall(),
                    conn.execute("SELECT model_id, path, idx, length FROM download_prefixes").fetchall())

        rows, frows, prows, xrows = await self._db.read(q)
        pieces: dict[tuple[str, str], dict[int, str]] = {}
        for r in prows:
            pieces.setdefault((r[0], r[1]), {})[r[2]] = r[3]
        prefixes: dict[tuple[str, str], dict[int, int]] = {}
        for r in xrows:
            if r[2] not in pieces.get((r[0], r[1]), {}):
                prefixes.setdefault((r[0], r[1]), {})[r[2]] = r[3]
        files: dict[str, list[FileRec]] = {}
        for r in frows:
            job = FileJob(path=r["path"], urls=tuple(json.loads(r["urls"])), size=r["size"], sha256=r["sha256"], git_sha1=r["git_sha1"])
            key = (r["model_id"], r["path"])
            files.setdefault(r["model_id"], []).append(FileRec(job, r["piece_size"], pieces.get(key, {}), prefixes.get(key, {}),
                                                               json.loads(r["validators"]), r["installed_sha256"]))
        resumed = 0
        for r in rows:
            status = r["status"]
            if status in RUNNABLE:
                status = "queued"
                resumed += 1
            d = Download(model_id=r["model_id"], download_id=r["download_id"], version=r["version"], status=status,
                         priority=r["priority"], seq=r["seq"], max_retries=r["max_retries"],
                         bandwidth_limit_mbps=r["bandwidth_limit_mbps"], created_at=r["created_at"],
                         files=files.get(r["model_id"], []), retry_count=r["retry_count"], error_code=r["error_code"],
                         error_message=r["error_message"], completed_at=r["completed_at"])
            self._attach_limiter(d)
            self._dl[d.model_id] = d
            if status in RUNNABLE:
                self._hold(d, True)
        if rows:
            self._seq = itertools.count(int(max(r["seq"] for r in rows)) + 1)
        if resumed:
            log.info("resuming %d download(s) after restart", resumed)
        if self._dl:
            self._status_changed(sorted(self._dl))

    def _row(self, d: Download) -> tuple[Any, ...]:
        return (d.model_id, d.download_id, d.version, d.status, d.priority, d.seq, d.max_retries, d.bandwidth_limit_mbps,
                d.retry_count, d.error_code, d.error_message, d.created_at, self._clock.time(), d.completed_at)

    async def _persist(self, d: Download, with_files: bool = False) -> None:
        row = self._row(d)
        files = [(d.model_id, i, f.job.path, json.dumps(list(f.job.urls)), f.job.size, f.job.sha256, f.job.git_sha1, f.piece_size,
                  json.dumps(f.validators), f.installed_sha256) for i, f in enumerate(d.files)]

        def w(conn: Any) -> None:
            conn.execute("INSERT OR REPLACE INTO downloads VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
            if with_files:
                conn.execute("DELETE FROM download_files WHERE model_id = ?", (row[0],))
                conn.executemany("INSERT INTO download_files VALUES (?,?,?,?,?,?,?,?,?,?)", files)

        if with_files:
            await self._db.write(w)  # a new download's files: it cannot start without them
            return
        try:
            await self._db.write(w)
        except DatabaseFull:
            # the status stays right in memory and is written with the next change; a restart
            # before then resumes the download from its recorded pieces, which is what it would do anyway
            log.warning("%s: could not save the download's state (%s): the disk is full", d.model_id, d.status)

    async def _forget_pieces(self, model_id: str, path: str | None = None) -> None:
        def w(conn: Any) -> None:
            for table in ("download_pieces", "download_prefixes"):
                if path is None:
                    conn.execute(f"DELETE FROM {table} WHERE model_id = ?", (model_id,))
                else:
                    conn.execute(f"DELETE FROM {table} WHERE model_id = ? AND path = ?", (model_id, path))

        await self._db.write(w)

    # --- helpers ---------------------------------------------------------------------
    def _get(self, model_id: str) -> Download:
        self._catalog.spec(model_id)
        d = self._dl.get(model_id)
        if d is None:
            raise NotFound(f"no download for model {model_id!r}", model_id=model_id)
        return d

    def _attach_limiter(self, d: Download) -> None:
        d.limiter = RateLimiter(lambda: d.bandwidth_limit_mbps * MIB)

    def _hold(self, d: Download, on: bool) -> None:
        if on and not d.holding:
            self._activity.acquire(d.model_id, "downloading")
            d.holding = True
        elif not on and d.holding:
            self._activity.release(d.model_id, "downloading")
            d.holding = False

    def _partial_path(self, d: Download, path: str) -> Path:
        if self._store is not None:  # on the store, so that another engine can continue it
            return self._store.partial_path(d.model_id, d.version, path)
        return safe_join(self._layout.partial_dir / d.model_id / d.version, path + ".part")

    def _piece_size(self) -> int:
        return self.piece_size or int(self._settings.get("downloads.piece_size_mb")) * MIB

    def _order(self) -> list[Download]:
        runnable = [d for d in self._dl.values() if d.status in RUNNABLE]
        return sorted(runnable, key=lambda d: (priority_rank(d.priority), d.seq))

    def queue_position(self, d: Download) -> int | None:
        """1-based place in the queue (running ones first), None when not queued or running."""
        if d.status not in RUNNABLE:
            return None
        for i, x in enumerate(self._order(), 1):
            if x is d:
                return i
        return None

    def is_active(self, model_id: str) -> bool:
        """Whether a download of the model is queued, running or verifying."""
        d = self._dl.get(model_id)
        return d is not None and d.status in RUNNABLE

    def _eta(self, d: Download) -> float | None:
        if d.status == "downloading" and d.speed > 1:
            return d.remaining_bytes / d.speed
        return self.estimate_ready_seconds(d.model_id) if d.status in RUNNABLE else None

    def estimate_ready_seconds(self, model_id: str) -> float | None:
        """Seconds until the model's download completes, from the queue and the measured rates; None when unknown."""
        d = self._dl.get(model_id)
        if d is None or d.status not in RUNNABLE:
            return None
        if d.status == "downloading" and d.speed > 1:
            own = d.remaining_bytes / d.speed
            if d.bandwidth_limit_mbps > 0:
                own = max(own, d.remaining_bytes / (d.bandwidth_limit_mbps * MIB))
            return own
        rate = sum(x.speed for x in self._dl.values() if x.status == "downloading") or self._aggregate_rate
        glim = float(self._settings.get("downloads.bandwidth_limit_mbps")) * MIB
        if glim > 0:
            rate = min(rate, glim) if rate > 0 else glim
        if rate <= 0:
            return None
        order = self._order()
        ahead = 0
        for x in order:
            if x is d:
                break
            ahead += x.remaining_bytes
        est = (ahead + d.remaining_bytes) / rate
        if d.bandwidth_limit_mbps > 0:
            est = max(est, d.remaining_bytes / (d.bandwidth_limit_mbps * MIB))
        return est

    # --- status provider ---------------------------------------------------------------
    def model_fields(self, model_id: str) -> dict[str, Any]:
        """Download fields of models.status (and its availability while a download is live), with `adopted_files`."""
        return {**self.adopter.model_fields(model_id), **self._download_fields(model_id)}

    def _download_fields(self, model_id: str) -> dict[str, Any]:
        d = self._dl.get(model_id)
        if d is None:
            return {}
        if d.status not in LIVE:
            return self._unverified_fields(d)
        total = d.total_bytes
        out: dict[str, Any] = {
            "download_progress": round(100.0 * d.downloaded_bytes / total, 2) if total else 0.0,
            "download_status": d.status,
            "download_id": d.download_id,
            "can_pause_download": d.status in ("queued", "downloading"),
            "can_resume_download": d.status in ("paused", "failed"),
            "estimated_download_time": self._eta(d),
        }
        if d.waiting_for is not None and d.status in RUNNABLE:
            out["download_wait_reason"] = d.wait_reason
        try:
            in_use = self._presence.version_in_use(model_id)
        except MavailError:
            in_use = d.version
        pres = self._presence.presence(model_id)
        if d.version == in_use or pres is None or not pres.complete:
            out["availability_status"] = {"verifying": "downloading"}.get(d.status, d.status)
        return out

    def _unverified_fields(self, d: Download) -> dict[str, Any]:
        """`unverified_files` (and `verified` false) for an installed version whose catalog let files in without a hash."""
        if d.status != "completed":
            return {}
        names = [f.job.path for f in d.files if f.job.sha256 is None and f.job.git_sha1 is None]
        if not names:
            return {}
        try:
            if self._presence.version_in_use(d.model_id) != d.version:
                return {}
        except MavailError:
            return {}
        return {"unverified_files": names, "verified": False}

    def progress_dict(self, d: Download) -> dict[str, Any]:
        """The contract's progress object (`downloads.progress`, `downloads.active`) with bytes, queue position and ids."""
        total, done = d.total_bytes, d.downloaded_bytes
        eta = self._eta(d)
        return {
            "model_id": d.model_id,
            "download_id": d.download_id,
            "version": d.version,
            "status": d.status,
            "priority": d.priority,
            "progress_percent": round(100.0 * done / total, 2) if total else (100.0 if d.status == "completed" else 0.0),
            "downloaded_mb": done / MIB,
            "total_mb": total / MIB,
            "downloaded_bytes": done,
            "total_bytes": total,
            "speed_mbps": round(d.speed / MIB, 3) if d.status == "downloading" else 0.0,
            "eta_seconds": round(eta, 1) if eta is not None else None,
            "queue_position": self.queue_position(d),
            # retry_count counts the current file's retries, which max_retries bounds; total_retries all files'
            "retry_count": d.retries_this_file,
            "max_retries": d.max_retries,
            "total_retries": d.retry_count,
            "bandwidth_limit_mbps": d.bandwidth_limit_mbps,
            "error_code": d.error_code,
            "error_message": d.error_message,
            "current_file": d.current_file,
            "connections": sum(tr.connections for tr in d.transfers.values()) if d.status == "downloading" else 0,
            "can_pause": d.status in ("queued", "downloading"),
            "can_resume": d.status in ("paused", "failed"),
            "can_cancel": d.status in LIVE,
            "created_at": iso(d.created_at),
            "completed_at": iso(d.completed_at),
            "waiting_for": d.waiting_for.to_dict() if d.waiting_for is not None and d.status in RUNNABLE else None,
            "wait_reason": d.wait_reason if d.status in RUNNABLE else None,
        }

    # --- events -------------------------------------------------------------------------
    def _report(self, d: Download | None = None) -> None:
        """Tell the status board that the download fields of `d` and of every queued or running download may have
        changed (a queued one's estimate depends on the downloads ahead of it and on the measured rate)."""
        ids = {x.model_id for x in self._dl.values() if x.status in RUNNABLE}
        if d is not None:
            ids.add(d.model_id)
        if ids:
            self._status_changed(sorted(ids))

    def _emit_progress(self, d: Download, report: bool = True) -> None:
        """Send `model_download_progress` for `d` and, unless the caller reports itself, report its status change."""
        p = self.progress_dict(d)
        d.last_emit = self._clock.monotonic()
        d.last_emit_bytes = p["downloaded_bytes"]
        self._emit("model_download_progress", model_id=d.model_id, download_id=d.download_id, status=d.status,
                                progress_percent=p["progress_percent"], speed_mbps=p["speed_mbps"], eta_seconds=p["eta_seconds"],
                                downloaded_bytes=p["downloaded_bytes"], total_bytes=p["total_bytes"],
                                queue_position=p["queue_position"], retry_count=p["retry_count"], max_retries=d.max_retries,
                                total_retries=d.retry_count, error_code=d.error_code)
        if report:
            self._report(d)

    async def _set_status(self, d: Download, status: str, error_code: str | None = None, message: str | None = None,
                          persist: bool = True) -> None:
        old = d.status
        d.status = status
        if status in ("failed", "paused") or error_code is not None:
            d.error_code, d.error_message = error_code, message
        elif status in ("queued", "downloading", "completed"):
            d.error_code = d.error_message = None
        if old != status:
            # the download's own events go first: whatever reports the model next (the activity released just
            # below, a save that awaits) publishes its availability, which must not overtake them
            log.info("%s: %s -> %s%s", d.model_id, old, status, f" ({error_code}: {message})" if error_code else "")
            self._emit_progress(d, report=False)
            if status == "failed":
                self._tally.add("download_failures", (d.model_id, error_code or "INTERNAL_ERROR"))
                self._emit("download_failed", model_id=d.model_id, download_id=d.download_id,
                           error_code=error_code or "INTERNAL_ERROR", message=message or "download failed")
        self._hold(d, status in RUNNABLE)
        if persist:
            await self._persist(d)
        if old != status:
            self._report(d)
            for cb in list(self._listeners):
                try:
                    cb(d.model_id, d.version, status)
                except Exception:
                    log.exception("download listener failed")
            self._wake.set()

    async def _ticker(self) -> None:
        """Smooth speeds and send progress events (at most 4 a second per download) while anything downloads."""
        clock = self._clock
        while True:
            if not any(d.status == "downloading" for d in self._dl.values()):
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            now = clock.monotonic()
            total = 0.0
            for d in list(self._dl.values()):
                if d.status != "downloading":
                    continue
                t0, b0 = d._sample
                dt = now - t0
                if t0 and dt > 0:
                    if d._warmup is None and d.received > b0:
                        d._warmup = (t0, b0)
                    if d._warmup is not None and now - d._warmup[0] < SPEED_TAU_S:
                        # warm-up: the mean since bytes started to flow. An average started from the
                        # first, partly idle tick would take several time constants to forget it,
                        # and every early estimate (ETA, wait times) would come out too long.
                        d.speed = (d.received - d._warmup[1]) / (now - d._warmup[0])
                    else:
                        inst = (d.received - b0) / dt
                        d.speed += min(1.0, dt / SPEED_TAU_S) * (inst - d.speed)
                d._sample = (now, d.received)
                total += d.speed
                if now - d.last_emit >= PROGRESS_INTERVAL_S * 0.9 and d.downloaded_bytes != d.last_emit_bytes:
                    self._emit_progress(d, report=False)
            if total > 0:
                self._aggregate_rate = total
            self._report()  # speeds moved: every runnable download's progress and estimate, once a tick

    # --- scheduling ----------------------------------------------------------------------
    def _kick(self) -> None:
        if self._stopping:
            return
        order = self._order()
        n = 0 if self._restraint[0] else int(self._settings.get("downloads.max_concurrent"))
        want = order[:n]
        # pre-empt running downloads that fell out of the first n (never one that is verifying)
        for d in order[n:]:
            if d.task is not None and d.status == "downloading" and d.stop_reason is None:
                d.stop_reason = "preempt"
                d.task.cancel()
        for d in want:
            if d.task is not None and d.task.done():
                d.task = None  # cancelled before it ever ran
            if d.task is None and d.stop_reason is None:
                task = d.task = self._tasks.spawn(self._run(d), name=f"download:{d.model_id}")
                task.add_done_callback(lambda t, d=d: setattr(d, "task", None) if d.task is t else None)

    async def _run(self, d: Download) -> None:
        heartbeat: asyncio.Task[None] | None = None
        try:
            await self._set_status(d, "downloading")
            d._sample = (self._clock.monotonic(), d.received)
            if self._store is not None:
                d.store_lock = await self._take_turn(d)
                if d.store_lock is not None:
                    heartbeat = asyncio.ensure_future(self._keep_lock(d, d.store_lock))
            log.info("%s: download %s started (%d files, %d bytes, %d already here)", d.model_id, d.download_id, len(d.files),
                     d.total_bytes, d.downloaded_bytes)
            for f in d.files:
                if f.installed_sha256 is not None:
                    continue
                d.current_file = f.job.path
                await self._fetch_file(d, f)
            await self._set_status(d, "verifying")
            await self._finalize(d)
        except asyncio.CancelledError:
            reason = d.stop_reason or "shutdown"
            self._close_files(d)
            if reason == "preempt" and d.status in ("downloading", "verifying"):
                await asyncio.shield(self._set_status(d, "queued"))
            elif reason == "shutdown":
                d.status = "queued" if d.status in RUNNABLE else d.status
                self._hold(d, False)
            raise
        except (DiskFull, DatabaseFull):
            self._close_files(d)
            free = await asyncio.to_thread(free_bytes, self._layout.partial_dir)
            msg = f"the disk is full ({free} bytes free, {d.remaining_bytes} still to download): free space, then resume"
            self._emit("storage_warning", model_id=d.model_id, message=msg, free_bytes=free,
                                    required_bytes=d.remaining_bytes)
            await self._set_status(d, "paused", InsufficientStorage.NAME, msg)
        except MavailError as exc:
            self._close_files(d)
            log.error("%s: download failed: %s", d.model_id, exc.message)
            await self._set_status(d, "failed", exc.NAME, exc.message)
        except Exception as exc:
            self._close_files(d)
            log.exception("%s: download failed unexpectedly", d.model_id)
            await self._set_status(d, "failed", "INTERNAL_ERROR", f"internal error ({describe_error(exc)}); see downloads.log")
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            lock, d.store_lock = d.store_lock, None
            if lock is not None:
                self._close_files(d)
                await asyncio.shield(asyncio.to_thread(lock.release))  # the next engine may take the download over
            if d.waiting_for is not None:
                self._waiting(d, None)
            d.task = None
            d.stopped_file_retries = d.retries_this_file if d.status == "failed" else 0
            d.current_file = None
            d.speed = 0.0
            d._warmup = None
            if d.stop_reason in (None, "preempt"):
                # pause and cancel reset stop_reason themselves once the new status is set
                d.stop_reason = None
                self._kick()

    def _close_files(self, d: Download) -> None:
        for tr in d.transfers.values():
            _close_quietly(tr.file)

    def _ctx(self, d: Download) -> TransferContext:
        cfg = self._settings
        assert d.limiter is not None

        async def on_pieces(path: str, batch: list[tuple[int, str]], prefixes: dict[int, int]) -> None:
            rec = next(f for f in d.files if f.job.path == path)
            rec.recorded.update(batch)
            rec.prefixes = {i: n for i, n in prefixes.items() if i not in rec.recorded}
            rows = [(d.model_id, path, i, sha) for i, sha in batch]
            prows = [(d.model_id, path, i, n) for i, n in rec.prefixes.items()]

            def w(conn: Any) -> None:
                conn.executemany("INSERT OR REPLACE INTO download_pieces VALUES (?,?,?,?)", rows)
                conn.execute("DELETE FROM download_prefixes WHERE model_id = ? AND path = ?", (d.model_id, path))
                conn.executemany("INSERT INTO download_prefixes VALUES (?,?,?,?)", prows)

            with _full_is_disk_full():
                await self._db.write(w)
            await self._write_journal(d, rec)

        async def on_reset(path: str, reason: str) -> None:
            rec = next(f for f in d.files if f.job.path == path)
            rec.recorded.clear()
            rec.prefixes.clear()
            log.warning("%s: %s restarted from byte 0: %s", d.model_id, path, reason)
            with _full_is_disk_full():
                await self._forget_pieces(d.model_id, path)
            await self._write_journal(d, rec)

        async def on_validator(path: str, validators: dict[str, list[str | None]]) -> None:
            rec = next(f for f in d.files if f.job.path == path)
            if rec.validators != validators:
                rec.validators = {k: list(v) for k, v in validators.items()}
                with _full_is_disk_full():
                    await self._db.execute("UPDATE download_files SET validators = ? WHERE model_id = ? AND path = ?",
                                                 (json.dumps(rec.validators), d.model_id, path))
                await self._write_journal(d, rec)

        def on_bytes(n: int) -> None:
            d.received += n
            self._tally.add("download_bytes", (d.model_id,), n)

        def on_retry(path: str, url: str, exc: BaseException, delay: float) -> None:
            d.retry_count += 1
            self._tally.add("download_retries", (d.model_id, retry_reason(exc)), 1)
            log.warning("%s: %s: retry %d in %.1f s after: %s%s", d.model_id, path, d.retry_count, delay, describe_error(exc),
                        f" ({url})" if url else "")

        return TransferContext(limiters=[d.limiter, self._global], max_retries=lambda: d.max_retries,
                               setting=cfg.get, on_pieces=on_pieces, on_reset=on_reset, on_validator=on_validator,
                               on_bytes=on_bytes, on_retry=on_retry, headers_for=self.hub.headers,
                               sleep=self.sleep, executor=self._byte_threads(), budget=self._budget,
                               proxy=lambda url: proxy_for(url, self.environ, str(cfg.get("downloads.proxy"))),
                               # one waiting for another engine's download on the shared store moves no byte
                               active_files=lambda: sum(1 for x in self._dl.values()
                                                        if x.status == "downloading" and x.waiting_for is None))

    # --- the shared model store -----------------------------------------------------------
    async def _take_turn(self, d: Download) -> VersionLock | None:
        """Wait until this engine holds the version's lock on the shared store, adopting meanwhile every file the holder
        verified; the lock (its journals loaded into the files), or None when every file was adopted."""
        store = self._store
        assert store is not None
        seen: tuple[float, int] | None = None  # (when, bytes the holder had left) at the last look
        while True:
            await self._adopt_verified(d)
            if all(f.installed_sha256 is not None for f in d.files):
                return None
            fut = asyncio.ensure_future(asyncio.to_thread(store.try_lock, d.model_id, d.version))
            try:
                got = await asyncio.shield(fut)
            except asyncio.CancelledError:
                # the thread may still take the lock: nobody would release it, so release it once taken
                fut.add_done_callback(lambda t: None if t.cancelled() or t.exception() is not None or
                                      not isinstance(t.result(), VersionLock) else t.result().release())
                raise
            if isinstance(got, VersionLock):
                try:
                    await self._adopt_verified(d)  # what the last holder finished between the look above and the lock
                    await self._load_journals(d)
                except BaseException:
                    await asyncio.shield(asyncio.to_thread(got.release))
                    raise
                if d.waiting_for is not None:
                    log.info("%s: this engine now downloads %s (after %s)", d.model_id, d.version, d.waiting_for.describe())
                self._waiting(d, None)
                return got
            self._waiting(d, got)
            await self._load_journals(d, quiet=True)  # the holder's progress shows here as it goes
            self._report(d)
            now, left = self._clock.monotonic(), sum(f.job.size - f.recorded_bytes for f in d.files if f.installed_sha256 is None)
            poll = float(self._settings.get("store.poll_s"))
            if seen is not None and seen[1] > left:
                # the holder's rate so far says when its last byte is in; from then on it only verifies and installs,
                # and the files are adopted the moment it records them
                poll = min(poll, max(FINISHING_POLL_S, left / ((seen[1] - left) / max(1e-3, now - seen[0])) / 2))
            elif left <= 0:
                poll = min(poll, FINISHING_POLL_S)
            seen = (now, left)
            await asyncio.sleep(poll)

    def _waiting(self, d: Download, holder: Holder | None) -> None:
        """Record which engine this download waits for (None: none) and report a change of engine."""
        before = d.waiting_for.engine if d.waiting_for is not None else None
        d.waiting_for = holder
        if (holder.engine if holder is not None else None) != before:
            if holder is not None:
                log.info("%s: waiting: %s", d.model_id, d.wait_reason)
            self._emit_progress(d)

    async def _keep_lock(self, d: Download, lock: VersionLock) -> None:
        """Refresh the holder's heartbeat; if another engine took the lock over, stop this run (it waits again)."""
        while True:
            await asyncio.sleep(max(0.05, float(self._settings.get("store.lock_stale_s")) / 3))
            try:
                held = await asyncio.to_thread(lock.heartbeat)
            except OSError as exc:
                log.warning("%s: heartbeat on the shared store failed: %s", d.model_id, exc)
                continue
            if not held:
                log.warning("%s: another engine took over the lock of %s: this engine stops and waits", d.model_id, d.version)
                if d.task is not None and d.stop_reason is None:
                    d.stop_reason = "preempt"
                    d.task.cancel()
                return

    async def _adopt_verified(self, d: Download) -> None:
        """Mark installed the files the store's record shows verified by a holder, when the installed file is still the one
        it recorded (size, mtime, inode) and the record names the catalog's size and sha256.

        The holder installed them only after their sha256 matched; hashing them again here would read the whole model
        once more per engine (over the network, on NFS), so the record is trusted and each engine's health checks verify
        the bytes on their own schedule.
        """
        store = self._store
        assert store is not None
        todo = [f for f in d.files if f.installed_sha256 is None]
        if not todo:
            return
        records = await asyncio.to_thread(store.verified, d.model_id, d.version)
        base = self._layout.model_dir(d.model_id, d.version)
        for f in todo:
            r = records.get(f.job.path)
            if r is None or r.size != f.job.size or (f.job.sha256 is not None and r.sha256 != f.job.sha256):
                continue
            try:
                st = await asyncio.to_thread(safefs.lstat, self._layout.home, safe_join(base, f.job.path))
            except (OSError, MavailError):
                continue
            if (st.st_size, st.st_mtime_ns, st.st_ino) != (r.size, r.mtime_ns, r.inode):
                continue
            tr = d.transfers.pop(f.job.path, None)
            if tr is not None:
                await asyncio.to_thread(_close_quietly, tr.file)
            f.installed_sha256, f.stat, f.piece_size = r.sha256, (r.mtime_ns, r.inode), r.piece_size
            f.recorded = dict(enumerate(r.pieces)) if r.pieces else {}
            f.prefixes = {}
            with _full_is_disk_full():
                await self._db.execute("UPDATE download_files SET installed_sha256 = ? WHERE model_id = ? AND path = ?",
                                       (r.sha256, d.model_id, f.job.path))
            log.info("%s: %s adopted from the shared store (verified by another engine, sha256 %s)", d.model_id, f.job.path,
                     r.sha256)
            self._report(d)

    async def _load_journals(self, d: Download, quiet: bool = False) -> None:
        """Take the shared partial files as the last holder left them: their journals replace what this engine knew
        (`quiet`: while waiting, to show the holder's progress, without a log line)."""
        store = self._store
        assert store is not None
        self._close_files(d)
        d.transfers.clear()
        for f in d.files:
            if f.installed_sha256 is not None:
                continue
            j = await asyncio.to_thread(store.read_journal, d.model_id, d.version, f.job.path)
            if j is not None and j.size == f.job.size and j.sha256 == f.job.sha256 and j.piece_size > 0:
                f.piece_size, f.recorded, f.validators = j.piece_size, dict(j.recorded), j.validators
                f.prefixes = {i: n for i, n in j.prefixes.items() if i not in j.recorded}
                if (f.recorded or f.prefixes) and not quiet:
                    log.info("%s: %s continues from the shared partial data (%d pieces verified)", d.model_id, f.job.path,
                             len(f.recorded))
            else:
                f.recorded, f.prefixes, f.validators = {}, {}, {}

    async def _write_journal(self, d: Download, f: FileRec) -> None:
        """Save the file's piece journal next to its shared partial data (the lock holder, after recording pieces)."""
        if self._store is None or d.store_lock is None:
            return
        j = PieceJournal(f.job.path, f.job.size, f.job.sha256, f.piece_size, dict(f.recorded), dict(f.prefixes),
                         {k: list(v) for k, v in f.validators.items()})
        try:
            await asyncio.to_thread(self._store.write_journal, d.model_id, d.version, j)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFull(str(exc)) from None
            log.warning("%s: piece journal of %s not written: %s", d.model_id, f.job.path, exc)

    async def _record_on_store(self, d: Download, files: list[FileRec]) -> None:
        """Add installed, verified files to the store's record, for the engines waiting on this version."""
        if self._store is None or d.store_lock is None:
            return
        recs = [VerifiedFile(f.job.path, f.job.size, f.installed_sha256, f.stat[0], f.stat[1], f.piece_size,
                             [h for _, h in sorted(f.recorded.items())] if f.recorded else None)
                for f in files if f.installed_sha256 is not None and f.stat is not None]
        if recs:
            await asyncio.to_thread(self._store.record_verified, d.model_id, d.version, recs)

    def _discard_shared(self, d: Download) -> None:
        """Delete the version's shared partial data when this engine wrote it last and no engine holds its lock; another
        engine's bytes (a download it paused, or runs now) are left to it."""
        store = self._store
        assert store is not None
        got = store.try_lock(d.model_id, d.version)
        if not isinstance(got, VersionLock):
            log.info("%s: shared partial data kept: %s is downloading %s", d.model_id, got.describe(), d.version)
            return
        try:
            writers = {j.writer for f in d.files if (j := store.read_journal(d.model_id, d.version, f.job.path)) is not None}
            if writers - {store.engine.name}:
                log.info("%s: shared partial data kept: another engine downloaded it", d.model_id)
                return
            store.remove_partial(d.model_id, d.version)
        finally:
            got.release()

    def _remove_partial(self, model_id: str) -> None:
        """Delete a download's partial data without following links (a link there is left, and logged)."""
        try:
            safefs.remove_tree(self._layout.home, self._layout.partial_dir / model_id)
        except (OSError, MavailError) as exc:
            log.warning("%s: partial data not removed: %s", model_id, exc)

    async def _open_partial(self, path: Path) -> PartialFile:
        """Open a partial file in a worker thread; if the caller is cancelled meanwhile, the file is closed once open."""
        fut = asyncio.ensure_future(asyncio.to_thread(self.opener, path))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            # the thread still opens the file: nobody will own it, so close it when it is open
            fut.add_done_callback(lambda t: None if t.cancelled() or t.exception() is not None else _close_quietly(t.result()))
            raise

    async def _fetch_file(self, d: Download, f: FileRec) -> None:
        path = self._partial_path(d, f.job.path)
        tr = d.transfers.get(f.job.path)
        job = f.job
        adopted = None
        if tr is None and not f.recorded and not f.prefixes:
            def verified(idx: int, digest: str, n: int) -> None:  # the adoption's progress, at disk speed
                f.recorded[idx] = digest
                d.received += n

            try:
                adopted = await self.adopter.adopt(d.model_id, d.version, f.job, path, f.piece_size, verified)  # a local copy
            finally:
                if adopted is None:
                    f.recorded.clear()  # pieces of an adoption that failed or was stopped are no download's
        if tr is None and adopted is None:
            await self.hub.refresh()
            job = await locate(self.hub.api_client(), self.hub, f.job)  # one resolve; refusals before any byte
        file: PartialFile | None = None
        if adopted is not None:
            sha, pieces = adopted.sha256, sorted(adopted.pieces.items())  # linked or copied, verified and flushed
        else:
            file = await self._open_partial(path)
            if tr is None:
                tr = FileTransfer(job, file, f.piece_size, self._ctx(d), recorded=dict(f.recorded), validators=f.validators,
                                  prefixes=dict(f.prefixes))
                d.transfers[f.job.path] = tr
            else:
                old_file, tr.file = tr.file, file
                if old_file is not file:
                    await asyncio.to_thread(_close_quietly, old_file)
            sha, pieces = await tr.run()
        dest = safe_join(self._layout.model_dir(d.model_id, d.version), f.job.path)
        if d.store_lock is not None and not await asyncio.to_thread(d.store_lock.still_held):
            # another engine took the lock over (this one was silent too long): the install is its to make
            log.warning("%s: the lock of %s was taken over before %s could be installed: this engine waits", d.model_id,
                        d.version, f.job.path)
            d.stop_reason = "preempt"
            raise asyncio.CancelledError
        if await asyncio.to_thread(os.path.lexists, dest) and self._leases.is_leased(d.model_id):
            await self._leases.wait_released(d.model_id)

        def install() -> tuple[int, int]:
            if file is not None:
                file.flush()
                file.close()
            home = self._layout.home
            safefs.replace(home, path, dest, create_parents=True)  # no link followed below the home; fsyncs the directory
            st = safefs.lstat(home, dest)
            return st.st_mtime_ns, st.st_ino

        f.stat = await asyncio.to_thread(install)
        f.installed_sha256 = sha
        f.recorded = dict(pieces)
        f.prefixes = {}
        d.transfers.pop(f.job.path, None)
        with _full_is_disk_full():
            await self._db.execute("UPDATE download_files SET installed_sha256 = ? WHERE model_id = ? AND path = ?",
                                         (sha, d.model_id, f.job.path))
        await self._record_on_store(d, [f])
        log.info("%s: %s verified (sha256 %s) and installed", d.model_id, f.job.path, sha)

    async def _finalize(self, d: Download) -> None:
        now = self._clock.time()
        mid, version = d.model_id, d.version
        verified: list[installed.VerifiedFile] = []
        for f in d.files:
            if f.stat is None:
                st = await asyncio.to_thread(os.stat, safe_join(self._layout.model_dir(mid, version), f.job.path))
                f.stat = (st.st_mtime_ns, st.st_ino)
            assert f.installed_sha256 is not None  # every file was verified (now or at an earlier install) before this
            verified.append(installed.VerifiedFile(path=f.job.path, size=f.job.size, sha256=f.installed_sha256, mtime_ns=f.stat[0],
                                                   inode=f.stat[1], verified_at=now, piece_size=f.piece_size,
                                                   pieces=[h for _, h in sorted(f.recorded.items())] if f.recorded else None))

        def w(conn: Any) -> None:
            installed.add_version(conn, mid, version, now)
            installed.record_files(conn, mid, version, verified)
            conn.execute("DELETE FROM download_pieces WHERE model_id = ?", (mid,))
            conn.execute("DELETE FROM download_prefixes WHERE model_id = ?", (mid,))

        with _full_is_disk_full():
            await self._db.write(w)
        d.completed_at = now
        await asyncio.to_thread(self._remove_partial, mid)
        if self._store is not None and d.store_lock is not None:
            await self._record_on_store(d, d.files)  # files installed before this run too: the waiting engines adopt them
            await asyncio.to_thread(self._store.remove_partial, mid, version)
        await self._presence.refresh([mid])
        log.info("%s: download %s completed: %d bytes, %d retries", mid, d.download_id, d.total_bytes, d.retry_count)
        await self._set_status(d, "completed")

    # --- resolving and checks ---------------------------------------------------------------
    async def _resolve(self, model_id: str) -> tuple[str, list[FileJob]]:
        spec = self._catalog.spec(model_id)
        if spec.source:
            jobs = (await resolve_pinned(self._db, self.hub.api_client(), self.hub, spec, self._clock.time(),
                                         on_disk=self.adopter.in_cache)).jobs
        else:
            jobs = [FileJob(path=f.path, urls=f.urls, size=f.size, sha256=f.sha256) for f in spec.files]
        return spec.version, jobs

    async def _already_installed(self, model_id: str, version: str, jobs: list[FileJob]) -> dict[str, tuple[str, int, int]]:
        """Files already installed and verified at this version: path -> (sha256, mtime_ns, inode)."""
        def q(conn: Any) -> list[installed.VerifiedFile]:
            return installed.files(conn, model_id, version)

        rows = {r.path: r for r in await self._db.read(q) if r.verified_at is not None}
        out = {}
        base = self._layout.model_dir(model_id, version)
        for j in jobs:
            r = rows.get(j.path)
            if r is None or r.size != j.size or (j.sha256 and r.sha256 != j.sha256):
                continue
            try:
                st = await asyncio.to_thread(os.lstat, safe_join(base, j.path))
            except OSError:
                continue
            if st.st_size == j.size and st.st_mtime_ns == r.mtime_ns and st.st_ino == r.inode:
                out[j.path] = (r.sha256, st.st_mtime_ns, st.st_ino)
        return out

    async def _check_space(self, d: Download, extra_needed: int | None = None) -> None:
        needed = d.remaining_bytes if extra_needed is None else extra_needed
        others = sum(x.remaining_bytes for x in self._dl.values() if x is not d and x.status in RUNNABLE)
        free = await asyncio.to_thread(free_bytes, self._layout.partial_dir)  # statvfs may hang on a network mount
        floor = int(float(self._settings.get("storage.min_free_gb")) * 1024 * MIB)
        if needed + others + floor > free:
            raise InsufficientStorage(
                f"not enough free disk for {d.model_id}: it needs {needed} bytes (plus {others} for other downloads and a "
                f"floor of {floor} bytes) but {free} are free", model_id=d.model_id, required_bytes=needed,
                other_downloads_bytes=others, min_free_bytes=floor, free_bytes=free)
        max_gb = float(self._settings.get("storage.max_gb"))
        if max_gb > 0:
            used = self._presence.bytes_on_disk()
            ceiling = int(max_gb * 1024 * MIB)
            if used + needed + others > ceiling:
                raise InsufficientStorage(f"{d.model_id} would take models past storage.max_gb ({used + needed + others} > {ceiling} bytes)",
                                          model_id=d.model_id, required_bytes=needed, used_bytes=used, max_bytes=ceiling)

    # --- the API -----------------------------------------------------------------------
    async def start(self, model_id: str, priority: str = "normal", max_retries: int | None = None,
                    bandwidth_limit_mbps: float = 0.0) -> Started:
        """Queue a download of the model's catalog version; Conflict if one is live, InsufficientStorage if the disk cannot hold it."""
        priority = normalise_priority(priority)
        self._catalog.spec(model_id)
        if bandwidth_limit_mbps < 0:
            raise InvalidParams("bandwidth_limit_mbps must be >= 0", field="bandwidth_limit_mbps")
        async with self._lock:
            old = self._dl.get(model_id)
            if old is not None and old.status in RUNNABLE + ("paused",):
                raise Conflict(f"a download of {model_id!r} is already {old.status}" + ("; resume it instead" if old.status == "paused" else ""),
                               model_id=model_id, download_id=old.download_id, status=old.status)
            with _full_is_insufficient_storage(model_id):
                return await self._start_locked(model_id, old, priority, max_retries, bandwidth_limit_mbps)

    async def _start_locked(self, model_id: str, old: Download | None, priority: str, max_retries: int | None,
                            bandwidth_limit_mbps: float) -> Started:
        """The part of `start` under the manager lock: resolve, reuse what is kept, check space, record, queue."""
        version, jobs = await self._resolve(model_id)
        installed = await self._already_installed(model_id, version, jobs)
        piece = self._piece_size()
        reuse = old is not None and old.version == version and old.status in ("failed", "cancelled")
        prior = {f.job.path: f for f in old.files} if reuse and old is not None else {}
        files = []
        for j in jobs:
            p = prior.get(j.path)
            if p is not None and p.job == j and p.piece_size > 0:
                rec = FileRec(j, p.piece_size, dict(p.recorded), dict(p.prefixes), dict(p.validators))
            else:
                rec = FileRec(j, piece)
            if j.path in installed:
                rec.installed_sha256 = installed[j.path][0]
                rec.stat = installed[j.path][1:]
            files.append(rec)
        now = self._clock.time()
        d = Download(model_id=model_id, download_id="dl_" + secrets.token_hex(6), version=version, status="queued",
                     priority=priority, seq=float(next(self._seq)),
                     max_retries=int(self._settings.get("downloads.max_retries")) if max_retries is None else max_retries,
                     bandwidth_limit_mbps=float(bandwidth_limit_mbps), created_at=now, files=files)
        if old is not None and (old.version != version or not prior):
            await self._discard_partial(old)
        await self._check_space(d)
        self._attach_limiter(d)
        self._dl[model_id] = d
        await self._forget_pieces(model_id)
        keep = [(model_id, f.job.path, i, s) for f in files if f.installed_sha256 is None for i, s in f.recorded.items()]
        if keep:
            await self._db.executemany("INSERT OR REPLACE INTO download_pieces VALUES (?,?,?,?)", keep)
        keep_prefixes = [(model_id, f.job.path, i, n) for f in files if f.installed_sha256 is None for i, n in f.prefixes.items()]
        if keep_prefixes:
            await self._db.executemany("INSERT OR REPLACE INTO download_prefixes VALUES (?,?,?,?)", keep_prefixes)
        await self._persist(d, with_files=True)
        self._hold(d, True)
        log.info("%s: download %s queued (priority %s, %d bytes)", model_id, d.download_id, priority, d.total_bytes)
        self._emit_progress(d)
        self._kick()
        eta = self.estimate_ready_seconds(model_id)
        return Started(model_id=model_id, download_id=d.download_id, status=d.status, queue_position=self.queue_position(d),
                       total_bytes=d.total_bytes, estimated_completion=self._clock.time() + eta if eta is not None else None)

    async def ensure(self, model_id: str, priority: str = "normal") -> dict[str, Any]:
        """Join the model's live download (raising its priority if asked), resume a paused one, or start one."""
        priority = normalise_priority(priority)
        self._catalog.spec(model_id)
        d = self._dl.get(model_id)
        started = False
        if d is None or d.status not in RUNNABLE + ("paused",):
            try:
                await self.start(model_id, priority=priority)
                started = True
            except Conflict:
                # another caller started it while this one waited for the lock: join that download
                d = self._dl.get(model_id)
                if d is None or d.status not in RUNNABLE + ("paused",):
                    raise
            d = self._dl[model_id]
        if not started:
            async with self._lock:
                if priority_rank(priority) < priority_rank(d.priority):
                    await self._set_priority(model_id, priority)
                if d.status == "paused":
                    await self._resume(model_id)
        eta = self.estimate_ready_seconds(model_id)
        return {"download_id": d.download_id, "status": d.status, "started": started, "joined": not started,
                "queue_position": self.queue_position(d), "estimated_wait_seconds": eta}

    async def _stop_task(self, d: Download, reason: str) -> None:
        t = d.task
        if t is not None:
            d.stop_reason = reason
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)

    async def pause(self, model_id: str) -> StatusChange:
        """Stop the download, keeping every byte; resume continues it."""
        async with self._lock:
            with _full_is_insufficient_storage(model_id):
                return await self._pause(model_id)

    async def _pause(self, model_id: str) -> StatusChange:
        d = self._get(model_id)
        if d.status == "paused":
            return StatusChange(model_id, "paused", changed=False)
        if d.status not in ("queued", "downloading", "verifying"):
            raise InvalidState(f"cannot pause a download that is {d.status}", model_id=model_id, status=d.status)
        await self._stop_task(d, "pause")
        await self._set_status(d, "paused")
        d.stop_reason = None
        self._kick()
        return StatusChange(model_id, "paused", changed=True)

    async def resume(self, model_id: str) -> StatusChange:
        """Queue a paused or failed download again (from the bytes it has)."""
        async with self._lock:
            with _full_is_insufficient_storage(model_id):
                return await self._resume(model_id)

    async def _resume(self, model_id: str) -> StatusChange:
        d = self._get(model_id)
        if d.status in RUNNABLE:
            return StatusChange(model_id, d.status, changed=False)
        if d.status not in ("paused", "failed"):
            raise InvalidState(f"cannot resume a download that is {d.status}", model_id=model_id, status=d.status)
        await self._check_space(d)
        await self._set_status(d, "queued")  # it keeps its place (seq) in the queue
        self._kick()
        return StatusChange(model_id, d.status, changed=True)

    async def cancel(self, model_id: str, keep_partial: bool = False) -> StatusChange:
        """Stop the download; delete its partial data unless `keep_partial`."""
        async with self._lock:
            with _full_is_insufficient_storage(model_id):
                return await self._cancel(model_id, keep_partial)

    async def _cancel(self, model_id: str, keep_partial: bool = False) -> StatusChange:
        d = self._get(model_id)
        if d.status not in LIVE:
            raise InvalidState(f"cannot cancel a download that is {d.status}", model_id=model_id, status=d.status)
        await self._stop_task(d, "cancel")
        if not keep_partial:
            await self._discard_partial(d)
        await self._set_status(d, "cancelled")
        d.stop_reason = None
        self._kick()
        return StatusChange(model_id, "cancelled", changed=True, keep_partial=keep_partial)

    async def _discard_partial(self, d: Download) -> None:
        self._close_files(d)
        d.transfers.clear()
        for f in d.files:
            f.recorded.clear()
            f.prefixes.clear()
            f.validators = {}
        await self._forget_pieces(d.model_id)
        await asyncio.to_thread(self._remove_partial, d.model_id)
        if self._store is not None:
            await asyncio.to_thread(self._discard_shared, d)
        self._report(d)  # its progress fell to what is installed

    async def set_priority(self, model_id: str, priority: str) -> QueuePlace:
        """Change the download's priority (the queue reorders at once)."""
        async with self._lock:
            with _full_is_insufficient_storage(model_id):
                return await self._set_priority(model_id, priority)

    async def _set_priority(self, model_id: str, priority: str) -> QueuePlace:
        priority = normalise_priority(priority)
        d = self._get(model_id)
        if d.status not in LIVE:
            raise InvalidState(f"cannot change the priority of a download that is {d.status}", model_id=model_id, status=d.status)
        d.priority = priority
        await self._persist(d)
        self._kick()
        self._emit_progress(d)
        return QueuePlace(model_id, priority, self.queue_position(d))

    async def move(self, model_id: str, position: int) -> QueuePlace:
        """Put a queued or running download at `position` (1-based) of the queue; it takes the priority found there."""
        async with self._lock:
            with _full_is_insufficient_storage(model_id):
                return await self._move(model_id, position)

    async def _move(self, model_id: str, position: int) -> QueuePlace:
        d = self._get(model_id)
        if d.status not in RUNNABLE:
            raise InvalidState(f"only queued or running downloads can move; this one is {d.status}", model_id=model_id, status=d.status)
        others = [x for x in self._order() if x is not d]
        pos = max(1, min(position, len(others) + 1))
        if others:
            if pos <= len(others):
                nxt = others[pos - 1]
                d.priority = nxt.priority
                prev_seq = others[pos - 2].seq if pos >= 2 and others[pos - 2].priority == nxt.priority else nxt.seq - 1.0
                d.seq = (prev_seq + nxt.seq) / 2
            else:
                last = others[-1]
                d.priority = last.priority
                d.seq = last.seq + 1.0
        await self._persist(d)
        self._kick()
        self._emit_progress(d)
        return QueuePlace(model_id, d.priority, self.queue_position(d))

    async def set_limit(self, model_id: str, bandwidth_limit_mbps: float) -> Limit:
        """Change the download's own bandwidth cap (MiB/s, 0 = none) while it runs."""
        async with self._lock:
            with _full_is_insufficient_storage(model_id):
                return await self._set_limit(model_id, bandwidth_limit_mbps)

    async def _set_limit(self, model_id: str, bandwidth_limit_mbps: float) -> Limit:
        d = self._get(model_id)
        d.bandwidth_limit_mbps = float(bandwidth_limit_mbps)
        await self._persist(d)
        self._report(d)  # the cap bounds its estimated time
        return Limit(model_id, d.bandwidth_limit_mbps)

    def progress(self, model_id: str, files: bool = False) -> dict[str, Any]:
        """The progress object of the model's download, with `files` each file's own; NotFound when there is none."""
        d = self._get(model_id)
        out = self.progress_dict(d)
        if files:
            out["files"] = [self._file_progress(d, f) for f in d.files]
        return out

    @staticmethod
    def _file_progress(d: Download, f: FileRec) -> dict[str, Any]:
        """One file of a download: its size, the bytes it holds, and whether it is installed, moving or waiting."""
        tr = d.transfers.get(f.job.path)
        if f.stat is not None:
            status, done = "installed", f.job.size
        elif tr is not None and d.status == "downloading":
            status, done = ("downloading" if tr.connections else "verifying"), min(f.job.size, tr.written_bytes)
        else:
            status, done = ("partial" if f.recorded_bytes else "pending"), f.recorded_bytes
        return {"path": f.job.path, "size_bytes": f.job.size, "downloaded_bytes": done, "status": status,
                "connections": tr.connections if tr is not None and d.status == "downloading" else 0}

    def active(self) -> ActiveDownloads:
        """Every download not completed or cancelled, in queue order (then paused and failed)."""
        order = self._order()
        rest = sorted((d for d in self._dl.values() if d.status in ("paused", "failed")), key=lambda d: (priority_rank(d.priority), d.seq))
        items = []
        for i, d in enumerate(order, 1):
            p = self.progress_dict(d)
            p["queue_position"] = i
            items.append(p)
        items += [self.progress_dict(d) for d in rest]
        running = [d for d in order if d.status == "downloading"]
        return ActiveDownloads(items=items, total_running=len(running), bandwidth_usage_mbps=sum(d.speed for d in running) / MIB,
                               bandwidth_limit_mbps=float(self._settings.get("downloads.bandwidth_limit_mbps")),
                               max_concurrent=int(self._settings.get("downloads.max_concurrent")))

    def get(self, model_id: str) -> Download | None:
        """The model's download record, if any (for other services)."""
        return self._dl.get(model_id)

    async def add_from_hub(self, source: str, **options: Any) -> AddedModel:
        """`models.add`: write `catalog.d/<id>.toml` for a Hub repository or a shipped model's name (see `hubadd`)."""
        return await add_from_hub(client=self.hub.api_client(), access=self.hub, catalog=self._catalog.models, home=self._layout.home,
                                  catalog_dir=self._layout.catalog_dir, source=source, **options)

    async def hub_branch_moves(self, current: Mapping[str, str]) -> list[BranchMove]:
        """The `hf://` models in use (model_id -> version) whose branch now points past the commit they are pinned to."""
        return await branch_moves(self._db, self.hub.api_client(), self.hub, self._catalog.models, current)

    async def history(self, limit: int, model_id: str | None = None) -> list[HistoryEntry]:
        """Finished downloads (the latest of each model: completed, failed or cancelled) from the table, newest first;
        bytes only for a completed one (the model's size; what a stopped one had fetched is not kept)."""
        def q(conn: Any) -> list[Any]:
            return conn.execute(
                "SELECT d.*, (SELECT SUM(size) FROM download_files f WHERE f.model_id = d.model_id) AS bytes FROM downloads d"
                " WHERE d.status IN ('completed', 'failed', 'cancelled') AND (? IS NULL OR d.model_id = ?)"
                " ORDER BY d.updated_at DESC LIMIT ?", (model_id, model_id, limit)).fetchall()

        return [HistoryEntry("download", r["download_id"], r["model_id"], r["version"], r["status"], r["created_at"],
                             r["completed_at"] or r["updated_at"], r["bytes"] if r["status"] == "completed" else None,
                             r["error_message"] and f"{r['error_code']}: {r['error_message']}")
                for r in await self._db.read(q)]


__all__ = ["ActiveDownloads", "DownloadManager", "Download", "Limit", "QueuePlace", "SourceUnavailable", "Started",
           "StatusChange"]
