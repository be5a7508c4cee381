"""System tab: CPU, memory, disk, disk I/O, network and each GPU's memory and utilisation, with their last minutes."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from mavail.rpc.client import CallTimeout, EngineUnavailable, RpcError
from mavail.tui import charts
from mavail.tui import format as fmt
from mavail.tui.widgets.base import Pane
from mavail.tui.widgets.live_table import Cell, Column, LiveTable

SAMPLE_S = 2.0
"""How often the tab reads system.info (also while another tab is shown, so the history is there when it is)."""
KEEP = 300
"""Samples kept per figure: ten minutes."""
LABEL = 14
TREND = 16

COLUMNS = [
    Column("id", "GPU", width=3),
    Column("name", "Name", width=18),
    Column("vram", "VRAM used", sort=lambda r: r.get("used_mb"), width=20),
    Column("vram_trend", "VRAM", width=TREND),
    Column("util", "Util", sort=lambda r: r.get("utilization_percent"), width=4),
    Column("util_trend", "Util", width=TREND, min_screen=100),
]


def gpu_cells(g: dict[str, Any], vram: list[float] | None = None, util: list[float] | None = None) -> tuple[Cell, ...]:
    """One GPU row: memory bar and figures, utilisation, and their recent history."""
    total = g.get("total_mb") or 0
    used = g.get("used_mb") or 0
    return (
        str(g.get("index")),
        str(g.get("name", "?"))[:18],
        f"{fmt.bar(used / total if total else None, 6)} {fmt.size_mb(used)}/{fmt.size_mb(total)}",
        Text(charts.spark(vram or [], TREND, hi=100.0), style="magenta"),
        fmt.percent(g.get("utilization_percent")),
        Text(charts.spark(util or [], TREND, hi=100.0), style="green"),
    )


def gpu_note(info: dict[str, Any]) -> Text:
    """What the GPU table means: how many GPUs, or that there is no NVIDIA GPU (and why), without a traceback."""
    gpus = info.get("gpus") or []
    if gpus:
        return Text(f"{len(gpus)} NVIDIA GPU{'' if len(gpus) == 1 else 's'} through NVML · VRAM and Util: % over the last minutes",
                    style="dim")
    reason = str(info.get("gpu_error") or "none found")
    if "LibraryNotFound" in reason or "Shared Library Not Found" in reason:
        reason = "the NVIDIA driver library (NVML) is not installed"
    elif "DriverNotLoaded" in reason:
        reason = "the NVIDIA driver is not loaded"
    elif reason.startswith("NVML unavailable: "):
        reason = reason.removeprefix("NVML unavailable: ")
    return Text(f"no NVIDIA GPU: {reason}. Settings → gpu.vram_gb tells the engine how much VRAM to assume.", style="yellow")


class SystemHistory:
    """The machine's figures over the last minutes, from successive system.info answers."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self.series: dict[str, charts.Series] = {}
        self._rates: dict[str, charts.ByteRate] = {}
        self.last: dict[str, Any] = {}
        """The newest answer."""
        self.samples = 0

    def _s(self, name: str) -> charts.Series:
        return self.series.setdefault(name, charts.Series(size=self.keep))

    def values(self, name: str, n: int) -> list[float]:
        """The newest `n` samples of one figure."""
        s = self.series.get(name)
        return s.last(n) if s else []

    def add(self, info: dict[str, Any]) -> None:
        """Record one answer: percentages as they are, byte counters as rates between this answer and the previous."""
        self.last = info
        self.samples += 1
        cpu = (info.get("cpu") or {}).get("percent")
        mem = (info.get("memory") or {}).get("percent")
        if cpu is not None:
            self._s("cpu").add(cpu)
        if mem is not None:
            self._s("mem").add(mem)
        t = info.get("sampled_monotonic_s")
        for group, fields in (("disk_io", ("read_bytes", "write_bytes")), ("network", ("bytes_recv", "bytes_sent"))):
            counters = info.get(group) or {}
            for f in fields:
                rate = self._rates.setdefault(f, charts.ByteRate()).update(counters.get(f), float(t) if t is not None else 0.0)
                if rate is not None:
                    self._s(f).add(rate / fmt.MIB)
        for g in info.get("gpus") or []:
            total = g.get("total_mb") or 0
            if total:
                self._s(f"gpu{g.get('index')}.vram").add(100.0 * (g.get("used_mb") or 0) / total)
            if g.get("utilization_percent") is not None:
                self._s(f"gpu{g.get('index')}.util").add(g["utilization_percent"])

    def now(self, name: str) -> float | None:
        """The newest sample of a figure, None before there is one."""
        vals = self.values(name, 1)
        return vals[-1] if vals else None


def machine_lines(h: SystemHistory, width: int) -> Text:
    """CPU, memory, disk, disk I/O and network: the figure now and a sparkline of the last minutes beside it."""
    info = h.last
    cpu = info.get("cpu", {})
    mem = info.get("memory", {})
    disk = info.get("disk", {})
    load = cpu.get("load_average") or []
    spark_w = max(8, width - LABEL - 34)

    def row(label: str, now: str, series: str, style: str, hi: float | None = None) -> Text:
        t = Text(f"{label:<{LABEL}}", style="bold")
        t.append(f"{now[:32]:<32} ")  # a fixed width, so the sparklines line up and never wrap
        t.append(charts.spark(h.values(series, spark_w), spark_w, hi), style=style)
        return t

    disk_pct = disk.get("percent")
    lines = [
        row("CPU", f"{fmt.percent(cpu.get('percent'))} of {cpu.get('logical_cores', '?')} cores · load "
            + (f"{load[0]:.1f}" if load else "-"), "cpu", "green", 100.0),
        row("Memory", f"{fmt.percent(mem.get('percent'))} · {fmt.size_mb(mem.get('used_mb'))} of {fmt.size_mb(mem.get('total_mb'))}",
            "mem", "magenta", 100.0),
        row("Disk read", fmt.rate(h.now("read_bytes")), "read_bytes", "cyan"),
        row("Disk write", fmt.rate(h.now("write_bytes")), "write_bytes", "blue"),
        row("Net receive", fmt.rate(h.now("bytes_recv")), "bytes_recv", "cyan"),
        row("Net send", fmt.rate(h.now("bytes_sent")), "bytes_sent", "blue"),
    ]
    models_disk = Text(f"{'Models disk':<{LABEL}}", style="bold")
    models_disk.append(f"{fmt.bar(None if disk_pct is None else disk_pct / 100, 10)} {fmt.size_gb(disk.get('free_gb'))} free of "
                       f"{fmt.size_gb(disk.get('total_gb'))} ({fmt.percent(disk_pct)} used)")
    lines.append(models_disk)
    span = Text(f"{'':<{LABEL}}{'':<32} last {fmt.duration(min(h.samples, spark_w) * SAMPLE_S)}, one bar per {SAMPLE_S:g} s",
                style="dim")
    lines.append(span)
    return Text("\n").join(lines)


class SystemPane(Pane):
    """The machine the models run on, and how busy it has been over the last minutes."""

    TITLE = "System"
    DEFAULT_CSS = """
    SystemPane #system-machine { height: auto; padding: 0 1; }
    """
    REQUIRES = ("system.info",)
    RESYNC_S = 30.0

    def body(self) -> ComposeResult:
        self.history = SystemHistory()
        """Every figure over the last minutes."""
        yield Static("", classes="body", id="system-machine")
        self.table = LiveTable(COLUMNS, id="system-gpus", classes="body")
        yield self.table
        yield Static("", classes="detail body", id="system-gpu-note")

    def on_mount(self) -> None:
        self.sampler = self.set_interval(SAMPLE_S, self._tick)
        """The once-a-second system.info sampler (snapshot tests pause it to draw canned samples)."""

    def on_resize(self) -> None:
        if self.history.samples:  # draw the history at the new width now, not at the next sample
            self.query_one("#system-machine", Static).update(machine_lines(self.history, (self.size.width or 80) - 2))

    def _tick(self) -> None:
        if self.mavail.link.connected and "system.info" in self.mavail.link.methods:
            self.run_worker(self._sample, group="system-sample", exclusive=True, exit_on_error=False)

    async def _sample(self) -> None:
        try:
            await self.fetch()
        except (RpcError, CallTimeout, EngineUnavailable):
            pass

    async def fetch(self) -> None:
        info = await self.mavail.link.call("system.info")
        self.history.add(info)
        self.loaded = True
        self.query_one("#system-machine", Static).update(machine_lines(self.history, (self.size.width or 80) - 2))
        gpus = info.get("gpus") or []
        assert self.table is not None
        self.table.sync({str(g.get("index")): (gpu_cells(g, self.history.values(f"gpu{g.get('index')}.vram", TREND),
                                                        self.history.values(f"gpu{g.get('index')}.util", TREND)), g) for g in gpus})
        self.table.display = bool(gpus)
        self.query_one("#system-gpu-note", Static).update(gpu_note(info))

    def selected_model(self) -> str | None:
        return None
