"""Background tasks owned by the engine: spawned by services, cancelled at stop, failures logged."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Protocol

log = logging.getLogger("mavail.engine")


class Spawner(Protocol):
    """What a service needs to run work in the background and to be told of shutdown."""

    def spawn(self, coro: Awaitable[Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run `coro` as a background task."""

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` at shutdown, before background tasks are cancelled."""


class Tasks:
    """The engine's task set: `spawn`, `on_stop` hooks (last registered runs first), then `stop` cancels the rest."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping: list[Callable[[], Awaitable[None]]] = []

    def spawn(self, coro: Awaitable[Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run `coro` as a background task owned by the engine (cancelled at stop, errors logged)."""
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task %s failed", t.get_name(), exc_info=t.exception())

        task.add_done_callback(done)
        return task

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` at shutdown, before background tasks are cancelled (last registered runs first)."""
        self._stopping.append(hook)

    async def stop(self) -> None:
        """Run the stop hooks, then cancel every task still running and wait for them."""
        for hook in reversed(self._stopping):
            try:
                await hook()
            except Exception:
                log.exception("stop hook failed")
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
