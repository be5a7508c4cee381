"""Usage tab: per-model uses and success rate, a 30-day sparkline and the peak hours of the selected model."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from mavail.tui import charts
from mavail.tui import format as fmt
from mavail.tui.widgets.base import Pane
from mavail.tui.widgets.live_table import Cell, Column, LiveTable

COLUMNS = [
    Column("id", "Model", width=16),
    Column("uses", "Uses", sort=lambda r: r.get("total_uses"), width=5),
    Column("per_day", "/day", sort=lambda r: r.get("uses_per_day"), width=4),
    Column("success", "OK", sort=lambda r: r.get("success_rate"), width=4),
    Column("avg", "Avg", sort=lambda r: r.get("average_generation_time"), width=5),
    Column("trend", "Uses per day, 30 days to today", sort=lambda r: sum(daily_uses(r)), width=30),
]


def daily_uses(u: dict[str, Any]) -> list[float]:
    """Uses per day over the last 30 days, oldest first."""
    days = u.get("last_30_days_usage") or []
    return [float(d.get("uses", 0)) if isinstance(d, dict) else float(d) for d in days][-30:]


def usage_cells(u: dict[str, Any]) -> tuple[Cell, ...]:
    """One row of the Usage table from an `analytics.usage` entry."""
    days = daily_uses(u)
    rate = u.get("success_rate")
    return (
        u["model_id"],
        str(u.get("total_uses", 0)),
        "-" if u.get("uses_per_day") is None else f"{float(u['uses_per_day']):.1f}",
        "-" if rate is None else f"{float(rate) * 100:.0f}%",
        fmt.duration(u.get("average_generation_time")),
        Text(charts.columns(days), style="green"),  # one column per day
    )


def usage_chart(days: list[float], width: int, height: int = 3) -> Text:
    """The selected model's 30 days as bars, each day the same number of cells wide, with its scale and its ends."""
    per = max(1, width // max(1, len(days)))
    stretched = [d for d in days for _ in range(per)]
    lines = charts.block_chart(stretched, len(stretched), height, style="green")
    span = len(stretched)
    axis = Text(f"{len(days)} days ago".ljust(max(0, span - 5)) + "today", style="dim")
    head = Text(f"uses per day, busiest {max(days):g}", style="dim")
    return Text("\n").join([head, *lines, axis])


class UsagePane(Pane):
    """Which models are used, how well they do, and when."""

    TITLE = "Usage"
    REQUIRES = ("analytics.usage",)
    RESYNC_S = 60.0

    DEFAULT_CSS = """
    UsagePane #usage-chart { height: auto; padding: 0 1; }
    """

    def body(self) -> ComposeResult:
        yield Static("", classes="summary body", id="usage-summary")
        self.table = LiveTable(COLUMNS, id="usage-table", classes="body")
        yield self.table
        yield Static("", classes="detail body", id="usage-detail")
        yield Static("", classes="body", id="usage-chart")

    async def fetch(self) -> None:
        # every model's 30-day series is opt-in for an all-models answer: the trend column needs it
        res = await self.mavail.link.call("analytics.usage", period="month", include_series=True)
        models = res.get("models", {})
        assert self.table is not None
        self.table.sync({mid: (usage_cells({**u, "model_id": mid}), {**u, "model_id": mid}) for mid, u in models.items()})
        sm = res.get("summary", {})
        rate = sm.get("average_success_rate")
        self.query_one("#usage-summary", Static).update(
            f"{sm.get('total_generations', 0)} generations · {sm.get('total_models_used', 0)} models used · "
            f"success {'-' if rate is None else f'{float(rate) * 100:.0f}%'} · most used {sm.get('most_used_model') or '-'}"
        )
        self._detail()

    def on_resize(self) -> None:
        if self.table is not None and self.table.selected_key is not None:
            self._detail()  # the chart spans the width: draw it again at the new size

    def _detail(self) -> None:
        raw = self.selected_raw()
        days = daily_uses(raw)
        self.query_one("#usage-chart", Static).update(usage_chart(days, (self.size.width or 80) - 2) if any(days) else "")
        peaks = raw.get("peak_usage_hours") or []
        self.query_one("#usage-detail", Static).update(
            f"{raw.get('model_id', '')}: peak hours {', '.join(f'{int(h):02d}h' for h in peaks if isinstance(h, (int, float))) or '-'}" if raw else ""
        )

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()
