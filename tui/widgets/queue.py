"""Queue tab: generation requests waiting for a model (fallback queue): position, priority, estimates."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.widgets import Static

from mavail.tui import format as fmt
from mavail.tui.words import plural
from mavail.tui.widgets.base import Pane, status_text
from mavail.tui.widgets.live_table import Cell, Column, LiveTable

COLUMNS = [
    Column("id", "Queue id"),
    Column("model", "Model", sort=lambda r: r.get("model_id")),
    Column("pos", "Pos", sort=lambda r: r.get("position")),
    Column("prio", "Prio", sort=lambda r: r.get("priority")),
    Column("wait", "Est. wait", sort=lambda r: _wait_s(r)),
    Column("status", "Status", sort=lambda r: r.get("status")),
]


def _wait_s(r: dict[str, Any]) -> float | None:
    if r.get("estimated_wait_seconds") is not None:
        return float(r["estimated_wait_seconds"])
    if r.get("estimated_wait_time_minutes") is not None:
        return float(r["estimated_wait_time_minutes"]) * 60
    return None


def queue_items(res: Any) -> list[dict[str, Any]]:
    """The list of queued requests in a `fallback.queue_list` result, whatever its key."""
    if isinstance(res, list):
        return [x for x in res if isinstance(x, dict)]
    if isinstance(res, dict):
        for key in ("queue", "requests", "items", "queued_requests", "data"):
            if isinstance(res.get(key), list):
                return [x for x in res[key] if isinstance(x, dict)]
    return []


def queue_cells(q: dict[str, Any]) -> tuple[Cell, ...]:
    """One row of the Queue table."""
    return (
        str(q.get("queue_id")),
        str(q.get("model_id", "-")),
        str(q.get("position", "-")),
        str(q.get("priority", "-")),
        fmt.duration(_wait_s(q)),
        status_text(q.get("status", "queued")),
    )


class QueuePane(Pane):
    """Requests waiting for their model, and when each should start."""

    TITLE = "Queue"
    REQUIRES = ("fallback.queue_list",)
    RESYNC_S = 10.0

    def body(self) -> ComposeResult:
        yield Static("", classes="summary body", id="queue-summary")
        self.table = LiveTable(COLUMNS, id="queue-table", classes="body")
        yield self.table

    async def fetch(self) -> None:
        items = queue_items(await self.mavail.link.call("fallback.queue_list"))
        assert self.table is not None
        self.table.sync({str(q.get("queue_id")): (queue_cells(q), q) for q in items if q.get("queue_id") is not None})
        self.query_one("#queue-summary", Static).update(f"{plural(len(items), 'request')} waiting" if items else "no request is waiting")

    def selected_queue_id(self) -> str | None:
        """The queue id under the cursor."""
        return self.table.selected_key if self.table is not None else None

    def on_events(self, events: list[dict[str, Any]]) -> None:
        if not self.loaded:
            return
        for ev in events:
            if ev.get("method") in ("queued_request_ready", "queued_request_expired", "model_availability_change"):
                self.mark_dirty()
