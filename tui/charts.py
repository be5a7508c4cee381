"""Small charts in text cells: a sampled series, a one-line sparkline, a block chart with a limit line, a share bar."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from rich.text import Text

BLOCKS = " ▁▂▃▄▅▆▇█"
LIMIT_STYLE = "yellow"


@dataclass
class Series:
    """The last `size` samples of one figure, oldest first."""

    size: int = 120
    values: deque[float] = field(default_factory=deque)

    def add(self, value: float) -> None:
        """Append a sample, dropping the oldest beyond `size`."""
        self.values.append(max(0.0, float(value)))
        while len(self.values) > self.size:
            self.values.popleft()

    def last(self, n: int) -> list[float]:
        """The newest `n` samples, oldest first."""
        vals = list(self.values)
        return vals[-n:] if n > 0 else []


@dataclass
class ByteRate:
    """Bytes per second from a growing counter read now and then (a counter that goes back restarts the rate)."""

    last_bytes: int | None = None
    last_t: float | None = None

    def update(self, counter: int | None, t: float) -> float | None:
        """The rate since the previous reading, or None for the first (or a reset) one."""
        if counter is None:
            self.last_bytes = self.last_t = None
            return None
        prev_b, prev_t = self.last_bytes, self.last_t
        self.last_bytes, self.last_t = counter, t
        if prev_b is None or prev_t is None or t <= prev_t or counter < prev_b:
            return None
        return (counter - prev_b) / (t - prev_t)


def spark(values: Sequence[float], width: int, hi: float | None = None) -> str:
    """The newest `width` values as one line of blocks, right-aligned (blank where there is no sample yet)."""
    vals = list(values)[-width:] if width > 0 else []
    top = hi if hi is not None else max(vals, default=0.0)
    cells = []
    for v in vals:
        if top <= 0 or v <= 0:
            cells.append("▁" if top > 0 or v == 0 else " ")
        else:
            cells.append(BLOCKS[max(1, min(8, int(round(v / top * 8))))])
    return " " * (width - len(cells)) + "".join(cells)


def columns(values: Sequence[float], hi: float | None = None) -> str:
    """One block per value (every value shown, none merged): `▁▃█`."""
    return spark(values, len(values), hi)


def block_chart(values: Sequence[float], width: int, height: int, limit: float | None = None,
                style: str = "cyan") -> list[Text]:
    """`height` lines of vertical bars (eighth blocks) over the newest `width` values, scaled to the peak or the limit;
    a set limit is drawn as a dashed line at its level."""
    vals = list(values)[-width:] if width > 0 else []
    vals = [0.0] * (width - len(vals)) + vals
    top = max(max(vals, default=0.0), limit or 0.0)
    limit_row = None
    if limit and top > 0:
        limit_row = min(height - 1, max(0, int(limit / top * height - 1e-9)))  # the row the limit falls in, from the bottom
    lines = []
    for row in range(height - 1, -1, -1):
        line = Text()
        for v in vals:
            eighths = 0 if top <= 0 else v / top * height * 8
            fill = max(0.0, min(8.0, eighths - row * 8))
            ch = BLOCKS[int(round(fill))] if fill > 0 else " "
            if ch == " " and row == limit_row:
                line.append("╌", style=LIMIT_STYLE)
            else:
                line.append(ch, style=style)
        lines.append(line)
    return lines


def share_bar(parts: Iterable[tuple[float, str]], total: float, width: int, empty: str = "░") -> Text:
    """One bar of `width` cells split by parts (amount, style) of `total`; the rest is `empty`."""
    text = Text()
    used = 0
    acc = 0.0
    for amount, style in parts:
        if total <= 0:
            break
        acc += max(0.0, amount)
        end = min(width, int(round(acc / total * width)))
        if end > used:
            text.append("█" * (end - used), style=style)
            used = end
    if used < width:
        text.append(empty * (width - used), style="dim")
    return text
