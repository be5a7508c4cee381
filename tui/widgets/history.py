"""History tab: finished downloads, health checks and repairs from the engine (kept across restarts), newest first."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from mavail.tui import format as fmt
from mavail.tui import words
from mavail.tui.widgets.base import Pane, status_text
from mavail.tui.widgets.live_table import Cell, Column, LiveTable

WHY_WIDTH = 14

# Fixed widths: the row fits 80 columns; the Why cell is cut with an ellipsis, the line below shows it in full.
COLUMNS = [
    Column("id", "Model", sort=lambda r: r.get("model_id"), width=16),
    Column("kind", "What", sort=lambda r: r.get("kind"), width=8),
    Column("status", "Outcome", sort=lambda r: r.get("status"), width=9),
    Column("when", "When", sort=lambda r: r.get("finished_at") or r.get("started_at"), width=7),
    Column("took", "Took", sort=lambda r: r.get("duration_s"), width=5),
    Column("bytes", "Size", sort=lambda r: r.get("bytes"), width=6),
    Column("why", "Why", width=WHY_WIDTH),
]
LIVE_EVENTS = ("model_download_progress", "download_failed", "model_health_alert", "model_availability_change")


def history_cells(e: dict[str, Any]) -> tuple[Cell, ...]:
    """One row of the History table from a `history.list` entry."""
    detail = words.readable(str(e.get("detail") or ""))
    if e.get("kind") == "repair":
        detail = detail.replace("_", " ")  # the steps it took: integrity check, integrity fix
    if e.get("kind") == "download" and ": " in detail:
        detail = detail.split(": ", 1)[1]  # the code is in the line below; the cell keeps the reason
    if len(detail) > WHY_WIDTH:
        detail = detail[: WHY_WIDTH - 1] + "…"
    return (
        str(e.get("model_id")),
        str(e.get("kind")),
        status_text(e.get("status")),
        fmt.ago(e.get("finished_at") or e.get("started_at"), short=True),
        fmt.duration(e.get("duration_s")),
        fmt.size(e.get("bytes")) if e.get("bytes") else "-",
        Text(detail, style="red" if e.get("status") == "failed" else ""),
    )


def history_detail(e: dict[str, Any]) -> str:
    """The selected entry in full: what, when it started and ended, how long, how many bytes, why."""
    if not e:
        return ""
    what = {"download": "download", "check": f"{e.get('type') or ''} check", "repair": f"{e.get('type') or ''} repair"}.get(
        str(e.get("kind")), str(e.get("kind")))
    size = {"download": "downloaded", "check": "read", "repair": "fetched again"}.get(str(e.get("kind")), "")
    parts = [f"{e.get('model_id')} {e.get('version') or ''}: {what.strip()} {e.get('status')}",
             f"started {fmt.ago(e.get('started_at'))}", f"took {fmt.duration(e.get('duration_s'))}"]
    if e.get("bytes"):
        parts.append(f"{fmt.size(e['bytes'])} {size}")
    if e.get("detail"):
        parts.append(words.readable(str(e["detail"])))
    return " · ".join(parts)


class HistoryPane(Pane):
    """What finished: downloads (completed, failed, cancelled), checks and repairs, with when, how long, bytes and why."""

    TITLE = "History"
    REQUIRES = ("history.list",)
    RESYNC_S = 30.0

    def body(self) -> ComposeResult:
        yield Static("", classes="summary body", id="history-summary")
        self.table = LiveTable(COLUMNS, id="history-table", classes="body")
        yield self.table
        yield Static("", classes="detail body", id="history-detail")

    async def fetch(self) -> None:
        res = await self.mavail.link.call("history.list", limit=200)
        entries = [e for e in res.get("entries", []) if isinstance(e, dict)]
        assert self.table is not None
        self.table.sync({f"{e.get('model_id')}/{e.get('id')}": (history_cells(e), e) for e in entries})
        counts = {k: sum(1 for e in entries if e.get("kind") == k) for k in ("download", "check", "repair")}
        failed = sum(1 for e in entries if e.get("status") == "failed")
        self.query_one("#history-summary", Static).update(
            " · ".join([words.plural(counts["download"], "finished download"), words.plural(counts["check"], "check"),
                        words.plural(counts["repair"], "repair")] + ([f"{failed} failed"] if failed else []))
            + " · newest first")
        self._detail()

    def on_events(self, events: list[dict[str, Any]]) -> None:
        if not self.loaded:
            return
        for ev in events:
            p = ev.get("params") or {}
            if ev.get("method") in LIVE_EVENTS and (ev.get("method") != "model_download_progress"
                                                    or p.get("status") in ("completed", "failed", "cancelled")):
                self.mark_dirty()
                return

    def _detail(self) -> None:
        self.query_one("#history-detail", Static).update(history_detail(self.selected_raw()))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()
