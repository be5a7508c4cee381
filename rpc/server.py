"""The Unix-socket server: framing, peer checks, token, rate limit, event delivery, socket hygiene."""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import signal
import socket
import stat
import struct
import time
from pathlib import Path
from typing import Any, Callable

import anyio
import orjson
from anyio.abc import SocketAttribute, SocketStream

from mavail.core.engine import Engine
from mavail.core.events import Event, Subscription
from mavail.rpc.dispatch import answers_inline, dispatch_parsed, encode, error_obj, new_request_id, parse_line

log = logging.getLogger("mavail.rpc")

MAX_IN_FLIGHT = 64  # concurrent requests per connection before reading pauses


class CannotServe(RuntimeError):
    """The engine cannot start serving; the message says why in one line."""


class EngineAlreadyRunning(CannotServe):
    """Another engine answers on the socket, or holds the home."""


class SocketPathTaken(CannotServe):
    """The socket path names something that is not a socket (a file, a link, a directory)."""


def peer_uid(stream: SocketStream) -> int | None:
    """The connecting process's uid from SO_PEERCRED, or None where unavailable."""
    sock: socket.socket = stream.extra(SocketAttribute.raw_socket)
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


READ_PAUSE_BYTES = 256 * 1024
"""Input buffered beyond this (and beyond one whole line) pauses reading until the read loop catches up."""
CLOSE_FLUSH_S = 2.0
"""How long a closed connection's unsent output may take to reach a peer before the socket is dropped."""


NOT_NOW = object()
"""`LineIO.answer_now`'s answer for a line the read loop must answer."""


class LineIO(asyncio.Protocol):
    """A connection's byte path on the event loop's own transport: lines in, writes with back-pressure out.

    The read/write hot path bypasses anyio's socket stream on purpose. Its Unix
    stream yields to the event loop before every receive and every send and
    registers then removes a reader with epoll for every wait: on one
    connection answering sequential calls that was most of the engine's time
    per call (session.hello 4,800 calls/s against 6,100 for a bare asyncio
    server in the same run). The transport keeps its reader registered and
    buffers writes; anyio still runs everything else (listener, task groups,
    cancellation, signals).
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()  # kept: asking for it at each wait costs a getpid
        self.transport: asyncio.Transport | None = None
        self.answer_now: Callable[[bytes], Any] | None = None
        """Answers a whole line at once (its response, None, or NOT_NOW to leave it to the read loop); see `data_received`."""
        self._buf = bytearray()
        self._eof = False
        self.lost = False
        self._discard = False
        self._reading_paused = False
        self._writing_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []

    # --- protocol callbacks --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        """Buffer input and wake the read loop; pause reading when it is far behind."""
        if self._discard:
            return
        # one whole line while the read loop waits on an empty buffer: answered here if it can be at once,
        # saving the read loop's wake-up (no reordering: every earlier line has been taken)
        if (self.answer_now is not None and self._read_waiter is not None and not self._buf and not self._writing_paused
                and data.find(b"\n") == len(data) - 1):
            out = self.answer_now(data[:-1])
            if out is not NOT_NOW:
                if out is not None and self.transport is not None:
                    self.transport.write(out)
                return
        self._buf += data
        if len(self._buf) > READ_PAUSE_BYTES and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        """The peer stopped sending; keep the socket open for what is still owed to it."""
        self._eof = True
        self._wake_reader()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is gone: wake every waiter."""
        self.lost = self._eof = True
        self._wake_reader()
        self.resume_writing()

    def pause_writing(self) -> None:
        """The transport's write buffer is full: writers wait."""
        self._writing_paused = True

    def resume_writing(self) -> None:
        """The write buffer drained: release waiting writers."""
        self._writing_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _wake_reader(self) -> None:
        fut = self._read_waiter
        if fut is not None:
            self._read_waiter = None
            if not fut.done():
                fut.set_result(None)

    async def _wait_input(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        fut = self._read_waiter = self._loop.create_future()
        try:
            await fut
        finally:
            self._read_waiter = None

    # --- the read loop's side ------------------------------------------------
    async def read_line(self, limit: int) -> bytes | None:
        """The next line without its newline; None at end of input. LineTooLong past `limit` bytes.

        The newline may still be missing at exactly `limit` bytes, so the search
        goes one byte further; a line found in a chunk read at once can still be
        longer than `limit`.
        """
        buf = self._buf
        offset = 0
        while True:
            i = buf.find(b"\n", offset)
            if i >= 0:
                if i > limit:
                    raise LineTooLong
                line = bytes(buf[:i])
                del buf[:i + 1]
                return line
            if len(buf) > limit:
                raise LineTooLong
            if self._eof:
                return None
            offset = len(buf)
            await self._wait_input()

    async def discard_until_eof(self, seconds: float) -> None:
        """Half-close, then drop input until the peer closes its side or `seconds` pass."""
        self._discard = True
        self._buf.clear()
        if self.transport is not None and not self.lost:
            try:
                self.transport.write_eof()
            except (OSError, RuntimeError):
                return
        with anyio.move_on_after(seconds):
            while not self._eof:
                await self._wait_input()

    # --- the writers' side ---------------------------------------------------
    async def write(self, data: bytes) -> None:
        """Queue `data` as one unit (a transport write is never interleaved); wait while the peer lags behind."""
        if self.lost or self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("connection closed")
        self.transport.write(data)
        while self._writing_paused and not self.lost:
            fut = self._loop.create_future()
            self._drain_waiters.append(fut)
            await fut
        if self.lost:
            raise ConnectionResetError("connection closed")

    def close(self) -> None:
        """Close after flushing what is queued, dropping the socket if the peer does not take it in time."""
        t = self.transport
        if t is None or t.is_closing():
            return
        t.close()
        if t.get_write_buffer_size():
            self._loop.call_later(CLOSE_FLUSH_S, t.abort)


class LineTooLong(Exception):
    """A line longer than the message limit arrived."""


EXEMPT_RATE = 2.0
"""Exempt writes (a config.update of the limit alone) per second per connection, while a rate limit is set."""
EXEMPT_BURST = 2.0


class Connection:
    """One client connection: serialised writes, subscriptions, a token bucket and close callbacks.

    Implements `core.session.Session` so leases and queued requests can belong to it.
    """

    _ids = itertools.count(1)

    def __init__(self, stream: SocketStream, io: LineIO, engine: Engine, tg: anyio.abc.TaskGroup) -> None:
        self.id = f"conn_{next(self._ids)}"
        self.stream = stream
        self.io = io
        self.engine = engine
        self._tg = tg
        self.authenticated = not engine.config.get("rpc.token")
        self.client_name: str | None = None
        self.subscriptions: dict[str, Subscription] = {}
        self._direct = Subscription(None, None)
        self._close_callbacks: list[Callable[[], None]] = []
        self._tokens: float | None = None  # None: a full bucket, whatever the rate is by then
        self._exempt_tokens = EXEMPT_BURST
        self._exempt_refill = time.monotonic()
        self._last_refill = time.monotonic()
        self.closed = False
        tg.start_soon(self._pump, self._direct)

    # --- Session -------------------------------------------------------------
    def notify(self, event: Event) -> None:
        """Send `event` to this client alone (buffered, never blocking)."""
        self._direct.offer(event)

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run `callback` when the connection closes."""
        self._close_callbacks.append(callback)

    # --- rate limit ----------------------------------------------------------
    @property
    def rate_per_second(self) -> float:
        """The configured calls per second per connection (0 = off)."""
        return float(self.engine.config.get("rpc.rate_limit_per_second"))

    def rate_limit_wait(self) -> float:
        """Take one token; return 0 if allowed, else the seconds until one is available."""
        rate = self.rate_per_second
        if rate <= 0:
            return 0.0
        now = time.monotonic()
        burst = max(1.0, rate)
        tokens = burst if self._tokens is None else self._tokens + (now - self._last_refill) * rate
        self._tokens = min(burst, tokens)
        self._last_refill = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / rate

    def exempt_rate_limit_wait(self) -> float:
        """Take one token of the small bucket of writes exempt from the rate limit; 0 if allowed, else the seconds to wait.

        Off, like the main limit, when `rpc.rate_limit_per_second` is 0.
        """
        if self.rate_per_second <= 0:
            return 0.0
        now = time.monotonic()
        self._exempt_tokens = min(EXEMPT_BURST, self._exempt_tokens + (now - self._exempt_refill) * EXEMPT_RATE)
        self._exempt_refill = now
        if self._exempt_tokens >= 1.0:
            self._exempt_tokens -= 1.0
            return 0.0
        return (1.0 - self._exempt_tokens) / EXEMPT_RATE

    # --- events --------------------------------------------------------------
    def subscribe(self, types: list[str] | None, model_ids: list[str] | None) -> str:
        """Subscribe this connection to engine events; return the subscription id."""
        sub = self.engine.events.subscribe(types, model_ids)
        self.subscriptions[sub.id] = sub
        self._tg.start_soon(self._pump, sub)
        return sub.id

    def unsubscribe(self, sub_id: str) -> bool:
        """End a subscription of this connection; False if it has none by that id."""
        if self.subscriptions.pop(sub_id, None) is None:
            return False
        return self.engine.events.unsubscribe(sub_id)

    async def _pump(self, sub: Subscription) -> None:
        while not self.closed:
            batch = await sub.next_batch()
            if sub.overflowed:
                log.warning("%s: subscriber fell too far behind; closing its connection", self.id)
                await self.close()
                return
            if not batch:
                return
            data = b"".join(encode({"jsonrpc": "2.0", "method": e.type, "params": e.params}) for e in batch)
            if not await self.send(data):
                return

    # --- I/O -----------------------------------------------------------------
    async def send(self, data: bytes) -> bool:
        """Write bytes as one unit; False once the peer is gone."""
        if self.closed:
            return False
        try:
            await self.io.write(data)
            return True
        except OSError:
            await self.close()
            return False

    async def close(self) -> None:
        """Close the stream, end subscriptions and run the close callbacks once."""
        if self.closed:
            return
        self.closed = True
        for sub_id in list(self.subscriptions):
            self.engine.events.unsubscribe(sub_id)
        self.subscriptions.clear()
        self._direct.close()
        for cb in self._close_callbacks:
            try:
                cb()
            except Exception:
                log.exception("%s: close callback failed", self.id)
        self._close_callbacks.clear()
        self.io.close()
        with anyio.CancelScope(shield=True):
            try:
                await self.stream.aclose()
            except Exception:
                pass


def socket_answers(path: Path) -> bool:
    """True when something accepts connections on the Unix socket `path`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
        return True
    except (ConnectionRefusedError, FileNotFoundError, socket.timeout):
        return False
    except OSError as exc:
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK)
    finally:
        s.close()


def check_socket_path(path: Path) -> bool:
    """Whether a stale socket file sits at `path` (True) or nothing does (False); CannotServe when it is not ours to take.

    Something that is not a socket (SocketPathTaken) and a socket that answers
    (EngineAlreadyRunning) are refused. Nothing is changed.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode) else "a file"
        raise SocketPathTaken(f"{path} is {kind}, not a socket: refusing to replace it (choose another --socket)")
    if socket_answers(path):
        raise EngineAlreadyRunning(f"another engine is already answering on {path}")
    return True


class Server:
    """Serves the engine on a Unix socket until the engine asks to shut down or a signal arrives."""

    def __init__(self, engine: Engine, socket_path: Path) -> None:
        self.engine = engine
        self.socket_path = socket_path
        self.connections: set[Connection] = set()
        self.ready = anyio.Event()
        self.in_flight = 0
        self.drain_s = 5.0
        self._listener: anyio.abc.SocketListener | None = None

    # --- socket hygiene ------------------------------------------------------
    def _probe(self) -> bool:
        """True when something accepts connections on the socket path."""
        return socket_answers(self.socket_path)

    async def bind(self) -> None:
        """Take the socket path (CannotServe when it is not ours to take); `serve` binds itself if not called."""
        if self._listener is None:
            self._listener = await self._bind()

    async def _bind(self) -> anyio.abc.SocketListener:
        path = self.socket_path
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)
        if check_socket_path(path):
            log.info("replacing stale socket file %s", path)
            path.unlink()
        old = os.umask(0o177)
        try:
            listener = await anyio.create_unix_listener(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        return listener

    # --- connections ---------------------------------------------------------
    def _peer_allowed(self, uid: int | None) -> bool:
        if uid is None:
            return False
        allowed = {os.getuid(), 0, *self.engine.config.get("rpc.allowed_uids")}
        return uid in allowed

    async def _handle(self, stream: SocketStream) -> None:
        uid = peer_uid(stream)
        raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
        # the transport takes the socket over; anyio's stream is left holding a detached one
        sock = socket.socket(raw.family, raw.type, fileno=raw.detach())
        try:
            _, io = await asyncio.get_running_loop().connect_accepted_socket(LineIO, sock=sock)
        except OSError:
            sock.close()
            return
        async with anyio.create_task_group() as tg:
            conn = Connection(stream, io, self.engine, tg)
            self.connections.add(conn)
            try:
                if self._peer_allowed(uid):
                    io.answer_now = lambda line: self._answer_now(conn, line)
                else:
                    log.warning("refused peer uid %s", uid)
                    await conn.send(encode(error_obj(None, -32003, "Unauthorized", name="UNAUTHORIZED", details={"reason": "peer uid not allowed", "uid": uid})))
                    await self._linger(conn)
                    return
                try:
                    await self._read_loop(conn, tg)
                except Exception:  # one connection's failure closes that connection, never the engine
                    log.exception("%s: connection failed; closing it", conn.id)
            finally:
                self.connections.discard(conn)
                await conn.close()
                tg.cancel_scope.cancel()

    async def _read_loop(self, conn: Connection, tg: anyio.abc.TaskGroup) -> None:
        io = conn.io
        limit = anyio.Semaphore(MAX_IN_FLIGHT)
        config = self.engine.config
        while not conn.closed:
            max_bytes = int(config.get("rpc.max_message_bytes"))
            try:
                line = await io.read_line(max_bytes)
            except LineTooLong:
                await conn.send(encode(error_obj(None, -32600, "Message too large", name="MESSAGE_TOO_LARGE", details={"max_message_bytes": max_bytes})))
                await self._linger(conn)
                return
            if line is None:
                return
            if not line.strip():
                continue
            parsed, error = parse_line(line)
            if error is None and answers_inline(parsed):
                # fast methods answer in the read loop: a task per call would halve throughput;
                # they hold no slot of the in-flight limit, being done before the next line is read
                await self._answer(conn, parsed, None, None)
            else:
                await limit.acquire()
                tg.start_soon(self._answer, conn, parsed, error, limit)

    def _answer_now(self, conn: Connection, line: bytes) -> Any:
        """Answer a line at once when it is one call to an inline method: its response line, None, or NOT_NOW.

        Inline methods answer from memory without waiting, so their coroutine
        runs to its end in one step and is driven here, from the transport's data
        callback, without a task. Anything else (a batch, a parse error, a line
        over the limit, another method) is left to the read loop.
        """
        if conn.closed or line[:1] != b"{" or len(line) > int(self.engine.config.get("rpc.max_message_bytes")):
            return NOT_NOW
        try:
            parsed = orjson.loads(line)
        except orjson.JSONDecodeError:
            return NOT_NOW
        try:
            if not answers_inline(parsed):
                return NOT_NOW
            coro = dispatch_parsed(conn, self.engine, parsed)
            while coro.send(None) is None:
                pass  # a bare yield (a checkpoint) asks for nothing: carry on
        except StopIteration as done:
            return done.value
        except Exception:
            return self._last_resort(conn, parsed)
        # it waited on a future: an inline method must not; answered as an internal error, never left hanging
        coro.close()
        log.error("%s: inline method %s waited on a future; declare it inline=False", conn.id, parsed.get("method"))
        return self._last_resort(conn, parsed, logged=True)

    def _last_resort(self, conn: Connection, parsed: Any, logged: bool = False) -> bytes:
        """The internal error answered for a request whose answering failed, with the id it asked with."""
        request_id = new_request_id()
        if not logged:
            log.exception("%s: failed to answer a request (request id %s)", conn.id, request_id)
        req_id = parsed.get("id") if isinstance(parsed, dict) else None
        ok_id = isinstance(req_id, (str, int, float)) and not isinstance(req_id, bool)
        return encode(error_obj(req_id if ok_id else None, -32603, "Internal error", request_id=request_id))

    async def _linger(self, conn: Connection, seconds: float = 2.0) -> None:
        """Half-close and discard what the peer is still sending, so the error is read before the close.

        Closing a socket with unread input makes the kernel send a reset that can
        destroy the response still in flight.
        """
        try:
            await conn.io.discard_until_eof(seconds)
        except Exception:
            pass

    async def _answer(self, conn: Connection, parsed: Any, error: bytes | None, limit: anyio.Semaphore | None) -> None:
        self.in_flight += 1
        try:
            try:
                out = error if error is not None else await dispatch_parsed(conn, self.engine, parsed)
            except Exception:  # never leak it, and answer the id that was asked
                out = self._last_resort(conn, parsed)
            if out is not None:
                await conn.send(out)
        finally:
            self.in_flight -= 1
            if limit is not None:
                limit.release()

    # --- running -------------------------------------------------------------
    async def serve(self, handle_signals: bool = True) -> None:
        """Bind, serve until shutdown is requested (RPC or SIGTERM/SIGINT), then close and unlink.

        On shutdown it stops accepting, gives requests in flight up to
        `drain_s` seconds to be answered, then closes every connection.
        """
        await self.bind()
        listener = self._listener
        assert listener is not None
        log.info("engine %s listening on %s", self.engine.version, self.socket_path)
        accept_scope = anyio.CancelScope()
        try:
            async with anyio.create_task_group() as tg:

                async def accept() -> None:
                    with accept_scope:
                        await listener.serve(self._handle, task_group=tg)

                tg.start_soon(accept)
                if handle_signals:
                    tg.start_soon(self._signals)
                self.ready.set()
                await self.engine.shutdown_requested.wait()
                log.info("shutting down")
                accept_scope.cancel()
                with anyio.move_on_after(self.drain_s):
                    while self.in_flight:
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()  # ends every connection's handler
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
            try:
                self.socket_path.unlink()
            except FileNotFoundError:
                pass

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received signal %s", signal.Signals(signum).name)
                self.engine.shutdown_requested.set()
                return
