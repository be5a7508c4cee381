"""Time helpers: an injectable clock and ISO-8601 UTC formatting."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    """Where the engine reads time; tests inject their own."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch."""

    def monotonic(self) -> float:
        """Monotonic seconds, for rates and timeouts."""


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()


def iso(ts: float | None) -> str | None:
    """Format epoch seconds as ISO-8601 UTC (`2026-01-01T12:00:00Z`), None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_now() -> str:
    """The current time as ISO-8601 UTC."""
    return iso(time.time())  # type: ignore[return-value]


def parse_iso(text: str) -> float:
    """Parse an ISO-8601 date or date-time (naive = UTC) into epoch seconds; ValueError if malformed."""
    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    dt = datetime.fromisoformat(t)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


async def wait_event(event: "asyncio.Event", timeout: float) -> bool:
    """Wait for `event` at most `timeout` seconds; True if it was set.

    Loops that are cancelled at shutdown must use this rather than
    `asyncio.wait_for(event.wait(), t)`: on Python 3.11 wait_for can swallow a
    cancellation that arrives as the event fires, and the loop then never ends.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False


def days_text(days: float) -> str:
    """A span of days in words: `less than a day`, `1 day`, `12 days` (whole days, rounded down)."""
    whole = int(max(0.0, days))
    if whole == 0:
        return "less than a day"
    return "1 day" if whole == 1 else f"{whole} days"
