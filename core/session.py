"""What core knows of a connected client: an id, a way to reach it, and when it goes away."""

from __future__ import annotations

from typing import Callable, Protocol

from mavail.core.events import Event


class Session(Protocol):
    """A client connection as the engine sees it (implemented by `rpc.server.Connection`).

    Leases and queued requests belong to a session: they end, or lose their
    listener, when it closes.
    """

    id: str

    def notify(self, event: Event) -> None:
        """Deliver `event` to this client only, without blocking."""

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call `callback` once when the connection closes."""
