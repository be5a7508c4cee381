"""Helpers for TUI tests: a stub engine link, screen text, waiting on the app's state."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from mavail.rpc.client import RpcError


class StubLink:
    """Stands in for tui.client.EngineLink: canned answers per method, calls recorded, events pushed by hand."""

    def __init__(self, answers: dict[str, Any], methods: set[str] | None = None) -> None:
        self.answers = answers
        self.methods = frozenset(methods if methods is not None else answers)
        self.connected = False
        self.engine_version = "stub"
        self.attempts = 0
        self.connections = 0
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.app: Any = None
        self._stop = asyncio.Event()

    def has(self, *methods: str) -> bool:
        return all(m in self.methods for m in methods)

    async def run(self) -> None:
        self.connected = True
        self.connections += 1
        self.app._on_link_state(True, "stub engine")
        await self._stop.wait()

    def retry_now(self) -> None:
        pass

    def push(self, method: str, **params: Any) -> None:
        """Deliver an engine event as the real link does."""
        self.app._on_engine_event({"jsonrpc": "2.0", "method": method, "params": {"type": method, **params}})

    async def call(self, method: str, _timeout: float | None = None, **params: Any) -> Any:
        self.calls.append((method, params))
        answer = self.answers.get(method)
        if isinstance(answer, RpcError):
            raise answer
        if callable(answer):
            return answer(**params)
        return answer

    async def call_many(self, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        return [await self.call(m, **p) for m, p in calls]


def screen_text(app: Any) -> str:
    """What the terminal shows now, as plain text lines."""
    return "\n".join("".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips())


async def until(pilot: Any, predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """Let the app run until `predicate()` is true (fails after `timeout` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            app = getattr(pilot, "app", None)
            screen = screen_text(app) if app is not None else ""
            raise AssertionError(f"condition not met in time; the screen shows:\n{screen}")
        await pilot.pause(0.02)
