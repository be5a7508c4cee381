"""The figures `/metrics` serves: what the metrics read (`MetricsPorts`) and one consistent snapshot of it (`Snapshot`).

Threads. The HTTP listener answers in prometheus_client's own threads, while
every part of the engine it reads (the status board, downloads, the queue,
leases) lives on the event loop and is not safe to read from another thread.
So a scrape asks the loop for a snapshot: `take_snapshot` runs there as one
callback (in-memory reads only, no await, no I/O: 1.6 ms for a thousand
models, measured in docs/metrics.md) and hands back frozen values, which the listener's thread
then turns into metric families. The loop never waits on the listener. What
is safe to read from any thread is read there instead: the tally of counts
(`core.tally`, guarded by its lock) and the disk's free space (a statvfs, kept
off the loop because a network file system can be slow to answer it).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from mavail.core.ports import CatalogView, Settings, StatusView
from mavail.core.status import AVAILABILITY
from mavail.core.tally import Tally
from mavail.core.timeutil import Clock

__all__ = ["AVAILABILITY", "DOWNLOAD_STATES", "LeaseCounts", "MetricsPorts", "ModelFigure", "Snapshot", "Waiting", "take_snapshot"]

MIB = 1024 * 1024
GIB = 1024 * MIB
DOWNLOAD_STATES = ("queued", "downloading", "verifying", "paused", "failed")
"""The states of a live download (those `downloads.active` lists), each served from 0."""


class LeaseCounts(Protocol):
    """The leases held now (`LeaseManager`)."""

    def count(self) -> int:
        """Live leases on every model together."""

    def leases_for(self, model_id: str) -> Sequence[Any]:
        """The model's live leases."""


class Waiting(Protocol):
    """A request waiting in the queue (`QueuedRequest`)."""

    created_at: float


@dataclass(frozen=True)
class MetricsPorts:
    """What the metrics read, passed in by the composition root; every callable is read-only and is called on the loop.

    `active_downloads` gives the progress objects of `downloads.active` (status, total_bytes, downloaded_bytes,
    speed_mbps), `waiting` the queued requests, `bytes_on_disk` the installed catalog files' bytes (presence),
    `models_dir` the folder whose file system's free space is served, `retry_reasons` the reasons a retry can
    have (each is served from 0, so a rate over it starts at once)."""

    settings: Settings
    clock: Clock
    catalog: CatalogView
    status: StatusView
    leases: LeaseCounts
    active_downloads: Callable[[], Sequence[Mapping[str, Any]]]
    waiting: Callable[[], Sequence[Waiting]]
    bytes_on_disk: Callable[[], int]
    tally: Tally
    models_dir: Path
    version: str
    started_at: float
    retry_reasons: Sequence[str] = ()


@dataclass(frozen=True)
class ModelFigure:
    """One model's figures, served with a model_id label while the catalog is small."""

    model_id: str
    status: str
    size_bytes: int
    corrupted: bool
    leases: int


@dataclass(frozen=True)
class Snapshot:
    """Every loop-side figure, read at one moment on the event loop."""

    taken_at: float
    models_total: int
    by_status: dict[str, int]
    corrupted: int
    models: list[ModelFigure] | None  # None: the catalog is over metrics.per_model_max (no model_id labels)
    downloads_by_state: dict[str, int]
    download_rate_bytes_per_s: float
    download_remaining_bytes: int
    queue_length: int
    queue_oldest_wait_s: float
    leases: int
    used_bytes: int
    min_free_bytes: float
    max_bytes: float
    per_model_max: int


def take_snapshot(ports: MetricsPorts) -> Snapshot:
    """Read every loop-side figure at once; call it on the event loop (it awaits nothing and touches no file)."""
    ids = ports.catalog.ids()
    per_model_max = int(ports.settings.get("metrics.per_model_max"))
    with_models = len(ids) <= per_model_max
    by_status: Counter[str] = Counter()
    corrupted = 0
    models: list[ModelFigure] = []
    for mid in ids:
        st = ports.status.model_status(mid)
        status = st["availability_status"]
        by_status[status] += 1
        damaged = bool(st.get("corruption_detected")) or status == "corrupted"
        corrupted += damaged
        if with_models:
            models.append(ModelFigure(mid, status, int(st.get("size_bytes") or 0), damaged, len(ports.leases.leases_for(mid))))
    states: Counter[str] = Counter()
    rate = 0.0
    remaining = 0
    for p in ports.active_downloads():
        states[p["status"]] += 1
        if p["status"] == "downloading":
            rate += float(p.get("speed_mbps") or 0.0) * MIB
        remaining += max(0, int(p.get("total_bytes") or 0) - int(p.get("downloaded_bytes") or 0))
    now = ports.clock.time()
    waiting = ports.waiting()
    oldest = min((w.created_at for w in waiting), default=None)
    return Snapshot(
        taken_at=now, models_total=len(ids), by_status={s: by_status.get(s, 0) for s in AVAILABILITY} | dict(by_status),
        corrupted=corrupted, models=models if with_models else None,
        downloads_by_state={s: states.get(s, 0) for s in DOWNLOAD_STATES} | dict(states),
        download_rate_bytes_per_s=rate, download_remaining_bytes=remaining,
        queue_length=len(waiting), queue_oldest_wait_s=max(0.0, now - oldest) if oldest is not None else 0.0,
        leases=ports.leases.count(), used_bytes=ports.bytes_on_disk(),
        min_free_bytes=float(ports.settings.get("storage.min_free_gb")) * GIB, max_bytes=float(ports.settings.get("storage.max_gb")) * GIB,
        per_model_max=per_model_max)
