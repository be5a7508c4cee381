"""Moving bytes: one file over HTTP into its partial file, in pieces, over one or several ranges.

A `FileTransfer` owns one file of a download. Its bytes never pass through the
event loop: each connection is a libcurl handle (pycurl) driven by a thread of
its own, which copies what arrives into its own reused buffer and, a buffer at
a time, writes it with pwrite at its offset, hashes it into its piece (XXH3,
core/piecehash.py) and paces it through the rate limiters. libcurl was chosen by
measurement: on 1 GiB over loopback it costs about what curl itself does, less
than half of httpx's (which stays the client of everything else). The loop sees
received bytes five times a second, finished pieces, and each response's status
and validators, checked there.

Connections take spans of consecutive pending pieces and request them with
`Range` (and `If-Range` on the validator that server gave before). A file
starts with `downloads.parallel_ranges` connections and opens more while the
last ones raised its aggregate rate by 15% or more, up to
`downloads.max_connections_per_file`. With no pending piece left, a connection
that would go idle takes the second half of the live span with most pieces still
to start (work stealing), so a slow connection keeps only the piece it is writing.

A finished piece is flushed (fdatasync) and only then reported, so the database
never claims bytes a crash could lose; the flushed prefix of pieces in progress
is recorded too, every 8 MiB written or half a second. The whole-file sha256
follows the lowest unhashed byte: the connection writing there feeds it
directly, and pieces that finished ahead of it are read back from the page cache
(on another thread) as soon as the gap before them closes, so after the last
byte only the last pieces remain to hash.

Validators are checked on every response: a file whose ETag or Last-Modified
changed is restarted from byte 0, and a server that ignores Range is
downloaded over one plain GET, so old and new bytes are never spliced.

Retries use tenacity: exponential backoff with jitter, Retry-After honoured,
4xx other than 408/429 not retried (the URL is dropped and the next mirror
tried), a stalled connection replaced without spending a retry, and the retry
budget renewed whenever an attempt made progress. A connection that delivers
less than `downloads.min_rate_bytes_per_s` over `downloads.min_rate_window_s`
(time spent waiting for our own bandwidth limits and disk not counted) is
replaced too; after `downloads.min_rate_replacements` such connections the URL
is given up on for the file, and with no URL left the file fails.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import hashlib
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

import certifi
import httpcore
import httpx
import pycurl
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from mavail.core.downloads.limiter import RateLimiter, reserve_all, take_all
from mavail.core.downloads.partial import PartialFile
from mavail.core.piecehash import new_piece_hasher
from mavail.core.errors import InsufficientStorage, IntegrityError, SourceUnavailable
from mavail.core.state import DatabaseFull
from mavail.core.timeutil import wait_event

log = logging.getLogger("mavail.downloads")

CURL_BUFFER = 128 * 1024  # libcurl's receive buffer per connection: the most bytes one write callback gets
WRITE_BUFFER = 512 * 1024  # each connection's own buffer: bytes are written and hashed this many at a time
LIMIT_CHUNK = 32 * 1024  # bytes a connection takes from the rate limiters at a time (small: the pace stays even)
READBACK_CHUNK = 1024 * 1024
MAX_SPAN_BYTES = 64 * 1024 * 1024
PROGRESS_S = 0.2  # how often a connection thread reports received bytes to the event loop
GROW_SETTLE_S = 0.2  # after opening connections, time before the rate is measured again
GROW_WINDOW_S = 0.3  # the window over which the aggregate rate is measured
GROW_MIN_GAIN = 1.15  # more connections are opened only while the last ones raised the rate this much
PREFIX_RECORD_S = 0.5  # how often the flushed prefix of pieces in progress is recorded when no piece completes
# ... and sooner once this much was written since the last flush: what a kill -9 can lose stays small on a fast link
FLUSH_BYTES = 8 * 1024 * 1024
# httpcore reads sockets 64 KiB at a time; at loopback speeds the per-read Python work then costs
# more than the bytes. Larger reads return whatever the socket holds, so slow links are unaffected.
if getattr(httpcore.AsyncHTTP11Connection, "READ_NUM_BYTES", 0) < 256 * 1024:
    httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = 256 * 1024  # type: ignore[attr-defined]
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


# --- errors inside a transfer ----------------------------------------------------
class TransferError(Exception):
    """A failure of one attempt; `retryable` says whether another attempt may help."""

    retryable = True
    counts = True  # spends a retry when the attempt made no progress
    retry_after: float | None = None


class HttpStatus(TransferError):
    """The server answered with an error status."""

    def __init__(self, status: int, url: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status} from {url}")
        self.status = status
        self.url = url
        self.retry_after = retry_after
        self.retryable = status in (408, 429) or status >= 500


class Stalled(TransferError):
    """No byte arrived for `downloads.stall_timeout_s`."""

    counts = False


class TooSlow(TransferError):
    """The connection delivered less than `downloads.min_rate_bytes_per_s` over a window."""

    counts = False


class ShortRead(TransferError):
    """The response ended before the bytes it was asked for (a drop, or a Content-Length that lied)."""


class DeadUrl(TransferError):
    """This URL cannot serve the file (4xx, wrong size); the next mirror may."""

    counts = False


class CannotConnect(TransferError):
    """The TCP (or TLS) connection could not be made."""


class Broken(TransferError):
    """The connection broke in the middle of a response."""


class DiskFull(Exception):
    """The partial file could not be written: no space left (ENOSPC/EDQUOT)."""


class _Restart(Exception):
    """The file was reset (validator changed, ranges unsupported): restart every worker."""


class _Stale(Exception):
    """A write of an older generation of the file, after a reset."""


def _is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, DatabaseFull) or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    import time

    return max(0.0, when - (now if now is not None else time.time()))


def backoff_delay(failures: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter (half fixed, half random); Retry-After wins when given."""
    if retry_after is not None:
        return min(retry_after, 3600.0)
    d = min(cap, base * (2 ** max(0, failures - 1)))
    return d / 2 + random.uniform(0, d / 2)


# --- what a transfer needs from the manager ------------------------------------------
@dataclass(frozen=True)
class FileJob:
    """One file to fetch: destination path, URLs in order, size, expected sha256 (and git blob sha1 for Hub files)."""

    path: str
    urls: tuple[str, ...]
    size: int
    sha256: str | None
    git_sha1: str | None = None


@dataclass
class TransferContext:
    """Settings (read at use time) and callbacks one download's transfers share."""

    client: httpx.AsyncClient
    limiters: list[RateLimiter]
    max_retries: Callable[[], int]
    setting: Callable[[str], Any]  # config.get
    # after fdatasync: (path, [(finished piece, sha256)], {piece in progress: flushed prefix length})
    on_pieces: Callable[[str, list[tuple[int, str]], dict[int, int]], Awaitable[None]]
    on_reset: Callable[[str, str], Awaitable[None]]  # (path, reason): forget recorded pieces
    on_validator: Callable[[str, dict[str, list[str | None]]], Awaitable[None]]
    on_bytes: Callable[[int], None] = lambda n: None
    on_retry: Callable[[str, str, BaseException, float], None] = lambda path, url, exc, delay: None
    headers_for: Callable[[str], dict[str, str]] = lambda url: {}
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


@dataclass
class _Span:
    gen: int
    first: int
    end_idx: int  # exclusive
    failures: int = 0
    stalls: int = 0
    url_idx: int = 0
    cur: int = -1  # the piece its connection is writing (or about to): pieces after it may be stolen

    def __post_init__(self) -> None:
        self.cur = self.first


@dataclass
class _Frontier:
    """The whole-file hash, advanced over contiguous bytes only."""

    size: int
    git: bool = False
    pos: int = 0
    sha: Any = field(default_factory=hashlib.sha256)
    sha1: Any = None

    def __post_init__(self) -> None:
        if self.git:
            self.sha1 = hashlib.sha1(b"blob %d\0" % self.size)

    def feed(self, offset: int, data: bytes | bytearray | memoryview) -> bool:
        """Hash the part of `data` (at `offset`) that extends the hashed prefix; False if it does not touch it."""
        n = len(data)
        if not (offset <= self.pos < offset + n):
            return False
        view = memoryview(data)[self.pos - offset:]
        self.sha.update(view)
        if self.sha1 is not None:
            self.sha1.update(view)
        self.pos = offset + n
        return True


class _Head:
    """The status and headers of a response, as the checks of a response read them."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status_code = status
        self.headers = headers


class _Conn:
    """One connection of a file: a libcurl handle (kept alive across its requests) used by one thread at a time."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.rx = 0  # body bytes received, read by the connection count controller
        self.buf = bytearray(WRITE_BUFFER)  # reused for every response on this connection
        c = self.curl = pycurl.Curl()
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.FOLLOWLOCATION, 1)
        c.setopt(pycurl.MAXREDIRS, 10)
        c.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        c.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        c.setopt(pycurl.PROXY, "")  # like the httpx client: no proxy from the environment
        c.setopt(pycurl.BUFFERSIZE, CURL_BUFFER)
        c.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        c.setopt(pycurl.NOPROGRESS, 0)
        c.setopt(pycurl.CAINFO, certifi.where())
        c.setopt(pycurl.TCP_KEEPALIVE, 1)

    def close(self) -> None:
        """Close the handle and its connection."""
        self.curl.close()


def _discard(data: bytes) -> None:
    return None


def _no_progress(*args: int) -> int:
    return 0


def _curl_error(exc: pycurl.error, url: str) -> TransferError:
    code = exc.args[0] if exc.args else 0
    msg = exc.args[1] if len(exc.args) > 1 else str(exc)
    if code in (pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_CONNECT, pycurl.E_OPERATION_TIMEDOUT, pycurl.E_SSL_CONNECT_ERROR,
                pycurl.E_PEER_FAILED_VERIFICATION):
        return CannotConnect(f"cannot connect to {url}: {msg}")
    if code == pycurl.E_PARTIAL_FILE:
        return ShortRead(f"{url}: {msg}")
    if code == pycurl.E_TOO_MANY_REDIRECTS:
        return DeadUrl(f"{url}: {msg}")
    return Broken(f"{url}: {msg}")


def _in_thread(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any, name: str) -> asyncio.Future[Any]:
    """Run `fn` on a thread of its own (not the loop's default pool, which flushes and reads use); a future of its result."""
    fut: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not fut.done():
            fut.set_result(value) if ok else fut.set_exception(value)

    def run() -> None:
        try:
            r = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop
            ok, value = False, exc
        else:
            ok, value = True, r
        try:
            loop.call_soon_threadsafe(settle, ok, value)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more

    threading.Thread(target=run, name=name, daemon=True).start()
    return fut


class FileTransfer:
    """Downloads one file into its partial path; resumable, restartable, in-process reusable after a pause."""

    def __init__(self, job: FileJob, file: PartialFile, piece_size: int, ctx: TransferContext,
                 recorded: dict[int, str] | None = None, validators: dict[str, list[str | None]] | None = None,
                 prefixes: dict[int, int] | None = None) -> None:
        self.job = job
        self.file = file
        self.ps = piece_size
        self.ctx = ctx
        self.size = job.size
        self.npieces = (job.size + piece_size - 1) // piece_size
        self._lock = threading.Lock()
        self._hlock = threading.Lock()
        self.gen = 0
        self.no_ranges = False
        self.dead: set[str] = set()
        self.dead_reason: str = ""  # why the last URL was given up on, for the message when none is left
        self.slow: dict[str, int] = {}  # URL -> connections replaced for being too slow
        self.validators: dict[str, list[str | None]] = dict(validators or {})
        self.resets = 0
        self.integrity_failures = 0
        self._live_spans: list[_Span] = []
        self._conns: set[_Conn] = set()
        self._rx_done = 0  # bytes received by connections that have ended
        self.peak_connections = 0  # the most connections open at once in this process
        self.steals = 0  # spans split so an idle connection takes over their tail
        self._failed_span_retries = 0  # failures of the span that gave up, kept for the figure after it ended
        self._run_task: asyncio.Task[Any] | None = None
        self._commit_error: BaseException | None = None
        self._hash_read: asyncio.Future[int] | None = None  # the hash loop's read-back in its thread
        self._init_state(recorded or {})
        self._prefixes = dict(prefixes or {})  # recorded prefixes still to re-hash from disk (at the next run)
        self._commit_q: list[tuple[int, str]] = []
        self._unflushed = 0  # bytes written since the last flush began
        self._flush_asked = False
        self._commit_event = asyncio.Event()
        self._catchup_event = asyncio.Event()
        self._alock = asyncio.Lock()  # a reset never interleaves with recording pieces

    # --- piece state -------------------------------------------------------
    def _init_state(self, recorded: dict[int, str]) -> None:
        self.state = [0] * self.npieces  # 0 pending, 1 assigned, 2 written
        self.written = [0] * self.npieces
        self.hashers: dict[int, Any] = {}
        self.piece_sha: dict[int, str] = {}
        self.recorded: set[int] = set()
        self._last_prefixes: dict[int, int] = {}
        for idx, sha in recorded.items():
            if 0 <= idx < self.npieces:
                self.state[idx] = 2
                self.written[idx] = self.piece_len(idx)
                self.piece_sha[idx] = sha
                self.recorded.add(idx)
        self.frontier = _Frontier(self.size, git=self.job.git_sha1 is not None)

    def _drop_missing_pieces(self) -> None:
        """Forget recorded pieces the partial file does not hold (it was deleted or truncated behind our back)."""
        have = self.file.size()
        with self._lock:
            for i in range(self.npieces):
                if self.state[i] == 2 and i * self.ps + self.piece_len(i) > have:
                    self.state[i] = 0
                    self.written[i] = 0
                    self.piece_sha.pop(i, None)
                    self.recorded.discard(i)

    def _restore_prefixes(self) -> None:
        """Re-hash the recorded flushed prefix of pieces that were in progress, from disk, so only their rest is fetched."""
        prefixes, self._prefixes = self._prefixes, {}
        have = self.file.size()
        for idx, length in sorted(prefixes.items()):
            if not (0 <= idx < self.npieces) or not (0 < length < self.piece_len(idx)) or idx * self.ps + length > have:
                continue
            with self._lock:
                if self.state[idx] != 0 or self.written[idx] != 0:
                    continue
            h = new_piece_hasher()
            pos, end = idx * self.ps, idx * self.ps + length
            while pos < end:
                data = self.file.read(pos, min(READBACK_CHUNK, end - pos))
                if not data:
                    break
                h.update(data)
                pos += len(data)
            if pos != end:
                continue
            with self._lock:
                if self.state[idx] == 0 and self.written[idx] == 0:
                    self.hashers[idx] = h
                    self.written[idx] = length
                    self._last_prefixes[idx] = length

    def _prefixes_locked(self) -> dict[int, int]:
        """{piece in progress: bytes written from its start}; read under `_lock` before a flush, record after it."""
        return {i: self.written[i] for i in self.hashers if self.state[i] != 2 and 0 < self.written[i] < self.piece_len(i)}

    def piece_len(self, idx: int) -> int:
        """Bytes of piece `idx` (the last one may be short)."""
        return min(self.ps, self.size - idx * self.ps)

    @property
    def written_bytes(self) -> int:
        """Bytes of this file on disk in the current generation (flushed or not)."""
        return sum(self.written)

    @property
    def recorded_bytes(self) -> int:
        """Bytes of pieces flushed and recorded."""
        return sum(self.piece_len(i) for i in self.recorded)

    @property
    def retries_in_a_row(self) -> int:
        """Retries in a row on this file, the figure `max_retries` bounds (an attempt that makes progress renews it).

        Every failed attempt is followed by a retry until the limit; the one past the limit ends the file.
        """
        failed = max([s.failures for s in self._live_spans] + [self.integrity_failures, self._failed_span_retries])
        return min(failed, self.ctx.max_retries())

    @property
    def complete(self) -> bool:
        """Every piece written."""
        return all(s == 2 for s in self.state)

    def _take_span(self, max_pieces: int) -> _Span | None:
        """The next run of pending pieces; with none left, the second half of the live span with most pieces still to start."""
        with self._lock:
            for i, s in enumerate(self.state):
                if s == 0:
                    j = i + 1
                    while j < self.npieces and j - i < max_pieces and self.state[j] == 0 and self.written[j] == 0:
                        j += 1
                    for k in range(i, j):
                        self.state[k] = 1
                    return _Span(self.gen, i, j)
            if self.no_ranges:
                return None
            # work stealing: a connection that would go idle takes over the tail of the slowest-to-finish span
            victim, free = None, 0
            for sp in self._live_spans:
                n = sp.end_idx - sp.cur - 1
                if sp.gen == self.gen and n > free:
                    victim, free = sp, n
            if victim is None:
                return None
            mid = victim.end_idx - (free + 1) // 2
            span = _Span(self.gen, mid, victim.end_idx)
            victim.end_idx = mid  # its connection stops at its new end (it checks at each piece boundary)
            self.steals += 1
            return span

    def _release(self, span: _Span) -> None:
        with self._lock:
            if span.gen != self.gen:
                return
            for k in range(span.first, span.end_idx):
                if self.state[k] == 1:
                    self.state[k] = 0

    def _span_offset(self, span: _Span) -> int | None:
        """The next byte the span needs, or None when it is all written."""
        with self._lock:
            for k in range(span.first, span.end_idx):
                if self.state[k] != 2:
                    return k * self.ps + self.written[k]
        return None

    def _span_end(self, span: _Span) -> int:
        return min(self.size, span.end_idx * self.ps)

    async def _reset(self, reason: str) -> None:
        async with self._alock:
            await self._reset_locked(reason)

    async def _reset_locked(self, reason: str) -> None:
        with self._lock, self._hlock:
            self.gen += 1
            self.resets += 1
            self._init_state({})
            self._prefixes = {}
            self._commit_q.clear()
            self.validators = {}
        log.warning("%s: restarting from byte 0: %s", self.job.path, reason)
        await self.ctx.on_reset(self.job.path, reason)
        await asyncio.to_thread(self.file.truncate, 0)

    # --- writing (worker threads) ----------------------------------------
    def _write_job(self, gen: int, data: bytes | memoryview, offset: int) -> None:
        """Write bytes of one piece at `offset`, hash them into the piece (and into the whole file at its frontier)."""
        if gen != self.gen:
            raise _Stale()
        try:
            self.file.write(data, offset)
            writeback = getattr(self.file, "start_writeback", None)
            if writeback is not None:
                writeback(offset, len(data))
        except OSError as exc:
            if _is_disk_full(exc):
                raise DiskFull(str(exc)) from None
            raise
        idx = offset // self.ps
        with self._lock:
            if gen != self.gen:
                raise _Stale()
            h = self.hashers.get(idx)
            if h is None:
                h = self.hashers[idx] = new_piece_hasher()
        h.update(data)  # the piece belongs to this connection alone
        done = None
        with self._lock:
            if gen != self.gen:
                raise _Stale()
            self.written[idx] += len(data)
            self._unflushed += len(data)
            ask_flush = self._unflushed >= FLUSH_BYTES and not self._flush_asked
            if ask_flush:
                self._flush_asked = True
            if self.written[idx] >= self.piece_len(idx):
                self.state[idx] = 2
                done = self.hashers.pop(idx).hexdigest()
                self.piece_sha[idx] = done
                self._commit_q.append((idx, done))
        if self.frontier.pos == offset:  # unlocked peek: only the connection at the frontier waits for the hash lock
            with self._hlock:
                if gen == self.gen:
                    self.frontier.feed(offset, data)
        if done is not None:
            self._loop.call_soon_threadsafe(self._piece_done)
        elif ask_flush:
            self._loop.call_soon_threadsafe(self._commit_event.set)

    def _piece_done(self) -> None:
        self._commit_event.set()
        self._catchup_event.set()

    def _contiguous_end(self) -> int:
        with self._lock:
            end = 0
            for k in range(self.npieces):
                end = k * self.ps + self.written[k]
                if self.written[k] < self.piece_len(k):
                    return end
            return self.size

    def _catch_up(self, limit: int | None = None) -> int:
        """Read back and hash written bytes the frontier has not seen; return bytes read."""
        total = 0
        while True:
            with self._hlock:
                gen, pos = self.gen, self.frontier.pos
            end = self._contiguous_end()
            if limit is not None:
                end = min(end, pos + limit - total)
            if pos >= end:
                return total
            n = min(READBACK_CHUNK, end - pos)
            data = self.file.read(pos, n)
            if len(data) < n:
                raise OSError(errno.EIO, f"partial file shorter than recorded at {pos}")
            total += n
            with self._hlock:
                if gen != self.gen:
                    return total
                self.frontier.feed(pos, data)

    # --- committing pieces -------------------------------------------------
    async def _commit_loop(self) -> None:
        try:
            while True:
                await wait_event(self._commit_event, PREFIX_RECORD_S)
                self._commit_event.clear()
                await self._commit_pending()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # recording failed (a full disk): stop the whole file rather than download what cannot be recorded
            self._commit_error = exc
            if self._run_task is not None:
                self._run_task.cancel()
            raise

    async def _hash_loop(self) -> None:
        """Catch the whole-file hash up over pieces that finished ahead of it (apart from commits, so neither waits)."""
        while True:
            await self._catchup_event.wait()
            self._catchup_event.clear()
            self._hash_read = asyncio.ensure_future(asyncio.to_thread(self._catch_up, 64 * 1024 * 1024))
            await asyncio.shield(self._hash_read)

    async def _commit_pending(self) -> None:
        async with self._alock:
            await self._commit_pending_locked()

    async def _commit_pending_locked(self) -> None:
        with self._lock:
            # the prefixes are read before the flush: whatever they count is on disk once it returns
            prefixes = self._prefixes_locked()
            batch, self._commit_q = self._commit_q, []
            self._unflushed, self._flush_asked = 0, False
            gen = self.gen
        if not batch and prefixes == self._last_prefixes:
            return
        await asyncio.to_thread(self.file.flush)
        if gen != self.gen:
            return
        await self.ctx.on_pieces(self.job.path, batch, prefixes)
        with self._lock:
            if gen == self.gen:
                self.recorded.update(i for i, _ in batch)
                self._last_prefixes = prefixes

    # --- HTTP ----------------------------------------------------------------
    def _pick_url(self, span: _Span) -> str:
        live = [u for u in self.job.urls if u not in self.dead]
        if not live:
            raise SourceUnavailable(f"every URL of {self.job.path} failed" + (f"; last: {self.dead_reason}" if self.dead_reason else ""),
                                    path=self.job.path, urls=list(self.job.urls))
        return live[span.url_idx % len(live)]

    def _check_validator(self, url: str, resp: "_Head") -> bool:
        """Record the response's validator; False when it differs from the one recorded for this URL."""
        etag, lm = resp.headers.get("etag"), resp.headers.get("last-modified")
        old = self.validators.get(url)
        if old is None:
            self.validators[url] = [etag, lm]
            return True
        if (old[0] and etag and old[0] != etag) or (not (old[0] and etag) and old[1] and lm and old[1] != lm):
            return False
        return True

    def _request_headers(self, url: str, start: int, end: int) -> dict[str, str]:
        h = {"Accept-Encoding": "identity", **self.ctx.headers_for(url)}
        if not self.no_ranges:
            h["Range"] = f"bytes={start}-{end - 1}"
            v = self.validators.get(url)
            if v and v[0] and not v[0].startswith("W/"):
                h["If-Range"] = v[0]
            elif v and v[1]:
                h["If-Range"] = v[1]
        return h

    async def _fetch(self, span: _Span, url: str, conn: "_Conn") -> None:
        start = self._span_offset(span)
        if start is None:
            return
        if self.no_ranges:
            start = 0
        headers = self._request_headers(url, start, self._span_end(span))
        conn.stop.clear()
        fut = _in_thread(self._loop, self._fetch_blocking, conn, span, url, start, headers, name=f"conn:{self.job.path}")
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            # the thread owns the descriptor's writes until it returns: stop it and wait, keeping what it wrote
            conn.stop.set()
            while not fut.done():
                try:
                    await asyncio.wait([fut])
                except asyncio.CancelledError:
                    continue
            if not fut.cancelled():
                fut.exception()  # retrieved: the cancellation is what the caller sees
            raise

    def _fetch_blocking(self, conn: "_Conn", span: _Span, url: str, start: int, headers: dict[str, str]) -> None:
        """One request on the connection's thread: its bytes go straight from libcurl's buffer to the partial file."""
        ctx, ps, loop = self.ctx, self.ps, self._loop
        gen = span.gen
        stall = float(ctx.setting("downloads.stall_timeout_s"))
        connect = float(ctx.setting("downloads.connect_timeout_s"))
        min_rate = float(ctx.setting("downloads.min_rate_bytes_per_s"))
        window = float(ctx.setting("downloads.min_rate_window_s"))
        limiters = ctx.limiters
        clock = time.monotonic
        st: dict[str, Any] = {"head": None, "hdrs": {}, "status": 0, "checked": False, "exc": None, "done": False}
        pos = start
        skip = 0
        if self.no_ranges:
            # a plain GET: bytes already written in this generation are skipped, not rewritten
            skip = pos = self._span_offset(_Span(gen, 0, self.npieces)) or 0
        seen = 0
        t0 = clock()
        last_data = t0 + connect  # before the first byte, the connect timeout is part of the allowance
        win_start, win_bytes, win_ours = t0, 0, 0.0  # win_ours: time spent waiting on our own limits and disk
        unreported, reported_at = 0, t0

        def on_header(line: bytes) -> None:
            nonlocal last_data
            last_data = clock()
            text = line.decode("iso-8859-1").strip()
            if text.startswith("HTTP/"):
                parts = text.split(None, 2)
                st["status"] = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
                st["hdrs"] = {}
            elif ":" in text:
                k, v = text.split(":", 1)
                st["hdrs"][k.strip().lower()] = v.strip()

        def check() -> None:
            st["checked"] = True
            head = _Head(st["status"], st["hdrs"])
            asyncio.run_coroutine_threadsafe(self._check_response(head, url, start, self._span_end(span), span), loop).result()

        buf = conn.buf
        fill = 0  # bytes in buf, which holds the file's bytes from buf_off on (never across a piece boundary)
        buf_off = pos
        cur_idx = -1
        lim_pending = 0

        def flush_buf() -> None:
            nonlocal fill, buf_off, win_ours
            if fill:
                w0 = clock()
                self._write_job(gen, memoryview(buf)[:fill], buf_off)
                win_ours += clock() - w0
            buf_off += fill
            fill = 0

        def pace(n: int) -> None:
            nonlocal win_ours
            delay = reserve_all(limiters, n)
            if delay > 0:
                conn.stop.wait(delay)
                win_ours += delay

        def on_write(data: bytes) -> int | None:
            # libcurl hands over what each recv returned (often 16 KiB): copy it into the connection's buffer
            # and leave the writes, hashes and checks that cost a call each to whole buffers
            nonlocal pos, seen, last_data, win_start, win_bytes, win_ours, unreported, reported_at, fill, cur_idx, lim_pending
            try:
                if not st["checked"]:
                    check()
                n = len(data)
                now = clock()
                last_data = now
                conn.rx += n
                win_bytes += n
                unreported += n
                lim_pending += n
                view = memoryview(data)
                if seen < skip:
                    view = view[min(skip - seen, n):]
                seen += n
                while view:
                    idx = pos // ps
                    if idx != cur_idx:
                        with self._lock:
                            if idx >= span.end_idx or span.gen != self.gen:
                                st["done"] = True  # the rest of the range was stolen (or the file was reset)
                                break
                            span.cur = idx
                        cur_idx = idx
                    k = min(len(view), min(self.size, (idx + 1) * ps) - pos, len(buf) - fill)
                    buf[fill:fill + k] = view[:k]
                    fill += k
                    pos += k
                    view = view[k:]
                    if fill == len(buf) or pos % ps == 0 or pos == self.size:
                        flush_buf()
                if now - reported_at >= PROGRESS_S:
                    loop.call_soon_threadsafe(ctx.on_bytes, unreported)
                    unreported, reported_at = 0, now
                if lim_pending >= LIMIT_CHUNK:
                    pace(lim_pending)
                    lim_pending = 0
                if conn.stop.is_set() or st["done"]:
                    return 0  # aborts the response; bytes already received are kept
                if min_rate > 0 and now - win_start >= window:
                    server_time = now - win_start - win_ours
                    if server_time > 0 and win_bytes / server_time < min_rate:
                        raise TooSlow(f"{win_bytes / server_time:.0f} B/s from {url}, under downloads.min_rate_bytes_per_s "
                                      f"({min_rate:.0f} B/s)")
                    if server_time > 0:  # a window at the minimum rate breaks the run of slow connections
                        self.slow.pop(url, None)
                    win_start, win_bytes, win_ours = now, 0, 0.0
            except BaseException as exc:
                st["exc"] = exc
                return 0
            return None

        def on_progress(dltotal: int, dlnow: int, ultotal: int, ulnow: int) -> int:
            if conn.stop.is_set():
                return 1
            if clock() - last_data > stall:
                st["exc"] = Stalled(f"no data from {url} for {stall} s")
                return 1
            return 0

        c = conn.curl
        c.setopt(pycurl.URL, url)
        c.setopt(pycurl.HTTPHEADER, [f"{k}: {v}" for k, v in headers.items()])
        c.setopt(pycurl.HEADERFUNCTION, on_header)
        c.setopt(pycurl.WRITEFUNCTION, on_write)
        c.setopt(pycurl.XFERINFOFUNCTION, on_progress)
        c.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(connect * 1000)))
        try:
            c.perform()
        except pycurl.error as exc:
            if st["exc"] is not None:
                raise st["exc"] from None
            if not st["done"] and not conn.stop.is_set():
                raise _curl_error(exc, url) from None
        finally:
            try:
                flush_buf()  # keep every byte that arrived, even when the connection broke or was stopped
            except _Stale:
                pass
            except BaseException as exc:
                if st["exc"] is None:
                    st["exc"] = exc
            if unreported:
                loop.call_soon_threadsafe(ctx.on_bytes, unreported)
            c.setopt(pycurl.WRITEFUNCTION, _discard)  # drop the closures (and what they hold) now
            c.setopt(pycurl.HEADERFUNCTION, _discard)
            c.setopt(pycurl.XFERINFOFUNCTION, _no_progress)
        if st["exc"] is not None:
            raise st["exc"]
        if conn.stop.is_set():
            return
        if not st["checked"]:
            check()  # a response without a body (an error status, an empty range)
        if pos < self._span_end(span) and not st["done"]:
            raise ShortRead(f"response ended at byte {pos} of {self._span_end(span)}")


    async def _check_response(self, resp: "_Head", url: str, start: int, end: int, span: _Span) -> None:
        st = resp.status_code
        if st == 416:
            cr = resp.headers.get("content-range", "")
            m = re.match(r"^bytes \*/(\d+)$", cr)
            if m and int(m.group(1)) != self.size:
                self.dead.add(url)
                raise DeadUrl(f"{url} serves {m.group(1)} bytes, the catalog says {self.size}")
            raise HttpStatus(416, url)
        if st >= 400 or st not in (200, 206):
            ra = parse_retry_after(resp.headers.get("retry-after"))
            err = HttpStatus(st, url, ra)
            if not err.retryable:
                self.dead.add(url)
                raise DeadUrl(str(err))
            raise err
        if not self._check_validator(url, resp):
            await self._reset(f"{url} changed (validator differs)")
            self.validators[url] = [resp.headers.get("etag"), resp.headers.get("last-modified")]
            await self.ctx.on_validator(self.job.path, self.validators)
            raise _Restart()
        await self.ctx.on_validator(self.job.path, self.validators)
        if st == 200:
            if self.no_ranges:
                return
            # Range ignored, or If-Range refused the validator the server gave before
            self.no_ranges = True
            await self._reset(f"{url} ignored the Range request; downloading it in one piece")
            self.no_ranges = True
            raise _Restart()
        m = _CONTENT_RANGE.match(resp.headers.get("content-range", ""))
        if not m or int(m.group(1)) != start:
            raise ShortRead(f"{url} answered a different range ({resp.headers.get('content-range')!r})")
        if m.group(3) != "*" and int(m.group(3)) != self.size:
            self.dead.add(url)
            raise DeadUrl(f"{url} serves {m.group(3)} bytes, the catalog says {self.size}")

    # --- workers -----------------------------------------------------------
    def _account(self, span: _Span, exc: BaseException, progressed: bool, url: str) -> None:
        if isinstance(exc, TooSlow):
            self.slow[url] = self.slow.get(url, 0) + 1
            if self.slow[url] >= int(self.ctx.setting("downloads.min_rate_replacements")):
                log.warning("%s: giving up on %s: %d connections in a row were too slow (%s)", self.job.path, url, self.slow[url], exc)
                self.dead.add(url)
                self.dead_reason = (f"{url} stayed under downloads.min_rate_bytes_per_s over {self.slow[url]} connections "
                                    f"(last: {exc})")
        if progressed:
            span.failures = 0
            span.stalls = 0
            return
        if isinstance(exc, Stalled):
            span.stalls += 1
            if span.stalls >= 3:
                span.failures += 1
                span.stalls = 0
        elif not isinstance(exc, TransferError) or exc.counts:
            span.failures += 1
        span.url_idx += 1  # try the next mirror

    @staticmethod
    def _retryable(exc: BaseException) -> bool:
        if isinstance(exc, TransferError):
            return exc.retryable
        return isinstance(exc, httpx.TransportError)

    async def _run_span(self, span: _Span, conn: _Conn) -> None:
        def stop(rs: RetryCallState) -> bool:
            return span.failures > self.ctx.max_retries()

        def wait(rs: RetryCallState) -> float:
            exc = rs.outcome.exception() if rs.outcome else None
            if isinstance(exc, (Stalled, DeadUrl, TooSlow)):
                return 0.0
            ra = getattr(exc, "retry_after", None)
            if span.failures == 0 and ra is None:
                return 0.0  # the last attempt made progress: reconnect at once
            return backoff_delay(max(1, span.failures), float(self.ctx.setting("downloads.retry_base_s")),
                                 float(self.ctx.setting("downloads.retry_max_s")), ra)

        def before_sleep(rs: RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome else None
            self.ctx.on_retry(self.job.path, getattr(rs, "_url", ""), exc, rs.upcoming_sleep)  # type: ignore[arg-type]

        retrying = AsyncRetrying(retry=retry_if_exception(self._retryable), stop=stop, wait=wait, sleep=self.ctx.sleep,
                                 before_sleep=before_sleep, reraise=True)
        async for attempt in retrying:
            with attempt:
                url = self._pick_url(span)
                attempt.retry_state._url = url  # type: ignore[attr-defined]
                before = self.written_bytes
                try:
                    await self._fetch(span, url, conn)
                except (_Restart, _Stale, DiskFull, asyncio.CancelledError, SourceUnavailable):
                    raise
                except Exception as exc:
                    if isinstance(exc, DeadUrl) and not [u for u in self.job.urls if u not in self.dead]:
                        raise SourceUnavailable(f"every URL of {self.job.path} failed; last: {exc}", path=self.job.path) from None
                    self._account(span, exc, self.written_bytes > before, url)
                    if isinstance(exc, TooSlow) and not [u for u in self.job.urls if u not in self.dead]:
                        raise SourceUnavailable(f"every URL of {self.job.path} was given up on; last: {self.dead_reason}",
                                                path=self.job.path) from None
                    raise
                if self._span_offset(span) is not None and span.gen == self.gen:
                    raise ShortRead("span incomplete")

    async def _worker(self, max_pieces: int) -> None:
        conn = _Conn()
        self._conns.add(conn)
        self.peak_connections = max(self.peak_connections, len(self._conns))
        try:
            while True:
                span = self._take_span(max_pieces)
                if span is None:
                    return
                self._live_spans.append(span)
                try:
                    await self._run_span(span, conn)
                except BaseException:
                    self._failed_span_retries = max(self._failed_span_retries, span.failures)
                    raise
                finally:
                    self._live_spans.remove(span)
                    self._release(span)
                if span.gen != self.gen:
                    raise _Restart()
        finally:
            self._conns.discard(conn)
            self._rx_done += conn.rx
            conn.close()

    # --- the whole file ------------------------------------------------------
    def _plan(self) -> tuple[int, int, int]:
        """(connections to start with, pieces per span, most connections) for the settings and what the server supports."""
        if self.no_ranges:
            return 1, self.npieces, 1
        parallel = int(self.ctx.setting("downloads.parallel_ranges"))
        ceiling = int(self.ctx.setting("downloads.max_connections_per_file"))
        min_size = float(self.ctx.setting("downloads.parallel_min_size_mb")) * 1024 * 1024
        if parallel <= 1 or ceiling <= 1 or self.size < min_size:
            return 1, max(1, MAX_SPAN_BYTES // self.ps) if self.npieces > 1 else 1, 1
        remaining = sum(1 for s in self.state if s == 0)
        first = max(1, min(parallel, ceiling, remaining))
        per = max(1, min(max(1, MAX_SPAN_BYTES // self.ps), -(-remaining // first)))
        return first, per, max(first, ceiling)

    def _received(self) -> int:
        return self._rx_done + sum(c.rx for c in list(self._conns))

    def _unstarted_pieces(self) -> int:
        """Pieces no connection has started: pending ones and those after each live span's current piece."""
        with self._lock:
            return sum(1 for s in self.state if s == 0) + sum(max(0, sp.end_idx - sp.cur - 1) for sp in self._live_spans
                                                              if sp.gen == self.gen)

    async def run(self) -> tuple[str, list[tuple[int, str]]]:
        """Fetch what is missing, verify, flush; return (sha256, [(piece index, sha256)])."""
        self._loop = asyncio.get_running_loop()
        self.dead.clear()
        self.slow.clear()
        self.dead_reason = ""
        await asyncio.to_thread(self._drop_missing_pieces)
        if self._prefixes:
            await asyncio.to_thread(self._restore_prefixes)
        self.resets = 0
        self.integrity_failures = 0
        self._failed_span_retries = 0
        self._run_task, self._commit_error = asyncio.current_task(), None
        committer = asyncio.create_task(self._commit_loop(), name=f"commit:{self.job.path}")
        hasher = asyncio.create_task(self._hash_loop(), name=f"hash:{self.job.path}")
        try:
            await self._run_loop()
        except asyncio.CancelledError:
            if self._commit_error is not None:
                raise self._commit_error from None
            raise
        finally:
            self._run_task = None
            committer.cancel()
            hasher.cancel()
            await asyncio.gather(committer, hasher, return_exceptions=True)
            if self._hash_read is not None:
                # a thread still reading the partial file must finish before its owner may close the descriptor
                await asyncio.gather(self._hash_read, return_exceptions=True)
                self._hash_read = None
            try:
                await asyncio.shield(self._commit_pending())
            except (DiskFull, DatabaseFull):
                # the pieces stay known in memory; the exception already on its way says why the file stopped
                log.warning("%s: could not record the last pieces: the disk is full", self.job.path)
        with self._hlock:
            sha = self.frontier.sha.hexdigest()
        return sha, sorted(self.piece_sha.items())

    async def _run_loop(self) -> None:
        """Fetch, verify (refetching from zero on a mismatch, within the retry budget) and flush the file."""
        while True:
            if self.size == 0:
                break
            if not self.complete:
                await self._run_workers()
                if not self.complete:
                    continue
            log.debug("%s: every byte written", self.job.path)
            await self._commit_pending()
            await asyncio.to_thread(self._catch_up)
            log.debug("%s: hashed", self.job.path)
            ok, problem = self._verify()
            if ok:
                break
            self.integrity_failures += 1
            if self.integrity_failures > self.ctx.max_retries():
                raise IntegrityError(f"{self.job.path}: {problem} after {self.integrity_failures} downloads", path=self.job.path)
            self.ctx.on_retry(self.job.path, "", IntegrityError(problem), 0.0)
            await self._reset(problem)
        await asyncio.to_thread(self.file.flush)

    def _verify(self) -> tuple[bool, str]:
        with self._hlock:
            if self.frontier.pos != self.size:
                return False, f"hashed {self.frontier.pos} of {self.size} bytes"
            sha = self.frontier.sha.hexdigest()
            sha1 = self.frontier.sha1.hexdigest() if self.frontier.sha1 is not None else None
        if self.job.sha256 and sha != self.job.sha256:
            return False, f"sha256 {sha[:16]}… does not match the catalog's {self.job.sha256[:16]}…"
        if self.job.git_sha1 and sha1 != self.job.git_sha1:
            return False, f"git blob sha1 {sha1} does not match {self.job.git_sha1}"
        return True, ""

    async def _run_workers(self) -> None:
        """Run connections until every piece is written; open more while the file's aggregate rate keeps growing."""
        n, per, ceiling = self._plan()
        tasks: set[asyncio.Task[Any]] = set()
        count = 0

        def spawn(k: int) -> None:
            nonlocal count
            for _ in range(k):
                tasks.add(asyncio.create_task(self._worker(per), name=f"range:{self.job.path}:{count}"))
                count += 1

        spawn(n)
        clock = self._loop.time
        grow = ceiling > n
        base_rate: float | None = None
        win_t, win_rx = clock() + GROW_SETTLE_S, None
        failed = False
        try:
            while tasks:
                done, _ = await asyncio.wait(tasks, timeout=0.1 if grow else None, return_when=asyncio.FIRST_EXCEPTION)
                if any(not t.cancelled() and t.exception() is not None for t in done):
                    failed = True
                    break
                tasks -= done
                if not grow or not tasks:
                    continue
                now = clock()
                if win_rx is None:
                    if now >= win_t:
                        win_t, win_rx = now, self._received()
                    continue
                if now - win_t < GROW_WINDOW_S:
                    continue
                rate = (self._received() - win_rx) / (now - win_t)
                live = len(tasks)
                if base_rate is not None and rate < base_rate * GROW_MIN_GAIN:
                    grow = False  # the last connections did not pay: the link or the server is the limit
                    log.debug("%s: %.1f MiB/s over %d connections: no more", self.job.path, rate / 1048576, live)
                    continue
                k = min(ceiling - live, live, self._unstarted_pieces() // 2)
                if k <= 0:
                    grow = live < ceiling and self._unstarted_pieces() > 0
                    if not grow:
                        continue
                    win_t, win_rx = now, self._received()
                    continue
                base_rate = rate
                log.debug("%s: %.1f MiB/s over %d connections: opening %d more", self.job.path, rate / 1048576, live, k)
                spawn(k)
                grow = live + k < ceiling
                win_t, win_rx = now + GROW_SETTLE_S, None
        except asyncio.CancelledError:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        pending = tasks if failed else set()
        tasks_all = tasks
        for t in pending:
            t.cancel()
        results = await asyncio.gather(*tasks_all, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
        if not errors:
            return
        if any(isinstance(e, (_Restart, _Stale)) for e in errors) and not any(isinstance(e, (DiskFull, SourceUnavailable)) for e in errors):
            if self.resets > max(5, self.ctx.max_retries() + 2):
                raise SourceUnavailable(f"{self.job.path} keeps changing on the server", path=self.job.path)
            return
        for kind in (DiskFull, SourceUnavailable, IntegrityError):
            for e in errors:
                if isinstance(e, kind):
                    raise e
        first = errors[0]
        raise SourceUnavailable(f"{self.job.path}: {_describe(first)}", path=self.job.path) from first


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CannotConnect):
        return "cannot connect to the server"
    if isinstance(exc, Broken):
        return "the connection broke"
    if isinstance(exc, TransferError):
        return str(exc)
    if isinstance(exc, httpx.ConnectError):
        return "cannot connect to the server"
    if isinstance(exc, httpx.TimeoutException):
        return "the server did not answer in time"
    if isinstance(exc, httpx.TransportError):
        return "the connection broke"
    if _is_disk_full(exc) or isinstance(exc, DiskFull):
        return "the disk is full"
    return exc.__class__.__name__


def describe_error(exc: BaseException) -> str:
    """A message a person can act on, without internal exception text."""
    return _describe(exc)


# --- one range, for repairs ----------------------------------------------------------
async def fetch_range(client: httpx.AsyncClient, urls: Sequence[str], start: int, length: int, *, max_retries: int = 3,
                      stall_timeout_s: float = 30.0, connect_timeout_s: float = 15.0, retry_base_s: float = 1.0,
                      retry_max_s: float = 60.0, headers: dict[str, str] | None = None,
                      limiters: Sequence[RateLimiter] = (), expect_size: int | None = None,
                      sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> bytes:
    """The bytes [start, start+length) of a file, trying each URL in turn with retries; SourceUnavailable when all fail.

    A drop resumes where it stopped; a server that ignores Range is read from
    byte 0 with the prefix discarded. `expect_size` (the file's size) refuses a
    URL that serves a file of another size.
    """
    if length <= 0:
        return b""
    out = bytearray()
    dead: set[str] = set()
    failures = 0
    idx = 0
    last: BaseException | None = None
    timeout = httpx.Timeout(connect=connect_timeout_s, read=stall_timeout_s, write=stall_timeout_s, pool=None)
    while True:
        live = [u for u in urls if u not in dead]
        if not live:
            raise SourceUnavailable(f"every URL failed for bytes {start}-{start + length - 1}: {_describe(last) if last else 'no URL'}",
                                    urls=list(urls))
        url = live[idx % len(live)]
        got_before = len(out)
        pos = start + len(out)
        try:
            h = {"Accept-Encoding": "identity", "Range": f"bytes={pos}-{start + length - 1}", **(headers or {})}
            async with client.stream("GET", url, headers=h, timeout=timeout) as resp:
                st = resp.status_code
                if st not in (200, 206):
                    err = HttpStatus(st, url, parse_retry_after(resp.headers.get("retry-after")))
                    if not err.retryable and st != 416:
                        dead.add(url)
                        raise DeadUrl(str(err))
                    raise err
                skip = pos if st == 200 else 0
                if st == 206:
                    m = _CONTENT_RANGE.match(resp.headers.get("content-range", ""))
                    if not m or int(m.group(1)) != pos:
                        raise ShortRead("unexpected Content-Range")
                    if expect_size is not None and m.group(3) != "*" and int(m.group(3)) != expect_size:
                        dead.add(url)
                        raise DeadUrl(f"{url} serves {m.group(3)} bytes, expected {expect_size}")
                async for chunk in resp.aiter_raw():
                    if skip:
                        d = min(skip, len(chunk))
                        chunk = chunk[d:]
                        skip -= d
                    need = length - len(out)
                    out += chunk[:need]
                    await take_all(list(limiters), len(chunk))
                    if len(out) >= length:
                        return bytes(out)
                raise ShortRead(f"response ended after {len(out)} of {length} bytes")
        except (TransferError, httpx.TransportError) as exc:
            last = exc
            progressed = len(out) > got_before
            if isinstance(exc, httpx.ReadTimeout):
                exc = Stalled(str(exc))
            if isinstance(exc, TransferError) and not exc.retryable and not isinstance(exc, DeadUrl):
                dead.add(url)
                continue
            if progressed:
                failures = 0
            elif isinstance(exc, DeadUrl) or isinstance(exc, Stalled):
                pass
            else:
                failures += 1
                idx += 1
            if failures > max_retries:
                raise SourceUnavailable(f"bytes {start}-{start + length - 1}: {_describe(exc)} after {failures} attempts", urls=list(urls)) from None
            if not isinstance(exc, (DeadUrl, Stalled)) and failures:
                await sleep(backoff_delay(failures, retry_base_s, retry_max_s, getattr(exc, "retry_after", None)))


__all__ = ["FileJob", "FileTransfer", "TransferContext", "fetch_range", "DiskFull", "describe_error", "backoff_delay",
           "parse_retry_after", "InsufficientStorage"]
