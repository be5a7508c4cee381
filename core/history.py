"""HistoryEntry: one finished download, health check or repair, as `history.list` reports it.

The services that own the tables (downloads: core.downloads.manager; checks and
repairs: core.health.service) read their own rows into these records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from mavail.core.timeutil import iso

KINDS = ("download", "check", "repair")


@dataclass(frozen=True)
class HistoryEntry:
    """What happened to a model, when, for how long, how many bytes, and why it ended as it did."""

    kind: str  # download | check | repair
    id: str
    model_id: str
    version: str
    status: str  # completed | failed | cancelled | interrupted | running
    started_at: float
    finished_at: float | None
    bytes: int | None  # downloaded (the model's size), hashed, or fetched again by a repair
    detail: str | None  # the error, the check's verdict, the repair's actions
    what: str | None = None  # the check or repair type, or None

    def to_dict(self) -> dict[str, Any]:
        """The entry on the wire: ISO times and the duration in seconds."""
        duration = None if self.finished_at is None else max(0.0, round(self.finished_at - self.started_at, 3))
        return {"kind": self.kind, "id": self.id, "model_id": self.model_id, "version": self.version, "status": self.status,
                "type": self.what, "started_at": iso(self.started_at), "finished_at": iso(self.finished_at), "duration_s": duration,
                "bytes": self.bytes, "detail": self.detail}


def newest_first(entries: Iterable[HistoryEntry], limit: int) -> list[HistoryEntry]:
    """The `limit` most recent entries, the newest (by its end, else its start) first."""
    return sorted(entries, key=lambda e: (e.finished_at or e.started_at, e.id), reverse=True)[:limit]
