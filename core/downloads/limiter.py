"""Bandwidth limits: a token bucket whose rate is read at every use, so changes apply at once."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Callable

MIB = 1024 * 1024


class RateLimiter:
    """Paces bytes to `rate()` bytes/s (0 or less = unlimited), first come first served.

    Callers `await take(n)` after receiving n bytes. Reservations are granted in
    arrival order, so connections that share a limiter (the ranges of one file,
    or all downloads under the global cap) get equal shares as long as they
    take in similar chunk sizes. A short burst (`burst_s` of credit) absorbs
    scheduling jitter without letting an idle period bank a large credit.
    """

    def __init__(self, rate: Callable[[], float], burst_s: float = 0.05, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst_s = burst_s
        self._clock = clock
        self._next = clock()
        self._last_rate = 0.0
        self._lock = threading.Lock()  # byte threads and the event loop reserve from the same bucket

    def active(self) -> bool:
        """Whether a limit is set right now."""
        return self.rate() > 0

    def reserve(self, n: int) -> float:
        """Reserve `n` bytes; the seconds the caller must wait before using them (0 when within the rate). Thread-safe."""
        rate = self.rate()
        with self._lock:
            now = self._clock()
            if rate <= 0:
                self._next = now
                self._last_rate = 0.0
                return 0.0
            if rate != self._last_rate:
                # a new rate: forget reservations made under the old one
                self._next = min(max(self._next, now - self.burst_s), now + 0.25)
                self._last_rate = rate
            start = max(self._next, now - self.burst_s)
            self._next = start + n / rate
            return max(0.0, self._next - now - self.burst_s)

    async def take(self, n: int) -> None:
        """Wait until `n` more bytes fit within the rate."""
        delay = self.reserve(n)
        if delay > 0:
            await asyncio.sleep(delay)


async def take_all(limiters: list[RateLimiter], n: int) -> None:
    """Take `n` bytes from each active limiter in turn (per download, then global)."""
    for lim in limiters:
        if lim.active():
            await lim.take(n)
