"""Health tab: per-model health, integrity and performance scores, issues, last check, recommendations."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from mavail.tui import format as fmt
from mavail.tui import words
from mavail.tui.actions import shown_keys
from mavail.tui.widgets.base import Pane, status_text
from mavail.tui.widgets.live_table import Cell, Column, LiveTable

# Fixed widths: the row fits 80 columns without cutting the status word or the first problem found.
COLUMNS = [
    Column("id", "Model", width=16),
    Column("health", "Health", sort=lambda r: r.get("overall_health"), width=9),
    Column("integrity", "Integrity", sort=lambda r: r.get("integrity_score"), width=11),
    Column("perf", "Perf", sort=lambda r: r.get("performance_score"), width=4),
    Column("last", "Checked", sort=lambda r: r.get("last_check"), width=9),
    Column("issues", "Issues", sort=lambda r: len(r.get("issues") or []), width=16),
]

NOT_CHECKED = "not checked"
NO_FIGURE = "–"
HEALTH_WORD = {"unknown": "unchecked"}


def integrity_cell(value: float | None, installed: bool = True) -> Cell:
    """An integrity score, "not checked" where the engine has not measured it (null), "–" for a model not installed."""
    if not installed:
        return NO_FIGURE
    return Text(NOT_CHECKED, style="dim") if value is None else fmt.score(value)


def health_word(h: dict[str, Any]) -> Text:
    """The status word: `missing` for a model not installed, `unchecked` for one never verified."""
    if h.get("installed") is False:
        return Text("missing", style="dim")
    word = str(h.get("overall_health") or "unknown")
    return Text(HEALTH_WORD.get(word, word), style=status_text(word).style)


def issues_cell(issues: list[Any]) -> Cell:
    """`1 broken piece`, `file missing`, `3: truncated`: what matters first, in 16 cells."""
    if not issues:
        return "0"
    label = words.issue_label(issues[0])
    text = label if len(issues) == 1 else f"{len(issues)}: {label}"
    bad = any(isinstance(i, dict) and i.get("severity") == "critical" for i in issues)
    return Text(text, style="red" if bad else "yellow")


def health_cells(h: dict[str, Any]) -> tuple[Cell, ...]:
    """One row of the Health table from a `health.status` entry."""
    issues = h.get("issues") or []
    perf = h.get("performance_score")
    installed = h.get("installed") is not False
    return (
        h["model_id"],
        health_word(h),
        integrity_cell(h.get("integrity_score"), installed),
        NO_FIGURE if perf is None or not installed else fmt.score(perf),
        fmt.ago(h.get("last_check"), short=True),
        issues_cell(issues) if installed else NO_FIGURE,
    )


def health_summary(sh: dict[str, Any], total: int) -> str:
    """The line over the table: the score only once a check measured one, counts in words."""
    checked = int(sh.get("checked_models") or 0)
    installed = sh.get("installed_models")
    parts = []
    if sh.get("overall_score") is None or not checked:
        parts.append("no model checked yet")
    else:
        parts.append(f"score {fmt.score(sh['overall_score'])} over {words.plural(checked, 'checked model')}")
    if installed is not None:
        parts.append(f"{installed} of {words.plural(total, 'model')} installed")
    for key, word in (("healthy_models", "healthy"), ("degraded_models", "degraded"), ("corrupted_models", "corrupted")):
        if sh.get(key):
            parts.append(f"{sh[key]} {word}")
    if sh.get("last_system_check"):
        parts.append(f"last system check {fmt.ago(sh.get('last_system_check'))}")
    return " · ".join(parts)


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
        self.query_one("#health-summary", Static).update(health_summary(res.get("system_health") or {}, len(models)))
        self._detail()

    def on_events(self, events: list[dict[str, Any]]) -> None:
        if not self.loaded:
            return
        for ev in events:
            if ev.get("method") in ("model_health_alert", "model_availability_change"):
                self.mark_dirty()

    def _detail(self) -> None:
        raw = self.selected_raw()
        issues = raw.get("issues") or []
        parts = []
        if raw and raw.get("installed") is False:
            parts.append(f"{raw.get('model_id')} is not installed: press {self._keys()['mavail.request']} to download it")
        elif issues:
            parts.append("; ".join(words.issue_sentence(i) for i in issues[:2]) + (f" (+{len(issues) - 2} more)" if len(issues) > 2 else ""))
            advice = words.advice(issues, self._keys())
            if advice:
                parts.append("→ " + "; ".join(advice[:2]))
        elif raw and raw.get("overall_health") == "unknown":
            parts.append(f"{raw.get('model_id')} has not been checked: press {self._keys()['mavail.check']} for a full check")
        self.query_one("#health-detail", Static).update("\n".join(parts))

    def _keys(self) -> dict[str, str]:
        return shown_keys(self.mavail.keymap_overrides)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()
