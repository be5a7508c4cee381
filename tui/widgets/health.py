"""Health tab: per-model health, integrity and performance scores, issues, last check, recommendations."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from mavail.tui import format as fmt
from mavail.tui.widgets.base import Pane, status_text
from mavail.tui.widgets.live_table import Cell, Column, LiveTable

COLUMNS = [
    Column("id", "Model"),
    Column("health", "Health", sort=lambda r: r.get("overall_health")),
    Column("integrity", "Integ", sort=lambda r: r.get("integrity_score")),
    Column("perf", "Perf", sort=lambda r: r.get("performance_score")),
    Column("last", "Last check", sort=lambda r: r.get("last_check")),
    Column("issues", "Issues", sort=lambda r: len(r.get("issues") or [])),
]


def _item(x: Any) -> str:
    if isinstance(x, dict):
        return str(x.get("message") or x.get("description") or x.get("type") or x)
    return str(x)


NOT_CHECKED = "not checked"
NO_FIGURE = "–"


def integrity_cell(value: float | None) -> Cell:
    """An integrity score, or "not checked" where the engine has not measured it (null)."""
    return Text(NOT_CHECKED, style="dim") if value is None else fmt.score(value)


def health_cells(h: dict[str, Any]) -> tuple[Cell, ...]:
    """One row of the Health table from a `health.status` entry."""
    issues = h.get("issues") or []
    perf = h.get("performance_score")
    return (
        h["model_id"],
        status_text(h.get("overall_health")),
        integrity_cell(h.get("integrity_score")),
        NO_FIGURE if perf is None else fmt.score(perf),
        fmt.ago(h.get("last_check")),
        f"{len(issues)}: {_item(issues[0])[:24]}" if issues else "0",
    )


class HealthPane(Pane):
    """Scores, issues and what to do about them."""

    TITLE = "Health"
    REQUIRES = ("health.status",)

    def body(self) -> ComposeResult:
        yield Static("", classes="summary body", id="health-summary")
        self.table = LiveTable(COLUMNS, id="health-table", classes="body")
        yield self.table
        yield Static("", classes="detail body", id="health-detail")

    async def fetch(self) -> None:
        res = await self.mavail.link.call("health.status")
        models = res.get("models", {})
        assert self.table is not None
        self.table.sync({mid: (health_cells({**h, "model_id": mid}), {**h, "model_id": mid}) for mid, h in models.items()})
        sh = res.get("system_health") or {}
        overall = sh.get("overall_score")
        score = NOT_CHECKED if overall is None else f"{fmt.score(overall)} over {sh.get('checked_models', '?')} checked"
        self.query_one("#health-summary", Static).update(
            f"score {score} · {sh.get('healthy_models', 0)} healthy · "
            f"{sh.get('degraded_models', 0)} degraded · {sh.get('corrupted_models', 0)} corrupted · "
            f"last system check {fmt.ago(sh.get('last_system_check'))}"
        )
        self._detail()

    def on_events(self, events: list[dict[str, Any]]) -> None:
        if not self.loaded:
            return
        for ev in events:
            if ev.get("method") in ("model_health_alert", "model_availability_change"):
                self.mark_dirty()

    def _detail(self) -> None:
        raw = self.selected_raw()
        recs = raw.get("recommendations") or []
        issues = raw.get("issues") or []
        parts = []
        if issues:
            parts.append("issues: " + "; ".join(_item(i) for i in issues[:3]))
        if recs:
            parts.append("do: " + "; ".join(_item(r) for r in recs[:3]))
        self.query_one("#health-detail", Static).update("\n".join(parts))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()
