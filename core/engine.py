"""The engine: the composition root that builds every part for one home, wires them and runs them.

It builds, in order: the database, events, tasks, the tally of counts, the
live catalog, presence, activity and leases, the status board, then the
services (health, downloads, fallback, queue, analytics, storage) and the
metrics listener, which reads them through `MetricsPorts`. It starts them in dependency order and
stops them in reverse. Parts can be given to the constructor (`Parts`), which
is how tests put a fake in place of a service.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable

from mavail.core import __version__
from mavail.core.activity import Activity
from mavail.core.analytics import Analytics
from mavail.core.catalog import LiveCatalog
from mavail.core.config import Config
from mavail.core.downloads import DownloadManager
from mavail.core.downloads.during_generation import GenerationGate
from mavail.core.downloads.transfer import fetch_range
from mavail.core.events import EventBus
from mavail.core.fallback.queue import RequestQueue
from mavail.core.fallback.service import FallbackDeps, FallbackService
from mavail.core.health import HealthChecks, HealthService, UpdateManager
from mavail.core.leases import Lease, LeaseManager, acquire_available
from mavail.core.downloads.reasons import RETRY_REASONS
from mavail.core.metrics.figures import MetricsPorts
from mavail.core.metrics.service import MetricsService
from mavail.core.paths import HomeLayout
from mavail.core.presence import Presence
from mavail.core.session import Session
from mavail.core.state import Database
from mavail.core.status import AVAILABILITY, SORT_KEYS, StatusBoard
from mavail.core.storage import StorageManager
from mavail.core.store import SharedStore, StoreService
from mavail.core.sysinfo import Nvml, system_info
from mavail.core.tally import Tally
from mavail.core.tasks import Tasks
from mavail.core.timeutil import Clock, SystemClock

__all__ = ["AVAILABILITY", "SORT_KEYS", "Engine", "Parts", "health_ports", "update_ports"]

log = logging.getLogger("mavail.engine")


@dataclass
class Parts:
    """Parts to use instead of the ones the engine would build (tests inject fakes here); None builds the default."""

    presence: Callable[["Engine"], Any] | None = None
    downloads: Callable[["Engine"], Any] | None = None
    health: Callable[["Engine"], Any] | None = None
    updates: Callable[["Engine"], Any] | None = None
    fallback: Callable[["Engine"], Any] | None = None
    queue: Callable[["Engine"], Any] | None = None
    analytics: Callable[["Engine"], Any] | None = None
    storage: Callable[["Engine"], Any] | None = None


def _common_ports(engine: "Engine") -> dict[str, Any]:
    return {"settings": engine.config, "clock": engine.clock, "db": engine.db, "layout": engine.layout, "catalog": engine.catalog,
            "presence": engine.presence, "status": engine.status.changed, "emit": engine.events.emit, "tasks": engine.tasks,
            "leases": engine.leases, "activity": engine.activity, "checks": engine.checks}


def health_ports(engine: "Engine") -> dict[str, Any]:
    """The keyword arguments of `HealthService` for this engine (tests override one and build it through `Parts`)."""
    return {**_common_ports(engine), "tally": engine.tally,
            "generation_samples": lambda model_id, limit: engine.analytics.generation_samples(model_id, limit),
            "is_updating": lambda model_id: engine.updates.is_updating(model_id),
            "add_download_listener": lambda callback: engine.downloads.add_listener(callback),
            "fetch_range": _with_hub_token(engine)}


def _with_hub_token(engine: "Engine") -> Any:
    """`fetch_range` for repairs, sending the Hub token (the downloads' `hub.headers`) when every URL is on the Hub's
    own origin; the client strips it on the redirect to the storage host."""
    async def fetch(client: Any, urls: Any, start: int, length: int, **kw: Any) -> bytes:
        hub = getattr(engine.downloads, "hub", None)
        if hub is not None and "headers" not in kw and urls:
            await hub.refresh()
            found = [hub.headers(u) for u in urls]
            if all(found):
                kw["headers"] = found[0]
        return await fetch_range(client, urls, start, length, **kw)

    return fetch


def update_ports(engine: "Engine") -> dict[str, Any]:
    """The keyword arguments of `UpdateManager` for this engine."""
    return {**_common_ports(engine),
            "ensure_download": lambda model_id: engine.downloads.ensure(model_id),
            "download_active": lambda model_id: engine.downloads.is_active(model_id),
            "add_download_listener": lambda callback: engine.downloads.add_listener(callback),
            "forget_health": lambda model_id: engine.health.forget(model_id),
            "hub_moves": lambda current: _hub_moves(engine, current)}


async def _hub_moves(engine: "Engine", current: dict[str, str]) -> list[Any]:
    """The downloads' answer to "which hf:// branches moved" (nothing from a downloads part that cannot tell)."""
    ask = getattr(engine.downloads, "hub_branch_moves", None)
    return await ask(current) if ask is not None else []


class Engine:
    """One engine per home. Use as `async with Engine(...) as engine:`; stopping it stops every part."""

    def __init__(self, layout: HomeLayout, config: Config, clock: Clock | None = None, nvml: Nvml | None = None,
                 parts: Parts | None = None, status_cache: bool = True) -> None:
        """`status_cache` keeps composed statuses until a service reports a change (see `core.status`)."""
        parts = parts or Parts()
        self.layout = layout
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.nvml = nvml or Nvml()
        self.version = __version__
        self.started_at = self.clock.time()
        self.shutdown_requested = asyncio.Event()
        self.db = Database(layout.state_db)
        self.events = EventBus(level=lambda: str(config.get("events.notification_level")))
        self.tasks = Tasks()
        self.tally = Tally()
        self.catalog = LiveCatalog(layout.catalog_file, layout.catalog_dir)
        self.presence = parts.presence(self) if parts.presence else self.build_presence()
        self.status = StatusBoard(layout, self.catalog, self.presence, self.events.emit, cache=status_cache)
        self.activity = Activity(self.status.changed)
        # with store.shared, models/ is shared with other engines: locks, partial data and leases live on it
        self.store = SharedStore(layout.home, layout.models_dir, self.clock.time, lambda: float(config.get("store.lock_stale_s"))) \
            if config.get("store.shared") else None
        self.store_service = StoreService(self.store, lambda mid: self.leases.leases_for(mid)) if self.store else None
        svc = self.store_service
        self.leases = LeaseManager(self.clock, self._leases_changed, elsewhere=svc.reasons if svc else None,
                                   refresh_elsewhere=svc.refresh if svc else None)
        self.checks = HealthChecks(self.db, self.catalog, layout, config)
        self.health = (parts.health or (lambda e: HealthService(**health_ports(e))))(self)
        self.updates = (parts.updates or (lambda e: UpdateManager(**update_ports(e))))(self)
        self.downloads = parts.downloads(self) if parts.downloads else DownloadManager(
            settings=config, clock=self.clock, db=self.db, layout=layout, catalog=self.catalog, presence=self.presence,
            status_changed=self.status.changed, emit=self.events.emit, tasks=self.tasks, leases=self.leases, activity=self.activity,
            tally=self.tally, store=self.store)
        # a stand-in for the download manager (tests, through Parts) may not restrain: the gate then does nothing
        self.generation_gate = GenerationGate(config, self.leases.count, getattr(self.downloads, "restrain", lambda hold, cap: None))
        self.fallback = parts.fallback(self) if parts.fallback else self.build_fallback()
        self.queue = parts.queue(self) if parts.queue else self.build_queue()
        self.downloads.add_listener(self.queue.on_download_status)
        self.analytics = parts.analytics(self) if parts.analytics else self.build_analytics()
        self.storage = parts.storage(self) if parts.storage else self.build_storage()
        self.downloads.add_listener(self.storage.on_download)
        self.status.set_providers([self.health, self.downloads, self.leases, self.activity, self.queue, self.analytics])
        self.metrics = self.build_metrics()
        config.on_change(lambda changed: self.events.emit("config_changed", changed=changed))

    def _leases_changed(self, model_ids: Any) -> None:
        """The leases' status sink: the models' statuses changed, and downloads may give way to (or follow) a generation."""
        self.status.changed(model_ids)
        if self.store_service is not None:
            self.store_service.leases_changed(model_ids)
        gate = getattr(self, "generation_gate", None)  # none yet while the parts are being built
        if gate is not None:
            gate.leases_changed()

    # --- construction of the parts with ports ---------------------------------------
    def build_presence(self, cls: type[Presence] = Presence) -> Presence:
        """The presence part over this engine's home (`cls`: a subclass, for tests through `Parts`)."""
        return cls(self.layout, self.catalog, self.db, on_scanned=lambda ids: self.status.changed(ids))

    def build_analytics(self) -> Analytics:
        """The usage service over this engine's parts."""
        return Analytics(settings=self.config, clock=self.clock, db=self.db, catalog=self.catalog, presence=self.presence,
                         status=self.status, status_sink=self.status.changed, tasks=self.tasks)

    def build_storage(self, fault: Callable[[str], None] | None = None) -> StorageManager:
        """The storage service over this engine's parts; `fault` (tests, through `Parts`) is called at each cleanup stage."""
        return StorageManager(
            settings=self.config, clock=self.clock, db=self.db, layout=self.layout, catalog=self.catalog, presence=self.presence,
            tasks=self.tasks, leases=self.leases, activity=self.activity, emit=self.events.emit, usage_of=self.analytics.activity_of,
            usage_frequency=self.analytics.usage_frequency, uses_since=self.analytics.uses_since, downloading=self.downloads.is_active,
            has_waiting=self.queue.has_waiting, forget_health=lambda model_id: self.health.forget(model_id), fault=fault,
            store=self.store)

    def build_metrics(self) -> MetricsService:
        """The metrics listener over read-only views of this engine's parts (it serves only when metrics.listen is set)."""
        ports = MetricsPorts(settings=self.config, clock=self.clock, catalog=self.catalog, status=self.status, leases=self.leases,
                             active_downloads=lambda: self.downloads.active().items, waiting=self.queue.ordered,
                             bytes_on_disk=self.presence.bytes_on_disk, tally=self.tally, models_dir=self.layout.models_dir,
                             version=self.version, started_at=self.started_at, retry_reasons=RETRY_REASONS)
        return MetricsService(ports, self.tasks)

    def build_fallback(self) -> FallbackService:
        """The fallback service over this engine's parts."""
        deps = FallbackDeps(
            estimate_ready_seconds=lambda mid: self.downloads.estimate_ready_seconds(mid),
            download_active=lambda mid: self.downloads.is_active(mid),
            ensure_download=lambda mid, priority: self.downloads.ensure(mid, priority=priority),
            repair=self._repair_for_fallback,
            repair_busy=lambda mid: self.health.is_busy(mid),
            usage_summary=lambda mid: self.analytics.summary_of(mid),
            record_request=lambda mid: self.analytics.record_request(mid),
            free_vram_gb=self.nvml.free_vram_gb,
        )
        return FallbackService(settings=self.config, clock=self.clock, catalog=self.catalog, presence=self.presence,
                               status=self.status, tasks=self.tasks, emit=self.events.emit, deps=deps)

    async def _repair_for_fallback(self, model_id: str) -> dict[str, Any]:
        return (await self.health.repair(model_id)).to_dict()

    def build_queue(self, cls: type[RequestQueue] = RequestQueue) -> RequestQueue:
        """The request queue over this engine's parts (`cls`: a subclass, for tests through `Parts`)."""
        return cls(settings=self.config, clock=self.clock, db=self.db, catalog=self.catalog, presence=self.presence,
                   status=self.status, status_sink=self.status.changed, events=self.events, tasks=self.tasks,
                   ensure_download=lambda mid, priority: self.downloads.ensure(mid, priority=priority),
                   eta=lambda mid: self.fallback.eta(mid))

    # --- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> "Engine":
        self.layout.ensure()
        applied = await self.db.open()
        if applied:
            log.info("database migrations applied: %s", ", ".join(applied))
        await asyncio.to_thread(self.catalog.load_at_start)
        if self.catalog.error:
            log.error("catalog refused at start: %s", self.catalog.error)
        await self.presence.refresh()
        if self.store_service is not None:
            await self.store_service.start(self.tasks.spawn, self.tasks.on_stop)
        await self.downloads.start_service()
        await self.updates.start()  # before health's first check: it finishes removals and forgets versions gone
        await self.health.start()
        await self.analytics.start()
        await self.storage.start()
        self.tasks.spawn(self.presence.rescan_loop(), name="presence-rescan")
        await self.queue.start()  # it may ask the other services (downloads) for models
        try:
            await self.metrics.start()  # last: it reads every other part
        except BaseException:
            await self.__aexit__(None, None, None)  # the address was refused: stop what started
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.tasks.stop()
        await asyncio.to_thread(self.db.close)

    async def reload_catalog(self) -> tuple[list[str], list[str]]:
        """Load the catalog files again, swapped in only if all are valid (CatalogError otherwise); (added, removed) ids."""
        added, removed = await asyncio.to_thread(self.catalog.reload)
        self.status.changed(None)  # the new entries show at once, before the rescan below finishes
        await self.presence.refresh()
        log.info("catalog reloaded: %d models (%d added, %d removed)", len(self.catalog), len(added), len(removed))
        return added, removed

    async def acquire_model(self, session: Session, model_id: str) -> tuple[Lease, dict[str, Any]]:
        """`models.acquire`: see `core.leases.acquire_available`."""
        return await acquire_available(self.leases, session, model_id, self.presence.refresh, self.status.model_status)

    async def system_info(self) -> dict[str, Any]:
        """CPU, memory, disk and GPUs, read in a worker thread."""
        return await asyncio.to_thread(system_info, self.layout.models_dir, self.nvml)
