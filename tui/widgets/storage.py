"""Storage tab: where the space goes (the disk, the models by tier against storage.max_gb, each model's share), cleanup."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from mavail.tui import charts
from mavail.tui import format as fmt
from mavail.tui import words
from mavail.tui.actions import shown_keys
from mavail.tui.widgets.base import Pane
from mavail.tui.widgets.live_table import Cell, Column, LiveTable

COLUMNS = [
    Column("id", "Model", width=16),
    Column("size", "Size", sort=lambda r: r.get("size_bytes"), width=6),
    Column("share", "Share of models", sort=lambda r: r.get("size_bytes"), width=15),
    Column("tier", "Tier", sort=lambda r: r.get("storage_tier"), width=4),
    Column("freq", "Uses/day", sort=lambda r: r.get("usage_frequency"), width=8),
    Column("last", "Last use", sort=lambda r: r.get("last_accessed"), width=8),
    Column("cand", "Cleanup", sort=lambda r: bool(r.get("_candidate")), width=7),
]
TIER_STYLE = {"hot": "red", "warm": "yellow", "cold": "blue"}
GIB = 1024**3
BAR = 30


def storage_cells(m: dict[str, Any], models_bytes: int = 0) -> tuple[Cell, ...]:
    """One row of the Storage table from a `storage.info` models_storage entry, its share of every model's bytes."""
    tier = str(m.get("storage_tier") or "-")
    freq = m.get("usage_frequency")
    size_b = m.get("size_bytes")
    if size_b is None and m.get("size_gb") is not None:
        size_b = m["size_gb"] * GIB
    share = (size_b or 0) / models_bytes if models_bytes else None
    share_cell = Text("-") if share is None else charts.share_bar([(share, TIER_STYLE.get(tier, "cyan"))], 1.0, 10)
    if share is not None:
        share_cell.append(f" {share * 100:3.0f}%")
    return (
        m["model_id"],
        fmt.size(size_b),
        share_cell,
        Text(tier, style=TIER_STYLE.get(tier, "")),
        "-" if freq is None else f"{float(freq):.1f}",
        fmt.ago(m.get("last_accessed"), short=True),
        Text("yes", style="yellow") if m.get("_candidate") else "",
    )


def _fit(head: Text, bar: Text, legend: Text) -> Text:
    out = head.copy()
    out.append_text(bar)
    out.append_text(legend)
    return out


def disk_line(sm: dict[str, Any], width: int = 80) -> Text:
    """Where the disk goes: models, partial downloads, everything else, free; one bar against the disk (fits `width`)."""
    total = float(sm.get("total_capacity_bytes") or (sm.get("total_capacity_gb") or 0) * GIB)
    used = float(sm.get("used_space_bytes") or (sm.get("used_space_gb") or 0) * GIB)
    models = float(sm.get("models_size_bytes") or 0)
    partial = float(sm.get("partial_size_bytes") or 0)
    other = max(0.0, used - models - partial)
    free = float(sm.get("available_space_bytes") or (sm.get("available_space_gb") or 0) * GIB)
    reserved = max(0.0, total - used - free)  # blocks kept for root or otherwise not available to the engine
    text = Text()
    text.append("models", style="cyan")
    text.append(f" {fmt.size(models)} · ")
    if partial:
        text.append("partial", style="blue")
        text.append(f" {fmt.size(partial)} · ")
    text.append("other", style="grey50")
    text.append(f" {fmt.size(other)}")
    if reserved >= 0.01 * total:
        text.append(" · reserved", style="grey35")
        text.append(f" {fmt.size(reserved)}")
    text.append(f" · free {fmt.size(free)}")
    parts = [(models, "cyan"), (partial, "blue"), (other, "grey50"), (reserved, "grey35")]
    size = f" {fmt.size(total)}"
    if 7 + 8 + len(size) + 2 + len(text) <= width:
        bar_w = max(8, min(BAR, width - 7 - len(size) - 2 - len(text)))
        return _fit(Text("Disk   ", style="bold"), charts.share_bar(parts, total, bar_w), Text(size + ": ") + text)
    # too long for one line: the bar with the disk's size, the legend under it
    bar_w = max(8, min(2 * BAR, width - 7 - len(size)))
    return Text("\n").join([_fit(Text("Disk   ", style="bold"), charts.share_bar(parts, total, bar_w), Text(size)),
                            Text("       ") + text])


def tier_line(sm: dict[str, Any], rows: list[dict[str, Any]], width: int = 80) -> Text:
    """The models' bytes by tier against the storage.max_gb ceiling (or against their own total without one)."""
    by_tier = {t: sum(float(r.get("size_bytes") or 0) for r in rows if r.get("storage_tier") == t) for t in TIER_STYLE}
    models = float(sm.get("models_size_bytes") or sum(by_tier.values()))
    ceiling = float(sm.get("max_gb") or 0) * GIB
    text = Text(" ")
    for i, t in enumerate(TIER_STYLE):
        text.append(t, style=TIER_STYLE[t])
        text.append(f" {fmt.size(by_tier[t])}" + (" · " if i < 2 else ""))
    if ceiling:
        text.append(f" of max {fmt.size(ceiling)} ({100 * models / ceiling:.0f}%)",
                    style="bold red" if models > ceiling else "")
    else:
        text.append(" · no ceiling", style="dim")
    bar_w = max(8, min(BAR, width - 7 - len(text)))
    return _fit(Text("Models ", style="bold"),
                charts.share_bar([(by_tier[t], TIER_STYLE[t]) for t in TIER_STYLE], ceiling or models, bar_w), text)


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
    DEFAULT_CSS = """
    StoragePane #storage-summary { max-height: 6; }
    """
    REQUIRES = ("storage.info",)

    def body(self) -> ComposeResult:
        yield Static("", classes="summary body", id="storage-summary")
        self.table = LiveTable(COLUMNS, id="storage-table", classes="body")
        yield self.table
        yield Static("", classes="detail body", id="storage-detail")

    _summary: tuple[dict[str, Any], list[dict[str, Any]], Text] | None = None
    """What the summary lines were last drawn from, to draw them again at a new width."""

    def _draw_summary(self) -> None:
        if self._summary is None:
            return
        sm, records, count = self._summary
        width = (self.size.width or 80) - 2
        self.query_one("#storage-summary", Static).update(Text("\n").join([disk_line(sm, width), tier_line(sm, records, width), count]))

    def on_resize(self) -> None:
        self._draw_summary()  # the bars span the width: a tab fetched before it was laid out is drawn again at its size

    async def fetch(self) -> None:
        res = await self.mavail.link.call("storage.info")
        sugg = res.get("cleanup_suggestions") or {}
        candidates = set(sugg.get("candidates") or [])
        sm = res.get("storage_summary") or {}
        records = [{**m, "_candidate": m.get("model_id") in candidates} for m in res.get("models_storage", [])]
        models_bytes = int(sm.get("models_size_bytes") or sum(int(m.get("size_bytes") or 0) for m in records))
        assert self.table is not None
        self.table.sync({m["model_id"]: (storage_cells(m, models_bytes), m) for m in records})
        count = Text(f"{words.plural(len(records), 'model')} on disk (finished or still downloading), {fmt.size(models_bytes)}",
                     style="dim")
        self._summary = (sm, records, count)
        self._draw_summary()
        self.query_one("#storage-detail", Static).update(cleanup_line(sugg, shown_keys(self.mavail.keymap_overrides)["mavail.cleanup"]))

    def on_events(self, events: list[dict[str, Any]]) -> None:
        if not self.loaded:
            return
        for ev in events:
            if ev.get("method") in ("storage_warning", "model_availability_change"):
                self.mark_dirty()
