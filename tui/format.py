"""Formatting of engine figures for narrow terminal cells: sizes, rates, durations, bars, sparklines."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

MIB = 1024 * 1024
BLOCKS = "▁▂▃▄▅▆▇█"


def size(num_bytes: float | None) -> str:
    """`1.5G`, `230M`, `12K`, `-` for None."""
    if num_bytes is None:
        return "-"
    n = float(num_bytes)
    for unit, div in (("T", 1024**4), ("G", 1024**3), ("M", MIB), ("K", 1024)):
        if n >= div:
            v = n / div
            return f"{v:.1f}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{n:.0f}B"


def size_mb(mb: float | None) -> str:
    """A size given in MiB."""
    return "-" if mb is None else size(mb * MIB)


def size_gb(gb: float | None) -> str:
    """A size given in GiB."""
    return "-" if gb is None else size(gb * 1024**3)


def rate(mbps: float | None) -> str:
    """A rate in MiB/s: `12.5M/s`."""
    if mbps is None:
        return "-"
    return f"{size(mbps * MIB)}/s" if mbps > 0 else "0B/s"


def duration(seconds: float | None) -> str:
    """`45s`, `3m05s`, `2h10m`, `-`."""
    if seconds is None:
        return "-"
    s = int(round(float(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def bar(fraction: float | None, width: int = 10) -> str:
    """A text progress bar: `██████░░░░`."""
    if fraction is None:
        return "·" * width
    f = min(1.0, max(0.0, float(fraction)))
    full = int(f * width)
    return "█" * full + "░" * (width - full)


def percent(value: float | None) -> str:
    """`45%` from a percentage (0-100)."""
    return "-" if value is None else f"{float(value):.0f}%"


def score(value: float | None) -> str:
    """A 0..1 score as `0.97`."""
    return "-" if value is None else f"{float(value):.2f}"


def coarse(seconds: float) -> str:
    """A duration in its largest unit only: `45s`, `3m`, `2h`, `5d`."""
    s = int(max(0, seconds))
    for unit, div in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= div:
            return f"{s // div}{unit}"
    return f"{s}s"


def ago(ts: str | None, now: datetime | None = None, short: bool = False) -> str:
    """An ISO-8601 time as `5m ago` (`short`: in its largest unit only, `12h ago`), `never` for None."""
    if not ts:
        return "never"
    try:
        t = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return ts[:16]
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    delta = ((now or datetime.now(timezone.utc)) - t).total_seconds()
    if delta < 1:
        return "now"
    return f"{coarse(delta) if short else duration(delta)} ago"


def sparkline(values: list[float]) -> str:
    """Values as a one-line block sparkline."""
    if not values:
        return ""
    hi = max(values)
    if hi <= 0:
        return BLOCKS[0] * len(values)
    return "".join(BLOCKS[min(len(BLOCKS) - 1, int(v / hi * (len(BLOCKS) - 1) + 0.5))] for v in values)


def yes(flag: Any) -> str:
    """`yes` / empty."""
    return "yes" if flag else ""
