"""The TUI's link to the engine: one AsyncClient kept connected with backoff, events fanned out, errors as text."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from pathlib import Path
from typing import Any, Awaitable, Callable

from mavail.rpc.client import AsyncClient, CallTimeout, EngineUnavailable, RpcError

log = logging.getLogger("mavail.tui")

EventCallback = Callable[[dict[str, Any]], None]
StateCallback = Callable[[bool, str], None]


def error_text(exc: BaseException) -> str:
    """A one-line message for an engine error as the contract names it: `CONFLICT: download already running`."""
    if isinstance(exc, RpcError):
        name = exc.name or {-32601: "METHOD_NOT_FOUND", -32602: "INVALID_PARAMS", -32603: "INTERNAL_ERROR"}.get(exc.code, str(exc.code))
        field = exc.details.get("field") if isinstance(exc.details, dict) else None
        suffix = f" [{field}]" if field and str(field) not in exc.message else ""
        return f"{name}: {exc.message}{suffix}"
    if isinstance(exc, CallTimeout):
        return "TIMEOUT: the engine did not answer in time"
    if isinstance(exc, EngineUnavailable):
        return "DISCONNECTED: the engine cannot be reached"
    return "ERROR: unexpected failure (see the log)"


class EngineLink:
    """Keeps one connection to the engine alive and reports what happens to it.

    `run()` loops forever: connect, `session.hello` (which gives the engine's
    method list), `events.subscribe`, then hand every notification to
    `on_event` until the connection drops; then report disconnected and try
    again after a backoff that doubles up to `max_backoff_s`. Calls made while
    disconnected raise EngineUnavailable at once instead of hanging.
    """

    def __init__(self, socket_path: str | Path, on_event: EventCallback, on_state: StateCallback,
                 min_backoff_s: float = 0.2, max_backoff_s: float = 5.0, call_timeout_s: float = 30.0,
                 client_name: str = "mavail-tui", token: str | None = None) -> None:
        self.socket_path = Path(socket_path)
        self.on_event = on_event
        self.on_state = on_state
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.call_timeout_s = call_timeout_s
        self.client_name = client_name
        self.token = token if token is not None else (os.environ.get("MAVAIL_RPC_TOKEN") or None)
        """Sent in session.hello when the engine requires one (rpc.token); default $MAVAIL_RPC_TOKEN."""
        self.client: AsyncClient | None = None
        self.connected = False
        """True between a successful hello and the connection's end."""
        self.methods: frozenset[str] = frozenset()
        """Methods the engine offers (from `session.hello`); empty while disconnected."""
        self.engine_version: str | None = None
        self.host: str | None = None
        """The engine machine's host name, as `session.hello` reports it (None from an engine that does not)."""
        self.attempts = 0
        """Failed connection attempts since the last success (drives the backoff)."""
        self.connections = 0
        """Successful connections so far (a reconnect makes it 2)."""
        self._wake = asyncio.Event()

    def has(self, *methods: str) -> bool:
        """Whether the connected engine offers every one of `methods`."""
        return all(m in self.methods for m in methods)

    def backoff_s(self) -> float:
        """Delay before the next connection attempt: doubling from min to max, with ±20% jitter."""
        base = min(self.max_backoff_s, self.min_backoff_s * (2 ** max(0, self.attempts - 1)))
        return base * random.uniform(0.8, 1.2)

    def retry_now(self) -> None:
        """Skip the rest of the current backoff (the user asked to reconnect)."""
        self._wake.set()

    async def run(self) -> None:
        """Connect, follow events, reconnect: until cancelled."""
        try:
            while True:
                try:
                    await self._session()
                except (EngineUnavailable, CallTimeout, OSError, RpcError) as exc:
                    detail = error_text(exc) if isinstance(exc, RpcError) else str(exc)
                    self._set_state(False, detail)
                self.attempts += 1
                self._wake.clear()
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancel that ends this loop
                    async with asyncio.timeout(self.backoff_s()):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            await self._close()

    async def _session(self) -> None:
        client = AsyncClient(self.socket_path, timeout=self.call_timeout_s)
        await client.connect()
        self.client = client
        try:
            params: dict[str, Any] = {"client": self.client_name}
            if self.token:
                params["token"] = self.token
            hello = await client.call("session.hello", params, timeout=10)
            self.methods = frozenset(hello.get("methods", ()))
            self.engine_version = hello.get("engine_version")
            self.host = hello.get("host") if isinstance(hello.get("host"), str) else None
            await client.subscribe()
            self.attempts = 0
            self.connections += 1
            self._set_state(True, f"engine {self.engine_version} at {self.socket_path}")
            async for event in client.events():
                try:
                    self.on_event(event)
                except Exception:  # a UI bug must not kill the link
                    log.exception("event handler failed")
            raise EngineUnavailable("the engine closed the connection")
        finally:
            await self._close()

    async def _close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.close()

    def _set_state(self, connected: bool, detail: str) -> None:
        changed = connected != self.connected
        self.connected = connected
        if not connected:
            self.methods = frozenset()
        if changed or not connected:
            self.on_state(connected, detail)

    async def call(self, method: str, _timeout: float | None = None, **params: Any) -> Any:
        """Call `method` on the engine; EngineUnavailable while disconnected, RpcError from the engine."""
        client = self.client
        if client is None or not self.connected:
            raise EngineUnavailable("not connected to the engine")
        return await client.call(method, params, timeout=_timeout)

    async def call_many(self, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        """Several calls in one batch; results or RpcError instances in order."""
        client = self.client
        if client is None or not self.connected:
            raise EngineUnavailable("not connected to the engine")
        return await client.batch(calls)


async def guarded(call: Awaitable[Any], report: Callable[[str], None]) -> Any:
    """Await `call`; on an engine error report its contract message and return None."""
    try:
        return await call
    except (RpcError, EngineUnavailable, CallTimeout) as exc:
        report(error_text(exc))
        return None
