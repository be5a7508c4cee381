"""System tab: GPUs and their VRAM from system.info, CPU, RAM and the models' disk."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from mavail.tui import format as fmt
from mavail.tui.widgets.base import Pane
from mavail.tui.widgets.live_table import Cell, Column, LiveTable

COLUMNS = [
    Column("id", "GPU"),
    Column("name", "Name"),
    Column("vram", "VRAM used", sort=lambda r: r.get("used_mb")),
    Column("free", "Free", sort=lambda r: r.get("free_mb")),
    Column("util", "Util", sort=lambda r: r.get("utilization_percent")),
]


def gpu_cells(g: dict[str, Any]) -> tuple[Cell, ...]:
    """One GPU row."""
    total = g.get("total_mb") or 0
    used = g.get("used_mb") or 0
    return (
        str(g.get("index")),
        str(g.get("name", "?"))[:24],
        f"{fmt.bar(used / total if total else None, 8)} {fmt.size_mb(used)}/{fmt.size_mb(total)}",
        fmt.size_mb(g.get("free_mb")),
        fmt.percent(g.get("utilization_percent")),
    )


def machine_text(info: dict[str, Any]) -> str:
    """CPU, memory and disk lines."""
    cpu = info.get("cpu", {})
    mem = info.get("memory", {})
    disk = info.get("disk", {})
    load = cpu.get("load_average") or []
    mem_pct = mem.get("percent")
    disk_pct = disk.get("percent")
    return "\n".join((
        f"CPU  {cpu.get('logical_cores', '?')} cores · {fmt.percent(cpu.get('percent'))} busy · load {' '.join(f'{x:.2f}' for x in load)}",
        f"RAM  {fmt.bar(None if mem_pct is None else mem_pct / 100, 20)} {fmt.size_mb(mem.get('used_mb'))} of "
        f"{fmt.size_mb(mem.get('total_mb'))} ({fmt.percent(mem_pct)}), {fmt.size_mb(mem.get('available_mb'))} available",
        f"Disk {fmt.bar(None if disk_pct is None else disk_pct / 100, 20)} {fmt.size_gb(disk.get('free_gb'))} free of "
        f"{fmt.size_gb(disk.get('total_gb'))} ({fmt.percent(disk_pct)} used) at {disk.get('path', '?')}",
    ))


class SystemPane(Pane):
    """The machine the models run on."""

    TITLE = "System"
    REQUIRES = ("system.info",)
    RESYNC_S = 5.0

    def body(self) -> ComposeResult:
        yield Static("", classes="summary body", id="system-machine")
        self.table = LiveTable(COLUMNS, id="system-gpus", classes="body")
        yield self.table
        yield Static("", classes="detail body", id="system-gpu-note")

    async def fetch(self) -> None:
        info = await self.mavail.link.call("system.info")
        self.query_one("#system-machine", Static).update(machine_text(info))
        gpus = info.get("gpus") or []
        assert self.table is not None
        self.table.sync({str(g.get("index")): (gpu_cells(g), g) for g in gpus})
        note = self.query_one("#system-gpu-note", Static)
        if gpus:
            note.update(f"{len(gpus)} GPU(s) through NVML")
        else:
            note.update(Text(f"No GPU readable: {info.get('gpu_error') or 'none found'}. "
                             "Set gpu.vram_gb in Settings to tell the engine how much VRAM to assume.", style="yellow"))

    def selected_model(self) -> str | None:
        return None
