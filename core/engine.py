"""The engine: owns a home directory and wires catalog, config, state, events and services together."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from mavail.core import __version__
from mavail.core.catalog import Catalog, FileSpec, load_catalog, version_key
from mavail.core.config import Config
from mavail.core.downloads import DownloadManager
from mavail.core.errors import InvalidParams, InvalidState, ModelNotFound
from mavail.core.events import EventBus
from mavail.core.activity import Activity
from mavail.core.fallback.queue import RequestQueue
from mavail.core.fallback.service import FallbackService
from mavail.core.health import HealthService
from mavail.core.analytics import Analytics
from mavail.core.leases import Lease, LeaseManager
from mavail.core.inventory import ModelPresence, VerifiedIndex, scan_model
from mavail.core.paths import HomeLayout
from mavail.core.session import Session
from mavail.core.state import Database
from mavail.core.storage import StorageManager
from mavail.core.sysinfo import Nvml, system_info
from mavail.core.timeutil import Clock, SystemClock, iso

log = logging.getLogger("mavail.engine")

MIB = 1024 * 1024
GIB = 1024 * MIB
AVAILABILITY = ("available", "downloading", "queued", "paused", "missing", "corrupted", "updating", "failed", "unknown")
SORT_KEYS = ("model_id", "size_mb", "availability_status", "last_used", "usage_frequency", "display_name")


class StatusProvider(Protocol):
    """A service that adds fields to a model's status (downloads, health, usage, leases).

    `model_fields` is called on the event loop for every status and list call,
    so it must answer from memory in microseconds. A returned
    `availability_status` overrides the presence-based one; the first provider
    (in registration order) that gives one wins.
    """

    def model_fields(self, model_id: str) -> dict[str, Any]:
        """Fields to merge into the model's status."""


@dataclass
class _Snapshot:
    """The in-memory picture of the models directory, refreshed off the loop."""

    presence: dict[str, ModelPresence] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # model_id -> version in use


class Engine:
    """One engine per home: the object every RPC handler talks to.

    Use as `async with Engine(...) as engine:`; background work runs in tasks
    the engine owns and cancels on exit.
    """

    def __init__(self, layout: HomeLayout, config: Config, clock: Clock | None = None, nvml: Nvml | None = None) -> None:
        self.layout = layout
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.nvml = nvml or Nvml()
        self.db = Database(layout.state_db)
        self.events = EventBus()
        self.catalog = Catalog(models={})
        self.catalog_error: str | None = None
        self.started_at = self.clock.time()
        self.version = __version__
        self._snap = _Snapshot()
        self._providers: list[StatusProvider] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping: list[Callable[[], Awaitable[None]]] = []
        self._last_status: dict[str, str] = {}
        self._sorted_ids: tuple[Catalog | None, list[str]] = (None, [])
        self._status_cache: dict[str, tuple[Any, ModelPresence | None, dict[str, Any]]] = {}
        self.shutdown_requested = asyncio.Event()
        self.activity = Activity()
        self.leases = LeaseManager(self.clock)
        self.add_status_provider(self.leases)
        # health before downloads: during an update (downloading beside a version still in use) its "updating" wins
        self.health = HealthService(self)
        self.downloads = DownloadManager(self)
        self.add_status_provider(self.downloads)
        self.fallback = FallbackService(self)  # issue 5: suggestions, strategies, models.request
        self.queue = RequestQueue(self)  # issue 5: requests waiting for a model
        self.analytics = Analytics(self)  # issue 6: usage events and figures
        self.storage = StorageManager(self)  # issue 6: disk figures, retention, cleanup
        config.on_change(lambda changed: self.events.emit("config_changed", changed=changed))

    # --- lifecycle -----------------------------------------------------------
    async def __aenter__(self) -> "Engine":
        self.layout.ensure()
        applied = await self.db.open()
        if applied:
            log.info("database migrations applied: %s", ", ".join(applied))
        try:
            self.catalog = await asyncio.to_thread(load_catalog, self.layout.catalog_file, self.layout.catalog_dir)
        except Exception as exc:  # CatalogError: serve an empty catalog and say why
            self.catalog_error = str(exc)
            log.error("catalog refused at start: %s", exc)
        await self.refresh_presence()
        await self.downloads.start_service()
        await self.health.start()
        await self.analytics.start()
        await self.storage.start()
        self.spawn(self._rescan_loop(), name="presence-rescan")
        await self.queue.start()  # last: it may ask the other services (downloads) for models
        return self

    async def __aexit__(self, *exc: object) -> None:
        for hook in reversed(self._stopping):
            try:
                await hook()
            except Exception:
                log.exception("stop hook failed")
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.db.close)

    def spawn(self, coro: Awaitable[Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run `coro` as a background task owned by the engine (cancelled at stop, errors logged)."""
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task %s failed", t.get_name(), exc_info=t.exception())

        task.add_done_callback(done)
        return task

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` at shutdown, before background tasks are cancelled (last registered runs first)."""
        self._stopping.append(hook)

    def add_status_provider(self, provider: StatusProvider) -> None:
        """Register a service that contributes fields to model statuses."""
        self._providers.append(provider)

    # --- catalog -------------------------------------------------------------
    def spec(self, model_id: str) -> Any:
        """The catalog entry for `model_id`, or ModelNotFound."""
        spec = self.catalog.get(model_id)
        if spec is None:
            raise ModelNotFound(f"model {model_id!r} is not in the catalog", model_id=model_id)
        return spec

    async def reload_catalog(self) -> dict[str, Any]:
        """Load the catalog files again; swap them in only if all are valid (CatalogError otherwise)."""
        new = await asyncio.to_thread(load_catalog, self.layout.catalog_file, self.layout.catalog_dir)
        old_ids = set(self.catalog.models)
        self.catalog = new
        self.catalog_error = None
        await self.refresh_presence()
        added = sorted(set(new.models) - old_ids)
        removed = sorted(old_ids - set(new.models))
        log.info("catalog reloaded: %d models (%d added, %d removed)", len(new), len(added), len(removed))
        return {"success": True, "models": len(new), "added": added, "removed": removed, "files": list(new.files)}

    # --- presence ------------------------------------------------------------
    def version_in_use(self, model_id: str) -> str:
        """The installed current version, else the catalog's version."""
        v = self._snap.versions.get(model_id)
        return v if v is not None else self.spec(model_id).version

    def presence(self, model_id: str) -> ModelPresence | None:
        """The last scan of `model_id`, or None if it was never scanned."""
        return self._snap.presence.get(model_id)

    def _load_installed(self) -> tuple[dict[str, str], VerifiedIndex, dict[tuple[str, str], list[FileSpec]]]:
        def q(conn: Any) -> tuple[dict[str, str], VerifiedIndex, dict[tuple[str, str], list[FileSpec]]]:
            versions = {r[0]: r[1] for r in conn.execute("SELECT model_id, version FROM installed_versions WHERE is_current = 1")}
            verified: VerifiedIndex = {}
            manifests: dict[tuple[str, str], list[FileSpec]] = {}
            for r in conn.execute("SELECT model_id, version, path, size, sha256, mtime_ns, inode, verified_at FROM installed_files"):
                if r[7] is not None:
                    verified[(r[0], r[1], r[2])] = (r[3], r[4], r[5], r[6])
                manifests.setdefault((r[0], r[1]), []).append(FileSpec(path=r[2], url="", size=r[3], sha256=r[4]))
            return versions, verified, manifests

        return self.db.read_sync(q)

    def _manifest(self, model_id: str, version: str, manifests: dict[tuple[str, str], list[FileSpec]]) -> list[FileSpec]:
        spec = self.catalog.get(model_id)
        if spec is not None and spec.version == version and spec.files:
            return list(spec.files)
        return manifests.get((model_id, version), list(spec.files) if spec else [])

    async def refresh_presence(self, model_ids: list[str] | None = None) -> None:
        """Rescan models (all, or the given ids) in a worker thread and publish availability changes."""

        def scan() -> _Snapshot:
            versions, verified, manifests = self._load_installed()
            ids = list(self.catalog.models) if model_ids is None else [m for m in model_ids if m in self.catalog.models]
            presence = {}
            for mid in ids:
                version = versions.get(mid, self.catalog.models[mid].version)
                presence[mid] = scan_model(self.layout, mid, version, self._manifest(mid, version, manifests), verified)
            return _Snapshot(presence=presence, versions=versions)

        fresh = await asyncio.to_thread(scan)
        if model_ids is not None:
            # merge on the loop: scans of different models may overlap and must not undo each other
            fresh.presence = {**self._snap.presence, **fresh.presence}
        self._snap = fresh
        self.publish_status_changes(model_ids)

    async def acquire_model(self, session: Session, model_id: str) -> tuple[Lease, dict[str, Any]]:
        """`models.acquire`: lease the model for `session` once a fresh scan shows it available; (lease, status).

        The lease is taken, pending, before the scan is awaited, so a removal
        that checks for leases meanwhile sees it and leaves the model alone;
        one already under way makes the acquire fail (Conflict). If the scan
        then finds the model unavailable, the lease is dropped again.
        """
        self.spec(model_id)
        lease = self.leases.acquire(session, model_id)
        try:
            await self.refresh_presence([model_id])
            status = self.model_status(model_id)
            if not status["is_available"]:
                raise InvalidState(f"model {model_id!r} is {status['availability_status']}, not available", model_id=model_id,
                                   availability_status=status["availability_status"])
            self.leases.settle(lease.lease_id, status["version"], status["path"])
        except BaseException:
            self.leases.discard(lease.lease_id)
            raise
        return lease, status

    def publish_status_changes(self, model_ids: list[str] | None = None) -> None:
        """Emit `model_availability_change` for every model whose status differs from the last one seen."""
        for mid in (model_ids if model_ids is not None else list(self.catalog.models)):
            if mid not in self.catalog.models:
                continue
            new = self.availability_status(mid)
            old = self._last_status.get(mid)
            self._last_status[mid] = new
            if old is not None and old != new:
                self.events.emit("model_availability_change", model_id=mid, old_status=old, new_status=new)

    async def _rescan_loop(self, interval_s: float = 60.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh_presence()
            except Exception:
                log.exception("presence rescan failed")

    # --- status --------------------------------------------------------------
    def _provided(self, model_id: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        status: str | None = None
        for p in self._providers:
            fields = p.model_fields(model_id)
            s = fields.pop("availability_status", None)
            if status is None and s is not None:
                status = s
            merged.update(fields)
        if status is not None:
            merged["availability_status"] = status
        return merged

    def availability_status(self, model_id: str) -> str:
        """The model's availability: a service's (downloading, corrupted…) or the one presence gives."""
        return self._provided(model_id).get("availability_status") or self._presence_status(model_id)

    def _presence_status(self, model_id: str) -> str:
        pres = self._snap.presence.get(model_id)
        if pres is None:
            return "unknown"
        if pres.complete:
            return "available"
        if pres.wrong_size_files:
            return "corrupted"
        return "missing"

    def _base_status(self, model_id: str) -> dict[str, Any]:
        """The part of a status that depends only on the catalog and the last scan (cached)."""
        spec = self.spec(model_id)
        pres = self._snap.presence.get(model_id)
        cached = self._status_cache.get(model_id)
        if cached is not None and cached[0] is spec and cached[1] is pres:
            return cached[2]
        version = self._snap.versions.get(model_id, spec.version)
        complete = bool(pres and pres.complete)
        total = sum(f.size_bytes for f in pres.files) if pres else spec.size_bytes
        verified_bytes = sum(f.size_bytes for f in pres.files if f.verified) if pres else 0
        base: dict[str, Any] = {
            "model_id": model_id,
            "display_name": spec.display_name,
            "model_type": spec.model_type,
            "capabilities": list(spec.capabilities),
            "quality": spec.quality,
            "speed": spec.speed,
            "family": spec.family,
            "is_available": False,
            "is_loaded": False,
            "size_mb": total / MIB,
            "size_bytes": total,
            "availability_status": self._presence_status(model_id),
            "download_progress": None,
            "missing_files": pres.missing_files if pres else [f.path for f in spec.files],
            # share of bytes verified against sha256 and unchanged since; health refines it
            "integrity_score": (verified_bytes / total if total else 1.0) if complete and verified_bytes else None,
            "last_health_check": None,
            "performance_score": None,
            "corruption_detected": bool(pres and pres.wrong_size_files),
            "usage_frequency": 0.0,
            "last_used": None,
            "average_generation_time": None,
            "can_pause_download": False,
            "can_resume_download": False,
            "estimated_download_time": None,
            "current_version": version if complete else None,
            "latest_version": spec.version,
            "update_available": complete and version_key(spec.version) > version_key(version),
            "version": version,
            "path": str(pres.directory if pres else self.layout.model_dir(model_id, version)),
            "files": [f.to_dict() for f in pres.files] if pres else [],
            "verified": bool(pres and pres.verified),
            "last_scanned": iso(pres.scanned_at) if pres else None,
        }
        self._status_cache[model_id] = (spec, pres, base)
        return base

    def model_status(self, model_id: str) -> dict[str, Any]:
        """One model's detailed status: the seeds' fields plus `path`, `version`, `files`.

        The result is a fresh dict the caller may keep; nested lists are shared
        with the cache and must not be mutated.
        """
        status = dict(self._base_status(model_id))
        status.update(self._provided(model_id))
        complete = status["current_version"] is not None
        status["is_available"] = status["availability_status"] == "available" or (complete and status["availability_status"] == "updating")
        return status

    def summary(self, statuses: list[dict[str, Any]]) -> dict[str, Any]:
        """The seeds' summary over the given statuses, with storage measured from the files on disk."""
        on_disk = sum(p.bytes_on_disk for p in self._snap.presence.values())
        return {
            "total_models": len(statuses),
            "available_models": sum(1 for s in statuses if s["availability_status"] == "available"),
            "downloading_models": sum(1 for s in statuses if s["availability_status"] == "downloading"),
            "queued_models": sum(1 for s in statuses if s["availability_status"] == "queued"),
            "missing_models": sum(1 for s in statuses if s["availability_status"] == "missing"),
            "corrupted_models": sum(1 for s in statuses if s["availability_status"] == "corrupted"),
            "total_storage_gb": on_disk / GIB,
        }

    def all_statuses(self) -> list[dict[str, Any]]:
        """Every catalog model's status, in catalog order."""
        return [self.model_status(mid) for mid in self.catalog.models]

    def list_models(self, page: int, limit: int, sort: str, order: str, status: str | None) -> dict[str, Any]:
        """One page of model statuses with the seeds' pagination block."""
        if sort not in SORT_KEYS:
            raise InvalidParams(f"sort must be one of {', '.join(SORT_KEYS)}", field="sort")
        if status is not None and status not in AVAILABILITY:
            raise InvalidParams(f"status must be one of {', '.join(AVAILABILITY)}", field="status")
        ids = list(self.catalog.models)
        if sort == "model_id" and status is None:
            # the common case: sorted ids (cached per catalog), build only the page's statuses
            if self._sorted_ids[0] is not self.catalog:
                self._sorted_ids = (self.catalog, sorted(ids))
            ids = self._sorted_ids[1] if order == "asc" else self._sorted_ids[1][::-1]
            total = len(ids)
            chosen = [self.model_status(m) for m in ids[(page - 1) * limit : page * limit]]
        else:
            rows = [self.model_status(m) for m in ids]
            if status is not None:
                rows = [r for r in rows if r["availability_status"] == status]
            rows.sort(key=lambda r: (r.get(sort) is None, r.get(sort) if r.get(sort) is not None else 0, r["model_id"]), reverse=(order == "desc"))
            total = len(rows)
            chosen = rows[(page - 1) * limit : page * limit]
        pages = max(1, math.ceil(total / limit))
        return {
            "data": chosen,
            "pagination": {"page": page, "limit": limit, "total": total, "pages": pages, "has_next": page < pages, "has_prev": page > 1},
        }

    # --- system --------------------------------------------------------------
    async def system_info(self) -> dict[str, Any]:
        """CPU, memory, disk and GPUs, read in a worker thread."""
        return await asyncio.to_thread(system_info, self.layout.models_dir, self.nvml)
