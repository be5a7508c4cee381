"""Models tab: every catalog model's status, version, size, health, use and update flag, live."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from mavail.tui import format as fmt
from mavail.tui import words
from mavail.tui.widgets.base import Pane, show, status_text
from mavail.tui.widgets.live_table import Cell, Column, LiveTable

COLUMNS = [
    Column("id", "Model"),
    Column("status", "Status", sort=lambda r: r.get("availability_status")),
    Column("version", "Ver", sort=lambda r: r.get("version")),
    Column("size", "Size", sort=lambda r: r.get("size_bytes")),
    Column("health", "Health", sort=lambda r: r.get("integrity_score")),
    Column("use", "Use", sort=lambda r: bool(r.get("is_loaded"))),
    Column("upd", "Upd", sort=lambda r: bool(r.get("update_available"))),
    Column("prog", "Prog", sort=lambda r: r.get("download_progress")),
]


def health_cell(s: dict[str, Any]) -> Cell:
    """Integrity as the Models table shows it."""
    if s.get("corruption_detected") or s.get("availability_status") == "corrupted":
        return Text("bad", style="bold red")
    if s.get("availability_status") != "available" and not s.get("last_health_check"):
        return "-"
    if s.get("integrity_score") is None or (not s.get("verified") and not s.get("last_health_check")):
        return Text("unchecked", style="dim")
    return fmt.score(s.get("integrity_score"))


def model_cells(s: dict[str, Any]) -> tuple[Cell, ...]:
    """One row of the Models table from a `models.status` entry."""
    prog = s.get("download_progress")
    return (
        s["model_id"],
        status_text(s.get("availability_status")),
        str(s.get("current_version") or s.get("version") or "-"),
        fmt.size(s.get("size_bytes")) if s.get("size_bytes") is not None else fmt.size_mb(s.get("size_mb")),
        health_cell(s),
        fmt.yes(s.get("is_loaded")),
        Text("new", style="magenta") if s.get("update_available") else "",
        fmt.percent(prog) if isinstance(prog, (int, float)) else "",
    )


STATUSES = ("available", "downloading", "queued", "paused", "missing", "failed", "corrupted")


def models_summary(sm: dict[str, Any], table: LiveTable | None = None) -> str:
    """`7 models · 1 available · 2 downloading · 4 missing · 24.0M on disk`: only the counts that are not zero."""
    total = int(sm.get("total_models") or 0)
    head = words.plural(total, "model")
    if table is not None and table.filter_text:
        head = f"{table.row_count} of {head} match /{table.filter_text}"
    parts = [head]
    for status in STATUSES:
        n = sm.get(f"{status}_models")
        if n:
            parts.append(f"{n} {status}")
    gb = sm.get("total_storage_gb")
    if gb is not None:
        parts.append(f"{fmt.size_gb(gb)} on disk" if gb > 0 else "nothing on disk yet")
    return " · ".join(parts)


class ModelsPane(Pane):
    """Every model: what is there, what is missing, what is broken, what is in use."""

    TITLE = "Models"
    _storage_gb: float | None = None
    """Bytes of models on disk from the last full fetch (a partial update cannot measure it)."""
    REQUIRES = ("models.status",)
    FLEET = True
    SHOWN_RELOAD_S = Pane.RESYNC_S
    """Events keep every row live while the tab is hidden too; fetching 1,000 models each time the tab is shown
    would only delay the next key."""

    def body(self) -> ComposeResult:
        yield Static("", classes="summary body", id="models-summary")
        self.table = LiveTable(self.mavail.fleet.columns(COLUMNS), id="models-table", classes="body")
        yield self.table

    def _cells(self, engine: int, s: dict[str, Any]) -> tuple[Cell, ...]:
        return self.mavail.fleet.cells(engine, model_cells(s))

    async def fetch(self) -> None:
        fleet = self.mavail.fleet
        answers = await fleet.gather("models.status", self.mavail.report_error)
        assert self.table is not None
        # an engine that did not answer keeps its last rows (marked in the engine column)
        rows = {k: (self._cells(fleet.owner(k), self.table.raw(k) or {}), self.table.raw(k) or {})
                for k in self.table.keys() if fleet.owner(k) not in answers}
        for i, res in answers.items():
            rows.update({fleet.key(i, mid): (self._cells(i, s), s) for mid, s in res["models"].items()})
        self.table.sync(rows)
        self.mavail.rows_settled()
        sizes = [res.get("summary", {}).get("total_storage_gb") for res in answers.values()]
        self._storage_gb = sum(x for x in sizes if x is not None) if any(x is not None for x in sizes) else None
        self._recount()  # counted from the rows: every status, failed and paused too

    def engine_changed(self, engine: int) -> None:
        assert self.table is not None
        for key in self.table.keys():
            if self.mavail.fleet.owner(key) == engine:
                raw = self.table.raw(key) or {}
                self.table.upsert(key, self._cells(engine, raw), raw)

    def _recount(self) -> None:
        """Recount the summary from the rows after a partial update (storage keeps the last full figure)."""
        assert self.table is not None
        statuses = [(self.table.raw(k) or {}).get("availability_status") for k in self.table.keys()]
        self._summary({
            "total_models": len(statuses),
            **{f"{s}_models": statuses.count(s) for s in STATUSES},
            "total_storage_gb": self._storage_gb,
        })

    def _summary(self, sm: dict[str, Any]) -> None:
        show(self.query_one("#models-summary", Static), models_summary(sm, self.table))

    def view_changed(self) -> None:
        if self.loaded:
            self._recount()

    async def refetch(self, model_ids: list[str]) -> None:
        """Refetch these rows (row keys: model ids, with several engines `model_id@n`), each from its engine."""
        if not self.loaded:
            return
        fleet = self.mavail.fleet
        assert self.table is not None
        for i, slot in enumerate(fleet.slots):
            keys = [k for k in model_ids if fleet.owner(k) == i and self.table.raw(k) is not None]
            if not keys or not slot.link.connected:
                continue
            mids = [(self.table.raw(k) or {}).get("model_id", k) for k in keys]
            results = await slot.link.call_many([("models.status", {"model_id": m}) for m in mids])
            for key, s in zip(keys, results):
                if isinstance(s, dict):
                    self.table.upsert(key, self._cells(i, s), s)
        self._recount()

    def on_events(self, events: list[dict[str, Any]]) -> None:
        if self.table is None or not self.loaded:
            return
        for ev in events:
            p = ev.get("params", {})
            mid = p.get("model_id")
            engine = int(ev.get("engine") or 0)
            key = self.mavail.fleet.key(engine, mid) if isinstance(mid, str) else None
            raw = self.table.raw(key) if key is not None else None
            if raw is None or key is None:
                continue
            kind = ev.get("method")
            if kind == "model_availability_change":
                raw = {**raw, "availability_status": p.get("new_status")}
                self.table.upsert(key, self._cells(engine, raw), raw)
                self._recount()
                self.mark_dirty(key)
                if p.get("new_status") in ("available", "missing", "corrupted"):
                    self.mark_dirty()  # bytes came or went: the whole answer measures the disk again
            elif kind == "model_download_progress":
                raw = {**raw, "download_progress": p.get("progress_percent", raw.get("download_progress"))}
                self.table.upsert(key, self._cells(engine, raw), raw)
                if p.get("status") in ("completed", "failed", "cancelled", "paused"):
                    self.mark_dirty(key)
            elif kind in ("model_health_alert", "download_failed"):
                self.mark_dirty(key)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.mavail.main.action_request()
