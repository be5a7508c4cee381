"""Counts of what happened while the engine ran: bytes received, retries made, checks run, repair bytes.

Services add to a `Tally` at the moment a thing happens (a download's byte
threads add the bytes each read delivers), so every count follows real events
and never goes down while the engine runs; it starts from zero with each
engine, as a Prometheus counter does after a restart. It is safe to add from
any thread and to read from any thread: one lock guards every count, held only
for a dictionary update or a copy.
"""

from __future__ import annotations

import threading

__all__ = ["Counts", "Tally"]

Counts = dict[str, dict[tuple[str, ...], float]]
"""A copy of a tally: {count name: {label values: count}}."""


class Tally:
    """Named counts, each split by a tuple of label values (a model id, a reason); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counts = {}

    def add(self, name: str, labels: tuple[str, ...] = (), n: float = 1) -> None:
        """Add `n` (at least 0) to the count `name` for `labels`."""
        if n < 0:
            raise ValueError(f"{name}: a count only grows (got {n})")
        with self._lock:
            by_labels = self._counts.get(name)
            if by_labels is None:
                by_labels = self._counts[name] = {}
            by_labels[labels] = by_labels.get(labels, 0) + n

    def get(self, name: str, labels: tuple[str, ...] = ()) -> float:
        """The count `name` for `labels` (0 when nothing was added)."""
        with self._lock:
            return self._counts.get(name, {}).get(labels, 0)

    def snapshot(self) -> Counts:
        """A copy of every count, taken at one moment."""
        with self._lock:
            return {name: dict(by_labels) for name, by_labels in self._counts.items()}
