"""Storage tab: disk bar, per-model sizes and tiers, cleanup recommendations."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from mavail.tui import format as fmt
from mavail.tui import words
from mavail.tui.actions import shown_keys
from mavail.tui.widgets.base import Pane
from mavail.tui.widgets.live_table import Cell, Column, LiveTable

COLUMNS = [
    Column("id", "Model"),
    Column("size", "Size", sort=lambda r: r.get("size_gb")),
    Column("tier", "Tier", sort=lambda r: r.get("storage_tier")),
    Column("freq", "Uses/day", sort=lambda r: r.get("usage_frequency")),
    Column("last", "Last access", sort=lambda r: r.get("last_accessed")),
    Column("cand", "Cleanup", sort=lambda r: bool(r.get("_candidate"))),
]
TIER_STYLE = {"hot": "red", "warm": "yellow", "cold": "blue"}


def storage_cells(m: dict[str, Any]) -> tuple[Cell, ...]:
    """One row of the Storage table from a `storage.info` models_storage entry."""
    tier = str(m.get("storage_tier") or "-")
    freq = m.get("usage_frequency")
    return (
        m["model_id"],
        fmt.size_gb(m.get("size_gb")),
        Text(tier, style=TIER_STYLE.get(tier, "")),
        "-" if freq is None else f"{float(freq):.1f}",
        fmt.ago(m.get("last_accessed")),
        Text("yes", style="yellow") if m.get("_candidate") else "",
    )


def disk_line(sm: dict[str, Any], width: int = 30) -> str:
    """`[██████░░░░] 125G of 500G used (25%), 374G free, 8 models`."""
    pct = sm.get("usage_percent")
    return (f"{fmt.bar(None if pct is None else pct / 100, width)} {fmt.size_gb(sm.get('used_space_gb'))} of "
            f"{fmt.size_gb(sm.get('total_capacity_gb'))} used ({fmt.percent(pct)}), "
            f"{fmt.size_gb(sm.get('available_space_gb'))} free, {words.plural(sm.get('models_count', 0), 'model')}")


def cleanup_line(sugg: dict[str, Any], key: str) -> str:
    """What the cleanup key would do now: the same automatic plan the engine computes for a dry run."""
    candidates = list(sugg.get("candidates") or [])
    if not candidates:
        return f"an automatic cleanup would remove nothing now · {key} plans one (unused models, stale partial data)"
    names = ", ".join(candidates[:3]) + (" …" if len(candidates) > 3 else "")
    safe = sugg.get("safe_to_remove_count")
    sure = f", {safe} of them safe" if safe is not None and safe != len(candidates) else ""
    return (f"a cleanup would remove {words.plural(len(candidates), 'item')}{sure} ({names}), "
            f"freeing {fmt.size_gb(sugg.get('potential_savings_gb'))} · press {key} to see the plan and confirm")


class StoragePane(Pane):
    """What the disk holds and what could go."""

    TITLE = "Storage"
    REQUIRES = ("storage.info",)

    def body(self) -> ComposeResult:
        yield Static("", classes="summary body", id="storage-summary")
        self.table = LiveTable(COLUMNS, id="storage-table", classes="body")
        yield self.table
        yield Static("", classes="detail body", id="storage-detail")

    async def fetch(self) -> None:
        res = await self.mavail.link.call("storage.info")
        sugg = res.get("cleanup_suggestions") or {}
        candidates = set(sugg.get("candidates") or [])
        rows = {}
        for m in res.get("models_storage", []):
            rec = {**m, "_candidate": m.get("model_id") in candidates}
            rows[m["model_id"]] = (storage_cells(rec), rec)
        assert self.table is not None
        self.table.sync(rows)
        self.query_one("#storage-summary", Static).update(disk_line(res.get("storage_summary") or {}))
        self.query_one("#storage-detail", Static).update(cleanup_line(sugg, shown_keys(self.mavail.keymap_overrides)["mavail.cleanup"]))

    def on_events(self, events: list[dict[str, Any]]) -> None:
        if not self.loaded:
            return
        for ev in events:
            if ev.get("method") in ("storage_warning", "model_availability_change"):
                self.mark_dirty()
