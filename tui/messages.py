"""Messages the engine link posts into the app: connection changes and batches of engine events."""

from __future__ import annotations

from textual.message import Message


class ConnectionChanged(Message):
    """The link to the engine came up or went down."""

    def __init__(self, connected: bool, detail: str, engine: int = 0) -> None:
        super().__init__()
        self.engine = engine
        """Which engine of the fleet (its place in the list; 0 with one engine)."""
        self.connected = connected
        """Whether the engine answers now."""
        self.detail = detail
        """What happened, for the status line."""


class EventsPending(Message):
    """Engine events wait in the app's inbox; a newer one supersedes an older one (the inbox is drained whole)."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, EventsPending)
