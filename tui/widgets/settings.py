"""Settings tab: bandwidth, concurrency, health intervals and more, edited in place through config.update."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from mavail.tui.widgets.base import Pane
from mavail.tui.widgets.live_table import Cell, Column, LiveTable

COLUMNS = [Column("id", "Setting", width=35), Column("value", "Value", width=8), Column("doc", "Meaning", width=28)]

FIRST = ("downloads.bandwidth_limit_mbps", "downloads.max_concurrent", "downloads.max_retries", "health.check_interval_hours",
         "health.full_check_interval_days", "health.max_read_mbps", "health.auto_repair_enabled", "storage.max_gb",
         "storage.min_free_gb", "gpu.vram_gb", "updates.keep_versions")
"""The settings people change from the TUI most, shown first; the rest follow by key (the engine validates every value)."""
HIDDEN = ("rpc.token",)


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """`{section: {key: v}}` as `{"section.key": v}`."""
    out: dict[str, Any] = {}
    for section, body in config.items():
        if isinstance(body, dict):
            for k, v in body.items():
                out[f"{section}.{k}"] = v
        else:
            out[section] = body
    return out


def show_value(v: Any) -> str:
    """A value as the user types it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def parse_value(text: str, like: Any) -> Any:
    """Parse typed text into the type of the current value (the engine does the real validation)."""
    t = text.strip()
    if isinstance(like, bool):
        low = t.lower()
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
        raise ValueError("type true or false")
    if isinstance(like, int):
        return int(t)
    if isinstance(like, float):
        return float(t)
    if isinstance(like, list):
        return [int(x) for x in t.replace(",", " ").split()]
    return t


class SettingsPane(Pane):
    """Live engine settings; enter edits the selected one."""

    TITLE = "Settings"
    REQUIRES = ("config.get", "config.update")
    RESYNC_S = 60.0

    def body(self) -> ComposeResult:
        yield Static("enter edits the selected setting; the engine checks and saves it",
                     classes="summary body")
        self.table = LiveTable(COLUMNS, id="settings-table", classes="body")
        yield self.table

    async def fetch(self) -> None:
        answer = await self.mavail.link.call("config.get", schema=True)
        flat = flatten(answer["settings"])
        schema: dict[str, dict[str, Any]] = answer["schema"]
        rows: dict[str, tuple[tuple[Cell, ...], dict[str, Any]]] = {}
        ordered = [k for k in FIRST if k in flat] + sorted(k for k in flat if k not in FIRST and k not in HIDDEN)
        for key in ordered:
            rec = {"key": key, "value": flat[key], "model_id": None}
            # each setting's few words come from the engine's schema, next to its type and bounds
            rows[key] = ((key, show_value(flat[key]), str(schema.get(key, {}).get("short", ""))), rec)
        assert self.table is not None
        self.table.sync(rows)

    def selected_model(self) -> str | None:
        return None

    def on_events(self, events: list[dict[str, Any]]) -> None:
        if self.loaded and any(ev.get("method") == "config_changed" for ev in events):
            self.mark_dirty()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        raw = self.selected_raw()
        if raw:
            self.mavail.edit_setting(raw["key"], raw["value"])
