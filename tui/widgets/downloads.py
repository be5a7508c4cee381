"""Downloads tab: progress bar, bytes, speed, ETA, priority, queue position, retries and errors, live."""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from mavail.tui import charts
from mavail.tui import format as fmt
from mavail.tui.widgets.base import Pane, show, status_text
from mavail.tui.widgets.live_table import Cell, Column, LiveTable

_RANK = {"critical": 0, "high": 1, "normal": 2, "low": 3}
SHORT_PRIORITY = {"critical": "crit", "high": "high", "normal": "norm", "low": "low"}

TREND = 8
TREND_WIDE = 20
WIDE = 110
"""A terminal this wide shows the bytes, the retries and a longer trend."""

# Fixed widths: the row fits 80 columns and cells do not jump as figures change.
COLUMNS = [
    Column("id", "Model", width=16),
    Column("status", "Status", sort=lambda r: r.get("status"), width=11),
    Column("progress", "Progress", sort=lambda r: r.get("progress_percent"), width=13),
    Column("bytes", "Bytes", sort=lambda r: r.get("downloaded_bytes"), width=11, min_screen=WIDE),
    Column("rate", "Speed ETA", sort=lambda r: r.get("speed_mbps"), width=13),
    Column("trend", "Speed 8s", width=TREND, max_screen=WIDE),
    Column("trend_wide", "Speed, last 20 s", width=TREND_WIDE, min_screen=WIDE),
    Column("queue", "Prio Q", sort=lambda r: (_RANK.get(r.get("priority", "normal"), 9), r.get("queue_position") or 999), width=6),
    # the current file's retries against the per-file limit
    Column("retries", "Rt", sort=lambda r: r.get("retry_count"), width=4, min_screen=WIDE),
]
ENGINE_WIDTH = 8
"""The engine column, with several engines: the widest row still fits 120 columns."""
CHART_HEIGHT = 4
SAMPLE_S = 1.0
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


def download_cells(d: dict[str, Any], trend: list[float] | None = None) -> tuple[Cell, ...]:
    """One row of the Downloads table from a `downloads.active` / `downloads.progress` record and its measured speeds."""
    pct = d.get("progress_percent")
    status = d.get("status")
    retries = _file_retries(d)
    running = status == "downloading"
    prio = SHORT_PRIORITY.get(str(d.get("priority")), str(d.get("priority") or "-"))
    pos = d.get("queue_position")
    return (
        d["model_id"],
        status_text(status),
        f"{fmt.bar(None if pct is None else pct / 100, 8)} {fmt.percent(pct):>4}",
        _bytes(d),
        f"{fmt.rate(d.get('speed_mbps'))} {fmt.duration(d.get('eta_seconds'))}" if running else "-",
        Text(charts.spark(trend or [], TREND), style="cyan"),
        Text(charts.spark(trend or [], TREND_WIDE), style="cyan"),
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
    FLEET = True
    RESYNC_S = 10.0
    """Progress events carry status, bytes, speed, retries and error codes; the resync only catches
    what no event says (an error message after a retry, a download started by another client's queue)."""

    DEFAULT_CSS = """
    DownloadsPane #downloads-chart { height: auto; padding: 0 1; }
    """

    _bandwidth: tuple[float | None, float | None] = (None, None)
    """Bandwidth in use and its limit, MiB/s: of the one engine, or in use on all engines (no common limit)."""
    _limits: dict[int, float | None] = {}
    """Each engine's global bandwidth limit (for the selected download's chart)."""

    def body(self) -> ComposeResult:
        self.speeds: dict[str, tuple[charts.ByteRate, charts.Series]] = {}
        """Per download: the byte counter's rate and its samples in MiB/s, one per second (measured here from bytes)."""
        yield Static("", classes="summary body", id="downloads-summary")
        self.table = LiveTable(self.mavail.fleet.columns(COLUMNS, width=ENGINE_WIDTH), id="downloads-table", classes="body")
        yield self.table
        yield Static("", classes="body", id="downloads-chart")
        yield Static("", classes="detail body", id="downloads-detail")

    def on_mount(self) -> None:
        self.sampler = self.set_interval(SAMPLE_S, self._sample)
        """The once-a-second speed sampler (snapshot tests pause it to draw canned speeds)."""

    def _trend(self, key: str) -> list[float]:
        got = self.speeds.get(key)
        return got[1].last(TREND_WIDE) if got else []

    def _cells(self, d: dict[str, Any], engine: int = 0) -> tuple[Cell, ...]:
        fleet = self.mavail.fleet
        return fleet.cells(engine, download_cells(d, self._trend(fleet.key(engine, d["model_id"]))), ENGINE_WIDTH)

    def engine_changed(self, engine: int) -> None:
        assert self.table is not None
        for key in self.table.keys():
            if self.mavail.fleet.owner(key) == engine:
                raw = self.table.raw(key) or {}
                self.table.upsert(key, self._cells(raw, engine), raw)

    def _sample(self) -> None:
        """Once a second: each download's speed from its byte counter (0 while it does not run)."""
        if self.table is None or not self.loaded:
            return
        now = time.monotonic()
        with self.app.batch_update():
            for key in self.table.keys():
                raw = self.table.raw(key) or {}
                rate, series = self.speeds.setdefault(key, (charts.ByteRate(), charts.Series(size=600)))
                measured = rate.update(raw.get("downloaded_bytes"), now)
                if raw.get("status") != "downloading":
                    series.add(0.0)
                elif measured is not None:
                    series.add(measured / fmt.MIB)
                self.table.upsert(key, self._cells(raw, self.mavail.fleet.owner(key)), raw)
            for gone in [k for k in self.speeds if k not in self.table.keys()]:
                self.speeds.pop(gone)
            if self.on_screen:
                self._chart()

    def shown(self) -> None:
        # the summary, detail and chart are left alone while another tab is shown: updating them laid the whole
        # screen out again several times a second
        if self.loaded:
            self._summary()
            self._detail()
            self._chart()

    def limit_of(self, d: dict[str, Any], engine: int = 0) -> float | None:
        """The cap on this download in MiB/s: its own limit or its engine's, the lower of the two set; None if none."""
        glob = self._limits.get(engine) if self.mavail.fleet.multi else self._bandwidth[1]
        caps = [float(x) for x in (d.get("bandwidth_limit_mbps"), glob) if x]
        return min(caps) if caps else None

    def _chart(self) -> None:
        raw = self.selected_raw()
        box = self.query_one("#downloads-chart", Static)
        if not raw:
            show(box, "")
            return
        width = max(10, self.size.width - 2)
        key = self.table.selected_key if self.table is not None else None
        values = self._trend_full(key or raw["model_id"], width)
        limit = self.limit_of(raw, self.mavail.fleet.owner(key))
        head = Text(f"speed, last {fmt.duration(len(values) * SAMPLE_S)}: now {fmt.rate(values[-1] if values else None)}"
                    f" · peak {fmt.rate(max(values, default=0.0))}")
        if limit:
            head.append(f" · limit {fmt.rate(limit)} ", style="")
            head.append("╌╌", style=charts.LIMIT_STYLE)
        lines = [head] + charts.block_chart(values, width, CHART_HEIGHT, limit)
        show(box, Text("\n").join(lines))

    def _trend_full(self, key: str, width: int) -> list[float]:
        got = self.speeds.get(key)
        return got[1].last(width) if got else []

    async def fetch(self) -> None:
        fleet = self.mavail.fleet
        answers = await fleet.gather("downloads.active", self.mavail.report_error)
        assert self.table is not None
        rows = {fleet.key(i, d["model_id"]): (self._cells(d, i), d)
                for i, res in answers.items() for d in res.get("active_downloads", [])}
        for key in self.table.keys():
            raw = self.table.raw(key) or {}
            owner = fleet.owner(key)
            # keep failed rows the engine no longer lists, so their errors stay readable until resolved,
            # and every row of an engine that did not answer (marked in the engine column)
            if key not in rows and (raw.get("status") == "failed" or owner not in answers):
                rows[key] = (self._cells(raw, owner), raw)
        self.table.sync(rows)
        if fleet.multi:
            used = [res.get("total_bandwidth_usage_mbps") for res in answers.values()]
            self._bandwidth = (sum(x for x in used if x) if answers else None, None)
            self._limits = {**self._limits, **{i: res.get("bandwidth_limit_mbps") for i, res in answers.items()}}
        else:
            res = answers[0]
            self._bandwidth = (res.get("total_bandwidth_usage_mbps"), res.get("bandwidth_limit_mbps"))
        self._summary()
        self._detail()

    def _summary(self) -> None:
        assert self.table is not None
        records = [self.table.raw(k) or {} for k in self.table.keys()]
        used, limit = self._bandwidth
        show(self.query_one("#downloads-summary", Static), downloads_summary(records, used, limit))

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
            engine = int(ev.get("engine") or 0)
            key = self.mavail.fleet.key(engine, mid)
            if kind == "model_download_progress":
                raw = self.table.raw(key)
                merged = {**(raw or {}), **{k: v for k, v in p.items() if k not in ("type", "timestamp")}}
                old_status = (raw or {}).get("status")
                self.table.upsert(key, self._cells(merged, engine), merged)
                if raw is None or old_status != merged.get("status"):
                    self.mark_dirty(key)
            elif kind == "download_failed":
                raw = self.table.raw(key) or {"model_id": mid}
                merged = {**raw, "status": "failed", "error_message": f"{p.get('error_code', 'FAILED')}: {p.get('message', '')}"}
                self.table.upsert(key, self._cells(merged, engine), merged)
        if self.on_screen:
            self._summary()
            self._detail()

    def _detail(self) -> None:
        raw = self.selected_raw()
        err = raw.get("error_message")
        if err:
            code = raw.get("error_code")
            text = f"{raw.get('model_id')}: {code + ': ' if code and not str(err).startswith(code) else ''}{err}"
        elif raw:
            text = (f"{raw.get('model_id')}: {_bytes(raw).replace('/', ' of ')} · {raw.get('retry_count') or 0}/{raw.get('max_retries', '?')} retries"
                    + (f" on {raw.get('current_file')}" if raw.get("current_file") else " on this file")
                    + f" · {raw.get('total_retries') or 0} in all")
        else:
            text = ""
        show(self.query_one("#downloads-detail", Static), Text(text, style="red" if err else ""))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()
        self._chart()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.mavail.main.action_request()
