"""Client library for scripts and the TUI: sync `Client` and async `AsyncClient` over the engine's socket."""

from __future__ import annotations

import asyncio
import itertools
import orjson
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from mavail.core.paths import resolve_home, resolve_socket


class RpcError(Exception):
    """An error response from the engine: JSON-RPC `code`, contract `name` (data.code), message and details."""

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.data = data or {}
        self.name: str = self.data.get("code", "")
        self.details: dict[str, Any] = self.data.get("details", {}) or {}
        self.request_id: str | None = self.data.get("request_id")

    def to_dict(self) -> dict[str, Any]:
        """The error object as the engine sent it."""
        return {"code": self.code, "message": self.message, "data": self.data}


class EngineUnavailable(ConnectionError):
    """The engine's socket cannot be reached, or the connection dropped."""


class CallTimeout(TimeoutError):
    """No response within the timeout."""


def default_socket(home: str | None = None, socket_path: str | None = None) -> Path:
    """The socket to use, resolved in the contract's order."""
    return resolve_socket(resolve_home(home), socket_path)


def _result(msg: dict[str, Any]) -> Any:
    if "error" in msg:
        err = msg["error"] or {}
        raise RpcError(int(err.get("code", -32603)), str(err.get("message", "error")), err.get("data"))
    return msg.get("result")


class Client:
    """A blocking client: `Client(path).call("models.status", model_id="x")`.

    Notifications that arrive while waiting for a response are kept and
    returned by `events()`.
    """

    def __init__(self, socket_path: str | Path | None = None, timeout: float = 30.0) -> None:
        self.socket_path = Path(socket_path) if socket_path else default_socket()
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._buf = b""
        self._events: deque[dict[str, Any]] = deque()
        self._pending: dict[Any, dict[str, Any]] = {}
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(str(self.socket_path))
        except OSError as exc:
            self._sock.close()
            raise EngineUnavailable(f"cannot reach the engine at {self.socket_path}: {exc.strerror or exc}") from None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the engine releases this connection's leases)."""
        self._sock.close()

    def _send(self, obj: Any) -> None:
        try:
            self._sock.sendall(orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE))
        except OSError as exc:
            raise EngineUnavailable(f"connection to the engine lost: {exc}") from None

    def _read_message(self, deadline: float | None) -> Any:
        # a large answer (every model's status) arrives in many chunks: look for the newline in each new
        # chunk only, and join the chunks once, so reading stays linear in the answer's size
        newline = self._buf.find(b"\n")
        if newline < 0:
            chunks = [self._buf]
            while newline < 0:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._buf = b"".join(chunks)
                    raise CallTimeout("no answer from the engine in time")
                self._sock.settimeout(remaining)
                try:
                    chunk = self._sock.recv(1 << 20)
                except socket.timeout:
                    self._buf = b"".join(chunks)
                    raise CallTimeout("no answer from the engine in time") from None
                except OSError as exc:
                    raise EngineUnavailable(f"connection to the engine lost: {exc}") from None
                if not chunk:
                    raise EngineUnavailable("the engine closed the connection")
                at = chunk.find(b"\n")
                if at >= 0:
                    newline = sum(len(c) for c in chunks) + at
                chunks.append(chunk)
            self._buf = b"".join(chunks)
        line, self._buf = self._buf[:newline], self._buf[newline + 1:]
        return orjson.loads(line)

    def _wait_for(self, key: Any, timeout: float | None) -> Any:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while key not in self._pending:
            msg = self._read_message(deadline)
            if isinstance(msg, list):
                ids = tuple(sorted(str(m.get("id")) for m in msg))
                self._pending[("batch", ids)] = msg  # type: ignore[assignment]
            elif "method" in msg and "id" not in msg:
                self._events.append(msg)
            else:
                self._pending[msg.get("id")] = msg
        return self._pending.pop(key)

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None, **kw: Any) -> Any:
        """Call `method` with named params; return the result or raise RpcError."""
        req_id = next(self._ids)
        self._send({"jsonrpc": "2.0", "method": method, "params": {**(params or {}), **kw}, "id": req_id})
        return _result(self._wait_for(req_id, timeout))

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """Send a notification (no response)."""
        self._send({"jsonrpc": "2.0", "method": method, "params": params or {}})

    def batch(self, calls: list[tuple[str, dict[str, Any]]], timeout: float | None = None) -> list[Any]:
        """Send calls as one batch; return results (or RpcError instances) in call order."""
        ids = [next(self._ids) for _ in calls]
        self._send([{"jsonrpc": "2.0", "method": m, "params": p, "id": i} for (m, p), i in zip(calls, ids)])
        msgs = self._wait_for(("batch", tuple(sorted(str(i) for i in ids))), timeout)
        by_id = {m.get("id"): m for m in msgs}
        out: list[Any] = []
        for i in ids:
            try:
                out.append(_result(by_id[i]))
            except RpcError as exc:
                out.append(exc)
        return out

    def events(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield event notifications as `{"method": type, "params": {...}}`; stop after `timeout` s of silence."""
        while True:
            while self._events:
                yield self._events.popleft()
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                msg = self._read_message(deadline)
            except CallTimeout:
                return
            if isinstance(msg, dict) and "method" in msg and "id" not in msg:
                yield msg
            elif isinstance(msg, dict):
                self._pending[msg.get("id")] = msg


class AsyncClient:
    """An asyncio client with concurrent calls, batches and an event iterator.

    `async with AsyncClient(path) as c: await c.call("models.list", limit=50)`.
    """

    def __init__(self, socket_path: str | Path | None = None, timeout: float = 30.0, event_buffer: int = 10_000) -> None:
        self.socket_path = Path(socket_path) if socket_path else default_socket()
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._futures: dict[Any, asyncio.Future[Any]] = {}
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(event_buffer)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    async def connect(self) -> "AsyncClient":
        """Open the connection (EngineUnavailable if nobody answers)."""
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(str(self.socket_path), limit=64 * 1024 * 1024)
        except OSError as exc:
            raise EngineUnavailable(f"cannot reach the engine at {self.socket_path}: {exc.strerror or exc}") from None
        self._task = asyncio.create_task(self._read_loop())
        return self

    async def __aenter__(self) -> "AsyncClient":
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection and fail pending calls."""
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._fail_all()

    def _fail_all(self) -> None:
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(EngineUnavailable("the engine closed the connection"))
        self._futures.clear()
        self.closed.set()
        try:
            self._events.put_nowait(None)
        except asyncio.QueueFull:
            pass

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                msg = orjson.loads(line)
                items = msg if isinstance(msg, list) else [msg]
                for m in items:
                    if "method" in m and "id" not in m:
                        if self._events.full():
                            self._events.get_nowait()  # drop the oldest rather than stall responses
                        self._events.put_nowait(m)
                        continue
                    fut = self._futures.pop(m.get("id"), None)
                    if fut is not None and not fut.done():
                        fut.set_result(m)
        except (OSError, ValueError):
            pass
        finally:
            self._fail_all()

    async def _send(self, obj: Any) -> None:
        if self._writer is None or self.closed.is_set():
            raise EngineUnavailable("not connected to the engine")
        try:
            self._writer.write(orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE))
            await self._writer.drain()
        except OSError as exc:
            raise EngineUnavailable(f"connection to the engine lost: {exc}") from None

    async def call(self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None, **kw: Any) -> Any:
        """Call `method`; return its result or raise RpcError, CallTimeout or EngineUnavailable."""
        req_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[req_id] = fut
        await self._send({"jsonrpc": "2.0", "method": method, "params": {**(params or {}), **kw}, "id": req_id})
        try:
            msg = await asyncio.wait_for(fut, self.timeout if timeout is None else timeout)
        except asyncio.TimeoutError:
            self._futures.pop(req_id, None)
            raise CallTimeout(f"no answer to {method} in time") from None
        return _result(msg)

    async def batch(self, calls: list[tuple[str, dict[str, Any]]], timeout: float | None = None) -> list[Any]:
        """Send calls as one batch; return results (or RpcError instances) in call order."""
        loop = asyncio.get_running_loop()
        ids = [next(self._ids) for _ in calls]
        futs = []
        for i in ids:
            fut: asyncio.Future[Any] = loop.create_future()
            self._futures[i] = fut
            futs.append(fut)
        await self._send([{"jsonrpc": "2.0", "method": m, "params": p, "id": i} for (m, p), i in zip(calls, ids)])
        msgs = await asyncio.wait_for(asyncio.gather(*futs), self.timeout if timeout is None else timeout)
        out: list[Any] = []
        for m in msgs:
            try:
                out.append(_result(m))
            except RpcError as exc:
                out.append(exc)
        return out

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Yield event notifications until the connection closes."""
        while True:
            m = await self._events.get()
            if m is None:
                return
            yield m

    async def subscribe(self, types: list[str] | None = None, model_ids: list[str] | None = None) -> str:
        """Subscribe this connection to events; return the subscription id."""
        res = await self.call("events.subscribe", types=types, model_ids=model_ids)
        return str(res["subscription_id"])
