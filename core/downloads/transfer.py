"""Moving bytes: one file over HTTP into its partial file, in pieces, over one or several ranges.

A `FileTransfer` owns one file of a download. Connections ("workers") take
spans of consecutive pending pieces, request them with `Range` (and `If-Range`
on the validator that server gave before), and write what arrives at its
offset. Each connection's bytes move on a byte thread (`http_range`): reads,
writes and hashes never run on the event loop, which sees only response heads,
finished pieces and commits. A large file starts with `START_CONNECTIONS` and
doubles them every `PROBE_S` while that raises its rate by `GROWTH` (quadruples
when the rate grew with them, as behind a server that caps each connection), up
to `downloads.parallel_ranges`; once more do not help, it divides them by
`SHRINK` while the rate holds within `GROWTH` (a server that does not cap
connections serves one or two as fast, and fewer byte threads leave the event
loop the CPU).

Each request asks for a share of the pieces no connection has taken yet, a
share that shrinks as the file nears its end, so the connections run out of
work together on keep-alive connections and the server sends every byte once;
only when a long span is left in flight does an idle connection take over the
back half of its untouched tail (cutting a response short throws away what its
sockets hold).

Every piece is hashed (XXH3-128) as it is written; a finished piece is flushed
(fdatasync) and only then reported, so the database never claims bytes a crash
could lose. The whole-file sha256 follows the lowest unhashed byte: the
connection writing there feeds it directly, and pieces that finished ahead of it
are read back from the page cache as soon as the gap before them closes, so
after the last byte only the last pieces remain to hash.

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
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from mavail.core.downloads.http_range import Aborted, BadUrl, BrokenConnection, Head, NoData, RangeConnection
from mavail.core.downloads.limiter import RateLimiter, take_all
from mavail.core.downloads.partial import PartialFile
from mavail.core.piecehash import DIGEST_HEX_LEN, PIECE_ALGO, new_piece_hasher, piece_digest
from mavail.core.errors import InsufficientStorage, IntegrityError, SourceUnavailable
from mavail.core.state import DatabaseFull
from mavail.core.timeutil import wait_event

log = logging.getLogger("mavail.downloads")

READBACK_CHUNK = 1024 * 1024
WRITEBACK_BYTES = 1024 * 1024  # written bytes of a piece handed to the disk at once
MAX_SPAN_BYTES = 64 * 1024 * 1024  # one request asks for at most this much; idle connections take over the tail of a span
PREFIX_RECORD_S = 0.05  # how often the flushed prefix of pieces in progress is recorded when no piece completes: at 16
# connections of 16 MiB/s, what a kill -9 can cost stays near 0.05 s of bytes
START_CONNECTIONS = 2  # connections a large file starts with; it doubles them at each probe while they help
PROBE_S = 0.5  # how often the file's rate is compared to decide whether more connections help
GROWTH = 1.15  # more connections are kept only while they raise the file's rate by at least this factor, and fewer
# only while the rate stays within it
SHRINK = 4  # once more connections stop helping, each probe tries this many times fewer
LINEAR = 1.8  # doubling the connections raised the rate this much: the next step quadruples them
REPROBE_S = 30.0  # a held count is tried again this often, and at once when a bandwidth limit changes
MIN_RECEIVE_BUFFER = 256 * 1024
MAX_RECEIVE_BUFFER = 8 * 1024 * 1024
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


class ConnectionBroken(TransferError):
    """The connection could not be made or broke before the bytes asked for arrived."""


class LocationExpired(TransferError):
    """The URL a redirect led to refused us (a signed URL that expired): ask the original URL again."""

    counts = False


class DeadUrl(TransferError):
    """This URL cannot serve the file (4xx, wrong size); the next mirror may."""

    counts = False


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
    # (URL, where it was found to redirect): ranges start from the located URL; not part of the file's identity
    located: tuple[tuple[str, str], ...] = field(default=(), compare=False)


class ConnectionBudget:
    """The connections every download may hold together (`downloads.max_connections`), shared by their files.

    A connection takes a place before each request and gives it back after; when none is free it
    waits, and files holding more than their share hand surplus places back at their next piece.
    """

    def __init__(self, limit: Callable[[], int]) -> None:
        self.limit = limit
        self.open = 0
        self._freed = asyncio.Event()

    async def take(self) -> None:
        """Wait for a free place and hold it."""
        while self.open >= max(1, self.limit()):
            self._freed.clear()
            await self._freed.wait()
        self.open += 1

    def give_back(self) -> None:
        """Free a place taken with `take`."""
        self.open -= 1
        self._freed.set()


@dataclass
class TransferContext:
    """Settings (read at use time) and callbacks one download's transfers share."""

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
    active_files: Callable[[], int] = lambda: 1  # files transferring now, which share downloads.max_connections
    executor: Executor | None = None  # the byte threads (None: the loop's default executor)
    proxy: Callable[[str], str | None] = lambda url: None  # the proxy for a URL (None: connect directly)
    budget: ConnectionBudget | None = None  # places shared with every other download (None: this file's share only)


@dataclass
class _Span:
    gen: int
    first: int
    end_idx: int  # exclusive
    failures: int = 0
    stalls: int = 0
    url_idx: int = 0
    cur: int = -1  # the piece its connection is writing: a connection taking over the tail starts after it
    worker: int = 0  # index of the connection working it: one not below the file's share hands its tail back


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
        self.located: dict[str, str] = dict(job.located)  # URL -> where it redirected, reused for every range
        self._locating: dict[str, asyncio.Future[None]] = {}  # URL -> the first request to it, while it runs
        self._count_lock = threading.Lock()
        self._readback_lock = threading.Lock()
        self._readback: memoryview | None = None  # made at the first read-back, reused after
        self._target = 1  # connections wanted now: a worker whose index is not below it stops after its span
        self._ceiling = 1  # the most connections the file may have
        self._places = 1  # its share of downloads.max_connections now: a connection past it hands its span back at once
        self.resets = 0
        self.integrity_failures = 0
        self._live_spans: list[_Span] = []
        self._failed_span_retries = 0  # failures of the span that gave up, kept for the figure after it ended
        self._run_task: asyncio.Task[Any] | None = None
        self._commit_error: BaseException | None = None
        self._hash_read: asyncio.Future[int] | None = None  # the hash loop's read-back in its thread
        self._init_state(recorded or {})
        self._prefixes = dict(prefixes or {})  # recorded prefixes still to re-hash from disk (at the next run)
        self._commit_q: list[tuple[int, str]] = []
        self._commit_event = asyncio.Event()
        self._catchup_event = asyncio.Event()
        self._alock = asyncio.Lock()  # a reset never interleaves with recording pieces

    # --- piece state -------------------------------------------------------
    def _init_state(self, recorded: dict[int, str]) -> None:
        self.state = [0] * self.npieces  # 0 pending, 1 assigned, 2 written
        self.written = [0] * self.npieces
        self._contig = 0  # pieces below it are all whole (see _contiguous_end)
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
            self._contig = 0

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
    def connections(self) -> int:
        """Connections transferring this file now."""
        return len(self._live_spans)

    @property
    def complete(self) -> bool:
        """Every piece written."""
        return all(s == 2 for s in self.state)

    def _take_span(self, max_pieces: int) -> _Span | None:
        with self._lock:
            for i, s in enumerate(self.state):
                if s == 0:
                    j = i + 1
                    while j < self.npieces and j - i < max_pieces and self.state[j] == 0 and self.written[j] == 0:
                        j += 1
                    for k in range(i, j):
                        self.state[k] = 1
                    return _Span(self.gen, i, j)
        return None

    def _request_pieces(self, max_pieces: int) -> int:
        """Pieces the next request asks for: a share of what no connection has taken yet that shrinks as the file nears
        its end (at most `max_pieces`), so connections run out of work together and the file is balanced at request
        boundaries instead of by cutting a response short, which throws away what its sockets already hold."""
        if self.no_ranges or self._ceiling <= 1:
            # nobody to share with: one request (a server without ranges sends the whole file at each one)
            return max_pieces
        with self._lock:
            pending = sum(1 for s in self.state if s == 0)
        # shared between the connections wanted now, not the most the file may have: one left alone after a shrink
        # would otherwise cut the rest into requests for a 32nd of it, a round trip with nothing in flight each
        return max(1, min(max_pieces, -(-pending // (2 * max(1, self._target)))))

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

    async def _reset(self, reason: str, gen: int | None = None, no_ranges: bool = False) -> bool:
        """Restart the file from byte 0 (`no_ranges`: over one plain GET from now on); with `gen`, only if it is still
        that generation (False: another answer of the same generation already restarted it)."""
        async with self._alock:
            if gen is not None and gen != self.gen:
                return False
            if no_ranges:
                self.no_ranges = True
            # carried through when the caller is cancelled meanwhile (another connection's answer stops every worker):
            # the manager forgets the old pieces and the file is truncated whatever stops this connection
            task = asyncio.ensure_future(self._reset_locked(reason))
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                await _outlive(task)
                raise
            return True

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
    def _write_job(self, gen: int, data: memoryview, offset: int) -> None:
        """Write `data` (inside one piece) at `offset`, hash it into its piece and, where it extends it, the whole file."""
        if gen != self.gen:
            raise _Stale()
        try:
            self.file.write(data, offset)
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
        h.update(data)  # the piece belongs to this worker alone
        done = None
        with self._lock:
            if gen != self.gen:
                raise _Stale()
            before = self.written[idx]
            self.written[idx] += len(data)
            if self.written[idx] >= self.piece_len(idx):
                self.state[idx] = 2
                done = self.hashers.pop(idx).hexdigest()
                self.piece_sha[idx] = done
                self._commit_q.append((idx, done))
        with self._hlock:
            if gen == self.gen:
                self.frontier.feed(offset, data)
        after = before + len(data)
        if after // WRITEBACK_BYTES != before // WRITEBACK_BYTES or done is not None:
            writeback = getattr(self.file, "start_writeback", None)
            if writeback is not None:
                # each MiB goes to the disk as it completes, so the periodic flush has little left to wait for and
                # the pieces it records are never far behind the bytes that arrived
                start = idx * self.ps + before // WRITEBACK_BYTES * WRITEBACK_BYTES
                writeback(start, idx * self.ps + after - start)
        if done is not None:
            self._loop.call_soon_threadsafe(self._piece_done)

    def _piece_done(self) -> None:
        self._commit_event.set()
        self._catchup_event.set()

    def _contiguous_end(self) -> int:
        with self._lock:
            k = self._contig  # every piece before it is whole: the scan starts there, not at piece 0
            while k < self.npieces and self.written[k] >= self.piece_len(k):
                k += 1
            self._contig = k
            return self.size if k >= self.npieces else k * self.ps + self.written[k]

    def _catch_up(self, limit: int | None = None) -> int:
        """Read back and hash written bytes the frontier has not seen; return bytes read."""
        with self._readback_lock:  # one reader at a time: they share the read-back buffer
            if self._readback is None:
                self._readback = memoryview(bytearray(READBACK_CHUNK))
            buf = self._readback
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
                if self.file.readinto(pos, buf[:n]) < n:
                    raise OSError(errno.EIO, f"partial file shorter than recorded at {pos}")
                total += n
                with self._hlock:
                    if gen != self.gen:
                        return total
                    self.frontier.feed(pos, buf[:n])

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

    def _check_validator(self, url: str, head: Head) -> bool:
        """Record the response's validator; False when it differs from the one recorded for this URL."""
        etag, lm = head.get("etag"), head.get("last-modified")
        old = self.validators.get(url)
        if old is None:
            self.validators[url] = [etag, lm]
            return True
        if (old[0] and etag and old[0] != etag) or (not (old[0] and etag) and old[1] and lm and old[1] != lm):
            return False
        return True

    def _request_headers(self, url: str, start: int, end: int) -> Callable[[str], dict[str, str]]:
        """The headers of every hop of a request for [start, end) of `url`: Range and If-Range, plus the hop's own."""
        h = {"Accept-Encoding": "identity"}
        if not self.no_ranges:
            h["Range"] = f"bytes={start}-{end - 1}"
            v = self.validators.get(url)
            if v and v[0] and not v[0].startswith("W/"):
                h["If-Range"] = v[0]
            elif v and v[1]:
                h["If-Range"] = v[1]
        return lambda hop: {**h, **self.ctx.headers_for(hop)}

    async def _in_thread(self, conn: RangeConnection, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking `fn` on the byte threads; when cancelled, abort the connection and wait for the thread to let go."""
        fut = self._loop.run_in_executor(self.ctx.executor, fn, *args)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            conn.abort()
            # the thread writes what it already read and returns: the file is never closed under it
            await _outlive(fut)
            raise

    async def _file_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking file work in a thread; when cancelled, wait for the thread first (its file stays open)."""
        fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            await _outlive(fut)
            raise

    async def _fetch(self, span: _Span, url: str, conn: RangeConnection) -> None:
        start = self._span_offset(span)
        if start is None:
            return
        end = self._span_end(span)
        if self.no_ranges:
            start = 0
        gen = span.gen
        stall = float(self.ctx.setting("downloads.stall_timeout_s"))
        conn.connect_timeout, conn.read_timeout = float(self.ctx.setting("downloads.connect_timeout_s")), stall
        while url not in self.located and url in self._locating:
            # another connection is finding where this URL leads: one resolve per file, then every range goes there
            await asyncio.wait({self._locating[url]})
        target = self.located.get(url, url)
        mine = None if url in self.located else self._locating.setdefault(url, self._loop.create_future())
        try:
            try:
                head = await self._in_thread(conn, conn.open, target, self._request_headers(url, start, end))
            except NoData:
                raise Stalled(f"no answer from {target} for {stall} s") from None
            except BadUrl as exc:
                self.dead.add(url)
                raise DeadUrl(str(exc)) from None
            except BrokenConnection as exc:
                if target != url:
                    self.located.pop(url, None)  # the located URL may be gone: the next attempt asks the original again
                raise ConnectionBroken(str(exc)) from None
            if head.status in (200, 206):
                self.located[url] = head.url
        finally:
            if mine is not None:
                self._locating.pop(url, None)
                mine.set_result(None)
        try:
            if target != url and head.status in (401, 403, 404, 410):
                self.located.pop(url, None)
                raise LocationExpired(f"{head.url} answered {head.status}: asking {url} again")
            await self._check_response(head, url, start, end, span)
        except BaseException:
            conn.discard()
            raise
        try:
            await self._in_thread(conn, self._pump, conn, span, gen, start, end, url)
        except NoData:
            raise Stalled(f"no data from {head.url} for {stall} s") from None
        except BrokenConnection as exc:
            raise ConnectionBroken(str(exc)) from None

    async def _check_response(self, head: Head, url: str, start: int, end: int, span: _Span) -> None:
        st = head.status
        if st == 416:
            m = re.match(r"^bytes \*/(\d+)$", head.get("content-range", "") or "")
            if m and int(m.group(1)) != self.size:
                self.dead.add(url)
                raise DeadUrl(f"{url} serves {m.group(1)} bytes, the catalog says {self.size}")
            raise HttpStatus(416, url)
        if st >= 400 or st not in (200, 206):
            err = HttpStatus(st, url, parse_retry_after(head.get("retry-after")))
            if not err.retryable:
                self.dead.add(url)
                raise DeadUrl(str(err))
            raise err
        if span.gen != self.gen:
            # asked for before the file restarted: the 200 that If-Range gives every request still carrying the old
            # validator says nothing of how the server serves ranges now
            raise _Stale()
        if not self._check_validator(url, head):
            if await self._reset(f"{url} changed (validator differs)", span.gen):
                self.validators[url] = [head.get("etag"), head.get("last-modified")]
                await self.ctx.on_validator(self.job.path, self.validators)
            raise _Restart()
        await self.ctx.on_validator(self.job.path, self.validators)
        if st == 200:
            if self.no_ranges:
                return
            # Range ignored, or If-Range refused the validator the server gave before
            await self._reset(f"{url} ignored the Range request; downloading it in one piece", span.gen, no_ranges=True)
            raise _Restart()
        m = _CONTENT_RANGE.match(head.get("content-range", "") or "")
        if not m or int(m.group(1)) != start:
            raise ShortRead(f"{url} answered a different range ({head.get('content-range')!r})")
        if m.group(3) != "*" and int(m.group(3)) != self.size:
            self.dead.add(url)
            raise DeadUrl(f"{url} serves {m.group(3)} bytes, the catalog says {self.size}")

    def _pump(self, conn: RangeConnection, span: _Span, gen: int, start: int, end: int, url: str) -> None:
        """Read the response body into the file (on a byte thread), piece by piece, as the socket delivers it.

        Stops at the span's end, which another connection may move nearer when it takes over the
        tail; every byte read is written before this returns, whatever stops it.
        """
        ps = self.ps
        pos = start
        if self.no_ranges:
            # a plain GET: bytes already written in this generation are read past, not rewritten
            skip = self._span_offset(_Span(gen, 0, self.npieces)) or 0
            while pos < skip:
                n = len(conn.readinto(skip - pos))
                if n == 0:
                    raise ShortRead(f"response ended at byte {pos} of {end}")
                self._count(n)
                pos += n
                self._pace(conn, n)
        limiters = self.ctx.limiters
        min_rate = float(self.ctx.setting("downloads.min_rate_bytes_per_s"))
        window = float(self.ctx.setting("downloads.min_rate_window_s"))
        clock = time.monotonic
        win_start, win_bytes, win_ours = clock(), 0, 0.0  # win_ours: time spent waiting on our own limits and disk
        while True:
            with self._lock:
                if gen != self.gen:
                    raise _Stale()
                stop = min(end, self._span_end(span))
                idx = pos // ps
                if pos >= stop or idx >= span.end_idx:
                    break
                if span.worker >= self._places and idx != span.cur and pos % ps == 0:
                    # another file started and waits for this place: give the untouched rest back now, not after
                    # the request (which can run for minutes on a slow link)
                    for k in range(idx, span.end_idx):
                        if self.state[k] == 1 and self.written[k] == 0:
                            self.state[k] = 0
                    span.end_idx = idx
                    break
                span.cur = idx  # this piece is ours now: the tail is only ever taken after it
            want = min(stop, (idx + 1) * ps) - pos
            for lim in limiters:
                rate = lim.rate()
                if rate > 0:  # at most ~0.1 s of the tightest limit a read: a changed limit applies within that
                    want = min(want, max(4096, int(rate * 0.1)))
            data = conn.readinto(want)
            n = len(data)
            if n == 0:
                break
            self._count(n)
            win_bytes += n
            t0 = clock()
            self._write_job(gen, data, pos)
            pos += n
            self._pace(conn, n)
            win_ours += clock() - t0
            if conn.aborted:
                raise Aborted()
            if min_rate > 0:
                now = clock()
                if now - win_start >= window:
                    server_time = now - win_start - win_ours
                    if server_time > 0 and win_bytes / server_time < min_rate:
                        raise TooSlow(f"{win_bytes / server_time:.0f} B/s from {url}, under downloads.min_rate_bytes_per_s "
                                      f"({min_rate:.0f} B/s)")
                    if server_time > 0:  # a window at the minimum rate breaks the run of slow connections
                        self.slow.pop(url, None)
                    win_start, win_bytes, win_ours = now, 0, 0.0
        if pos >= end:
            conn.finished()
            return
        conn.discard()  # bytes of this response are left unread: the connection cannot serve another request
        if pos < min(end, self._span_end(span)) and span.gen == self.gen:
            raise ShortRead(f"response ended at byte {pos} of {end}")

    def _pace(self, conn: RangeConnection, n: int) -> None:
        """Wait (on a byte thread) until `n` bytes fit every active limit; Aborted when the connection is stopped meanwhile."""
        for lim in self.ctx.limiters:
            if lim.active():
                delay = lim.reserve(n)
                if delay > 0 and conn.wait_aborted(delay):
                    raise Aborted()

    def _count(self, n: int) -> None:
        with self._count_lock:
            self.ctx.on_bytes(n)

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
        # the byte path turns every network failure into a TransferError; anything else is not worth another attempt
        return isinstance(exc, TransferError) and exc.retryable

    async def _run_span(self, span: _Span, conn: RangeConnection) -> None:
        def stop(rs: RetryCallState) -> bool:
            return span.failures > self.ctx.max_retries()

        def wait(rs: RetryCallState) -> float:
            exc = rs.outcome.exception() if rs.outcome else None
            if isinstance(exc, (Stalled, DeadUrl, TooSlow, LocationExpired)):
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

    def _steal_span(self) -> _Span | None:
        """Take over the back half of the untouched tail of the longest span in flight (None when none is worth it)."""
        with self._lock:
            best: tuple[int, _Span] | None = None
            for s in self._live_spans:
                if s.gen != self.gen:
                    continue
                first = max(s.first, s.cur + 1)
                free = sum(1 for k in range(first, s.end_idx) if self.state[k] == 1 and self.written[k] == 0)
                if free == s.end_idx - first and free >= 2 and (best is None or free > best[0]):
                    best = (free, s)
            if best is None:
                return None
            free, owner = best
            cut = owner.end_idx - free // 2
            new = _Span(self.gen, cut, owner.end_idx, url_idx=owner.url_idx)
            owner.end_idx = cut
            return new

    async def _worker(self, max_pieces: int, index: int) -> None:
        conn = RangeConnection(float(self.ctx.setting("downloads.connect_timeout_s")),
                               float(self.ctx.setting("downloads.stall_timeout_s")), proxy=self.ctx.proxy,
                               receive_buffer=self._receive_buffer)
        try:
            while index < self._target:
                budget = self.ctx.budget
                if budget is not None:
                    await budget.take()
                try:
                    if index >= self._target:
                        return  # the file's share shrank while this connection waited for a place
                    span = self._take_span(self._request_pieces(max_pieces)) or self._steal_span()
                    if span is None:
                        return
                    span.worker = index
                    self._live_spans.append(span)
                    try:
                        await self._run_span(span, conn)
                    except BaseException:
                        self._failed_span_retries = max(self._failed_span_retries, span.failures)
                        raise
                    finally:
                        self._live_spans.remove(span)
                        self._release(span)
                finally:
                    if budget is not None:
                        budget.give_back()
                if span.gen != self.gen:
                    raise _Restart()
        finally:
            conn.close()

    # --- the whole file ------------------------------------------------------
    def _receive_buffer(self) -> int:
        """The receive buffer of a new connection: downloads.receive_window_mb split over the connections wanted now.

        It bounds the bytes the server has sent that are not yet written, what a kill -9 can lose,
        while every connection keeps enough window for its share of the file's rate.
        """
        window = float(self.ctx.setting("downloads.receive_window_mb")) * 1024 * 1024
        if window <= 0:
            return 0
        return int(min(MAX_RECEIVE_BUFFER, max(MIN_RECEIVE_BUFFER, window / max(1, self._target))))

    def _share(self) -> int:
        """This file's share of downloads.max_connections among the files transferring now (at least 1)."""
        return max(1, int(self.ctx.setting("downloads.max_connections")) // max(1, self.ctx.active_files()))

    def _plan(self) -> tuple[int, int, int]:
        """(connections to start with, pieces per span, most connections) for the settings and what the server supports."""
        if self.no_ranges:
            return 1, self.npieces, 1
        ceiling = min(int(self.ctx.setting("downloads.parallel_ranges")), self._share())
        min_size = float(self.ctx.setting("downloads.parallel_min_size_mb")) * 1024 * 1024
        remaining = sum(1 for s in self.state if s == 0)
        if ceiling <= 1 or self.size < min_size:
            return 1, max(1, MAX_SPAN_BYTES // self.ps) if self.npieces > 1 else 1, 1
        per = max(1, min(max(1, MAX_SPAN_BYTES // self.ps), -(-remaining // ceiling)))
        return max(1, min(START_CONNECTIONS, ceiling, remaining)), per, ceiling


    async def run(self) -> tuple[str, list[tuple[int, str]]]:
        """Fetch what is missing, verify, flush; return (sha256, [(piece index, sha256)])."""
        self._loop = asyncio.get_running_loop()
        self.dead.clear()
        self.slow.clear()
        self.dead_reason = ""
        await self._file_thread(self._drop_missing_pieces)
        if self._prefixes:
            await self._file_thread(self._restore_prefixes)
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
            await self._commit_pending()
            await self._file_thread(self._catch_up)
            ok, problem = self._verify()
            if ok:
                await self._file_thread(self._rehash_older_pieces)
                break
            self.integrity_failures += 1
            if self.integrity_failures > self.ctx.max_retries():
                raise IntegrityError(f"{self.job.path}: {problem} after {self.integrity_failures} downloads", path=self.job.path)
            self.ctx.on_retry(self.job.path, "", IntegrityError(problem), 0.0)
            await self._reset(problem)
        await self._file_thread(self.file.flush)

    def _rehash_older_pieces(self) -> None:
        """Hash again, from the verified file, pieces recorded with an older piece hash, so a file's pieces share one."""
        want = DIGEST_HEX_LEN[PIECE_ALGO]
        for idx, digest in list(self.piece_sha.items()):
            if len(digest) != want:
                data = self.file.read(idx * self.ps, self.piece_len(idx))
                if len(data) != self.piece_len(idx):
                    raise OSError(errno.EIO, f"partial file shorter than its pieces at {idx * self.ps}")
                self.piece_sha[idx] = piece_digest(data)

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
        """Fetch with parallel connections: start a few, double them while that raises the file's rate, then halve them
        while that keeps it, so a server that caps each connection gets many and one that does not gets few."""
        n, per, ceiling = self._plan()
        self._target, self._ceiling, self._places = n, ceiling, ceiling
        workers: dict[int, asyncio.Task[None]] = {}
        tasks: list[asyncio.Task[None]] = []

        def staff() -> None:  # a connection for every index below the target that has none running
            tasks[:] = [t for t in tasks if not t.done() or t.cancelled() or t.exception() is not None]
            for i in range(self._target):
                if i not in workers or workers[i].done():
                    workers[i] = asyncio.create_task(self._worker(per, i), name=f"range:{self.job.path}:{i}")
                    tasks.append(workers[i])

        staff()
        clock = self._loop.time
        last_t, last_bytes = clock(), self.written_bytes
        phase = "grow" if n < ceiling else "shrink" if n > 1 else "hold"
        before = 0.0  # the rate at the count before the last step up
        previous = n  # that count
        best = 0.0  # the best rate seen since more connections stopped helping
        good = n  # the fewest connections known to give that rate
        # the window that begins had the target's connections at work: none past it still finishing its request (its
        # bytes are not the rate of fewer), none still waiting for a place or starting (their rate is not in it yet)
        settled = False
        held: float | None = None  # since when the count is held
        limits = tuple(lim.rate() for lim in self.ctx.limiters)  # the bandwidth limits at the last probe

        try:
            while True:
                done, pending = await asyncio.wait(tasks, timeout=PROBE_S, return_when=asyncio.FIRST_EXCEPTION)
                if not pending or any(not t.cancelled() and t.exception() is not None for t in done):
                    break
                share = self._share()
                if self._target > share:
                    self._target = share  # another file started: connections past the share hand their spans back
                ceiling = self._places = min(ceiling, share)
                now, written = clock(), self.written_bytes
                rate = (written - last_bytes) / max(1e-6, now - last_t)
                last_t, last_bytes = now, written
                clean, settled = settled, self.connections == self._target
                limits, before_limits = tuple(lim.rate() for lim in self.ctx.limiters), limits
                if self._target < ceiling and (limits != before_limits or (phase == "hold" and held is not None and
                                                                          now - held >= REPROBE_S)):
                    # a limit changed, or the link may have: see again whether more connections help
                    phase, before, previous = "grow", 0.0, self._target
                held = (held or now) if phase == "hold" else None
                if phase == "hold" or not any(s == 0 for s in self.state):
                    continue
                if phase == "grow":
                    if before and rate < before * GROWTH:
                        # the connections added did not help: the count before is enough; see whether far fewer are
                        good, best = previous, max(rate, before)
                        self._target = max(1, good // SHRINK)
                        phase = "shrink" if self._target < good else "hold"
                    elif self._target >= ceiling:
                        phase = "hold"  # the last step helped and there is no more to add
                    else:
                        # each connection brought its own rate (a server that caps connections): step faster
                        factor = 4 if before and rate >= before * LINEAR else 2
                        before, previous = rate, self._target
                        self._target = min(ceiling, self._target * factor)
                elif not clean:
                    continue  # this window did not measure the target's connections alone
                else:
                    best = max(best, rate)
                    if rate * GROWTH < best:
                        self._target, phase = good, "hold"  # fewer lost rate: back to the fewest that did not
                    else:
                        # as fast with these: fewer threads and sockets, and less for the engine to share them with
                        good = self._target
                        self._target = max(1, good // SHRINK)
                        phase = "shrink" if self._target < good else "hold"
                self._target = min(self._target, ceiling)  # counts found before the share shrank may be past it now
                staff()
                settled = self.connections == self._target
        except asyncio.CancelledError:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for t in tasks:
            if not t.done():
                t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
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


async def _outlive(fut: "asyncio.Future[Any]") -> None:
    """Wait until `fut` is done, whatever cancels the waiter meanwhile (a thread cannot be cancelled)."""
    while not fut.done():
        try:
            await asyncio.wait({fut})
        except asyncio.CancelledError:
            pass
    if not fut.cancelled():
        fut.exception()  # retrieved: the caller is already raising its own


def _describe(exc: BaseException) -> str:
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


__all__ = ["ConnectionBudget", "FileJob", "FileTransfer", "TransferContext", "fetch_range", "DiskFull", "describe_error", "backoff_delay",
           "parse_retry_after", "InsufficientStorage"]
