"""Downloads tab: progress bar, bytes, speed, ETA, priority, queue position, retries and errors, live."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from mavail.tui import format as fmt
from mavail.tui.widgets.base import Pane, status_text
from mavail.tui.widgets.live_table import Cell, Column, LiveTable

_RANK = {"critical": 0, "high": 1, "normal": 2, "low": 3}
SHORT_PRIORITY = {"critical": "crit", "high": "high", "normal": "norm", "low": "low"}

# Fixed widths: the row fits 80 columns and cells do not jump as figures change.
COLUMNS = [
    Column("id", "Model", width=13),
    Column("status", "Status", sort=lambda r: r.get("status"), width=11),
    Column("progress", "Progress", sort=lambda r: r.get("progress_percent"), width=9),
    Column("bytes", "Bytes", sort=lambda r: r.get("downloaded_bytes"), width=11),
    Column("rate", "Speed ETA", sort=lambda r: r.get("speed_mbps"), width=10),
    Column("queue", "Prio Q", sort=lambda r: (_RANK.get(r.get("priority", "normal"), 9), r.get("queue_position") or 999), width=6),
    # the current file's retries against the per-file limit
    Column("retries", "Rt", sort=lambda r: r.get("retry_count"), width=4),
]
TERMINAL = ("completed", "cancelled")


def _bytes(d: dict[str, Any]) -> str:
    done = d.get("downloaded_bytes")
    total = d.get("total_bytes")
    if done is None and d.get("downloaded_mb") is not None:
        done = d["downloaded_mb"] * fmt.MIB
    if total is None and d.get("total_mb") is not None:
        total = d["total_mb"] * fmt.MIB
    if done is None and total is None:
        return "-"
    return f"{fmt.size(done)}/{fmt.size(total)}"


def download_cells(d: dict[str, Any]) -> tuple[Cell, ...]:
    """One row of the Downloads table from a `downloads.active` / `downloads.progress` record."""
    pct = d.get("progress_percent")
    status = d.get("status")
    retries = _file_retries(d)
    running = status == "downloading"
    prio = SHORT_PRIORITY.get(str(d.get("priority")), str(d.get("priority") or "-"))
    pos = d.get("queue_position")
    return (
        d["model_id"],
        status_text(status),
        f"{fmt.bar(None if pct is None else pct / 100, 4)} {fmt.percent(pct):>4}",
        _bytes(d),
        f"{fmt.rate(d.get('speed_mbps'))} {fmt.duration(d.get('eta_seconds'))}" if running else "-",
        f"{prio} {pos}" if pos else prio,
        Text(retries, style="yellow") if not retries.startswith("0") else retries,
    )


def _file_retries(d: dict[str, Any]) -> str:
    """`this/max`: the current file's retries against the per-file limit."""
    this = d.get("retry_count") or 0
    limit = d.get("max_retries")
    text = f"{this}/{limit}" if limit is not None else str(this)
    return text if len(text) <= 4 else str(this)


def downloads_summary(records: list[dict[str, Any]], used_mbps: float | None, limit_mbps: float | None) -> str:
    """`1 downloading · 2 queued · 1 failed · 3.0M/s in all (limit 10M/s)`: each status counted for what it is."""
    statuses = [str(r.get("status") or "unknown") for r in records]
    if not statuses:
        return "no download: press enter on a model in the Models tab to get it"
    order = ("downloading", "verifying", "queued", "paused", "failed")
    parts = [f"{statuses.count(s)} {s}" for s in order if s in statuses]
    parts += [f"{statuses.count(s)} {s}" for s in sorted(set(statuses) - set(order))]
    rate = f"{fmt.rate(used_mbps)} in all"
    if limit_mbps:
        rate += f" (limit {fmt.rate(limit_mbps)})"
    return " · ".join(parts + [rate])


class DownloadsPane(Pane):
    """What is downloading, how fast, and what went wrong."""

    TITLE = "Downloads"
    REQUIRES = ("downloads.active", "downloads.progress")
    RESYNC_S = 10.0
    """Progress events carry status, bytes, speed, retries and error codes; the resync only catches
    what no event says (an error message after a retry, a download started by another client's queue)."""

    _bandwidth: tuple[float | None, float | None] = (None, None)

    def body(self) -> ComposeResult:
        yield Static("", classes="summary body", id="downloads-summary")
        self.table = LiveTable(COLUMNS, id="downloads-table", classes="body")
        yield self.table
        yield Static("", classes="detail body", id="downloads-detail")

    async def fetch(self) -> None:
        res = await self.mavail.link.call("downloads.active")
        assert self.table is not None
        rows = {d["model_id"]: (download_cells(d), d) for d in res.get("active_downloads", [])}
        # keep failed rows the engine no longer lists, so their errors stay readable until resolved
        for key in self.table.keys():
            raw = self.table.raw(key) or {}
            if key not in rows and raw.get("status") == "failed":
                rows[key] = (download_cells(raw), raw)
        self.table.sync(rows)
        self._bandwidth = (res.get("total_bandwidth_usage_mbps"), res.get("bandwidth_limit_mbps"))
        self._summary()
        self._detail()

    def _summary(self) -> None:
        assert self.table is not None
        records = [self.table.raw(k) or {} for k in self.table.keys()]
        used, limit = self._bandwidth
        self.query_one("#downloads-summary", Static).update(downloads_summary(records, used, limit))

    async def refetch(self, model_ids: list[str]) -> None:
        await self.fetch()

    def on_events(self, events: list[dict[str, Any]]) -> None:
        if self.table is None or not self.loaded:
            return
        for ev in events:
            kind = ev.get("method")
            p = ev.get("params", {})
            mid = p.get("model_id")
            if not isinstance(mid, str):
                continue
            if kind == "model_download_progress":
                raw = self.table.raw(mid)
                merged = {**(raw or {}), **{k: v for k, v in p.items() if k not in ("type", "timestamp")}}
                old_status = (raw or {}).get("status")
                self.table.upsert(mid, download_cells(merged), merged)
                if raw is None or old_status != merged.get("status"):
                    self.mark_dirty(mid)
            elif kind == "download_failed":
                raw = self.table.raw(mid) or {"model_id": mid}
                merged = {**raw, "status": "failed", "error_message": f"{p.get('error_code', 'FAILED')}: {p.get('message', '')}"}
                self.table.upsert(mid, download_cells(merged), merged)
        self._summary()
        self._detail()

    def _detail(self) -> None:
        raw = self.selected_raw()
        err = raw.get("error_message")
        if err:
            code = raw.get("error_code")
            text = f"{raw.get('model_id')}: {code + ': ' if code and not str(err).startswith(code) else ''}{err}"
        elif raw:
            text = (f"{raw.get('model_id')}: {raw.get('retry_count') or 0}/{raw.get('max_retries', '?')} retries"
                    + (f" on {raw.get('current_file')}" if raw.get("current_file") else " on this file")
                    + f" · {raw.get('total_retries') or 0} in all")
        else:
            text = ""
        self.query_one("#downloads-detail", Static).update(Text(text, style="red" if err else ""))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.mavail.main.action_request()
