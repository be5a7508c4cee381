"""Model status: the catalog entry and presence, plus the fields each service contributes.

Precedence. The board is given its providers in order (the composition root
lists them). For `availability_status` the first provider that gives one wins,
else presence decides (`available`, `corrupted` when a file has the wrong size,
`missing`, `unknown` before the first scan). For any other field a provider
gives, the first provider that gives it wins over later ones and over the base
fields. The engine's order is: health (`updating` during an update,
`corrupted` after a check found damage), downloads (`downloading`, `queued`,
`paused`, `failed` while a download of the version in use is live), leases,
queue, analytics.

Caching. A composed status is kept until a service reports, through
`changed(ids)`, that something of those models changed (None: all of them);
every provider must report the ids whose fields it changed. Reading a status is
then a dictionary lookup, so `models.status` of every model costs no more than
its size. Each model has a revision number that grows at every change, so a
caller can cache what it derives from a status (an encoding, say).
`changed` also emits `model_availability_change` for every model whose
availability differs from the last one published.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Protocol, Sequence

from mavail.core.catalog import LiveCatalog, ModelSpec, version_key
from mavail.core.errors import InvalidParams
from mavail.core.inventory import ModelPresence
from mavail.core.paths import HomeLayout
from mavail.core.presence import Presence
from mavail.core.timeutil import iso

MIB = 1024 * 1024
GIB = 1024 * MIB
AVAILABILITY = ("available", "downloading", "queued", "paused", "missing", "corrupted", "updating", "failed", "unknown")
SORT_KEYS = ("model_id", "size_mb", "availability_status", "last_used", "usage_frequency", "display_name")


class StatusProvider(Protocol):
    """A service that adds fields to a model's status (health, downloads, leases, queue, usage).

    `model_fields` answers from memory in microseconds; it is called again only
    after the service reported the model through `StatusBoard.changed`.
    """

    def model_fields(self, model_id: str) -> dict[str, Any]:
        """Fields to merge into the model's status; `availability_status` among them overrides presence."""


StatusSink = Callable[[Sequence[str] | None], None]
"""How a service reports that the status of some models (None: all) changed."""


class StatusBoard:
    """Composes, caches and publishes every model's status; see the module docstring for the precedence."""

    def __init__(self, layout: HomeLayout, catalog: LiveCatalog, presence: Presence, emit: Callable[..., None],
                 cache: bool = True) -> None:
        self._layout = layout
        self._use_cache = cache
        self._catalog = catalog
        self._presence = presence
        self._emit = emit
        self._providers: tuple[StatusProvider, ...] = ()
        self._cache: dict[str, dict[str, Any]] = {}
        self._revisions: dict[str, int] = {}
        self._counter = itertools.count(1)
        self._published: dict[str, str] = {}
        self._sorted_ids: tuple[Any, list[str]] = (None, [])

    def set_providers(self, providers: Sequence[StatusProvider]) -> None:
        """The providers in order of precedence (first wins); every cached status is recomposed."""
        self._providers = tuple(providers)
        self.changed(None)

    # --- changes -----------------------------------------------------------------
    def changed(self, model_ids: Sequence[str] | None = None) -> None:
        """Forget the composed status of these models (None: all) and publish their availability changes.

        The events go out at once, so they keep their order with the service's
        own events (a download's `completed` progress before the model's
        `available`).
        """
        ids = self._catalog.ids() if model_ids is None else [m for m in model_ids if m in self._catalog]
        if model_ids is None:
            self._cache.clear()
            known = set(ids)  # forget models the catalog no longer has
            self._revisions = {m: r for m, r in self._revisions.items() if m in known}
            self._published = {m: s for m, s in self._published.items() if m in known}
        for mid in ids:
            self._cache.pop(mid, None)
            self._revisions[mid] = next(self._counter)
        for mid in ids:
            new = self.availability_status(mid)
            old = self._published.get(mid)
            self._published[mid] = new
            if old is not None and old != new:
                self._emit("model_availability_change", model_id=mid, old_status=old, new_status=new)

    @property
    def caching(self) -> bool:
        """Whether composed statuses are cached (and revisions follow every reported change)."""
        return self._use_cache

    def revisions_known(self) -> dict[str, int]:
        """Every tracked model id with its revision (read-only by convention)."""
        return self._revisions

    def revision(self, model_id: str) -> int:
        """A number that grows whenever the model's status may have changed."""
        return self._revisions.get(model_id, 0)

    # --- reading -------------------------------------------------------------------
    def availability_status(self, model_id: str) -> str:
        """The model's availability (see the precedence above)."""
        return self.model_status(model_id)["availability_status"]

    def model_status(self, model_id: str) -> dict[str, Any]:
        """One model's detailed status (ModelNotFound for an unknown id). Shared: the caller must not mutate it."""
        status = self._cache.get(model_id)
        if status is not None:
            return status
        spec = self._catalog.spec(model_id)
        status = self._base(model_id, spec, self._presence.presence(model_id))
        merged: dict[str, Any] = {}
        for provider in reversed(self._providers):
            merged.update(provider.model_fields(model_id))
        status.update(merged)
        complete = status["current_version"] is not None
        status["is_available"] = status["availability_status"] == "available" or (complete and status["availability_status"] == "updating")
        if self._use_cache:
            self._cache[model_id] = status
        return status

    async def fresh(self, model_id: str) -> dict[str, Any]:
        """One model's status after rescanning its files (ModelNotFound for an unknown id)."""
        self._catalog.spec(model_id)
        await self._presence.refresh([model_id])
        return self.model_status(model_id)

    async def overview(self, refresh: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Every model's status and the summary over them; `refresh` rescans the disk first."""
        if refresh:
            await self._presence.refresh()
        statuses = self.all_statuses()
        return statuses, self.summary(statuses)

    def all_statuses(self) -> list[dict[str, Any]]:
        """Every catalog model's status, in catalog order."""
        return [self.model_status(mid) for mid in self._catalog.models]

    def summary(self, statuses: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Counts over the given statuses, with storage measured from the files on disk."""
        counts: dict[str, int] = {}
        for s in statuses:
            counts[s["availability_status"]] = counts.get(s["availability_status"], 0) + 1
        return {
            "total_models": len(statuses),
            "available_models": counts.get("available", 0),
            "downloading_models": counts.get("downloading", 0),
            "queued_models": counts.get("queued", 0),
            "missing_models": counts.get("missing", 0),
            "corrupted_models": counts.get("corrupted", 0),
            "total_storage_gb": self._presence.bytes_on_disk() / GIB,
        }

    def list_models(self, page: int, limit: int, sort: str, order: str, status: str | None) -> dict[str, Any]:
        """One page of model statuses with the pagination block."""
        if sort not in SORT_KEYS:
            raise InvalidParams(f"sort must be one of {', '.join(SORT_KEYS)}", field="sort")
        if status is not None and status not in AVAILABILITY:
            raise InvalidParams(f"status must be one of {', '.join(AVAILABILITY)}", field="status")
        catalog = self._catalog.current
        if sort == "model_id" and status is None:
            # the common case: sorted ids (cached per catalog), build only the page's statuses
            if self._sorted_ids[0] is not catalog:
                self._sorted_ids = (catalog, sorted(catalog.models))
            ids = self._sorted_ids[1] if order == "asc" else self._sorted_ids[1][::-1]
            total = len(ids)
            chosen = [self.model_status(m) for m in ids[(page - 1) * limit: page * limit]]
        else:
            rows = self.all_statuses()
            if status is not None:
                rows = [r for r in rows if r["availability_status"] == status]
            rows.sort(key=lambda r: (r.get(sort) is None, r.get(sort) if r.get(sort) is not None else 0, r["model_id"]),
                      reverse=(order == "desc"))
            total = len(rows)
            chosen = rows[(page - 1) * limit: page * limit]
        pages = max(1, math.ceil(total / limit))
        return {
            "data": chosen,
            "pagination": {"page": page, "limit": limit, "total": total, "pages": pages, "has_next": page < pages, "has_prev": page > 1},
        }

    # --- the base fields ---------------------------------------------------------------
    @staticmethod
    def presence_status(pres: ModelPresence | None) -> str:
        """Availability from presence alone."""
        if pres is None:
            return "unknown"
        if pres.complete:
            return "available"
        if pres.wrong_size_files:
            return "corrupted"
        return "missing"

    def _base(self, model_id: str, spec: ModelSpec, pres: ModelPresence | None) -> dict[str, Any]:
        version = self._presence.installed_version(model_id) or spec.version
        complete = bool(pres and pres.complete)
        total = sum(f.size_bytes for f in pres.files) if pres else spec.size_bytes
        verified_bytes = sum(f.size_bytes for f in pres.files if f.verified) if pres else 0
        return {
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
            "availability_status": self.presence_status(pres),
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
            "path": str(pres.directory if pres else self._layout.model_dir(model_id, version)),
            "files": [f.to_dict() for f in pres.files] if pres else [],
            "verified": bool(pres and pres.verified),
            "last_scanned": iso(pres.scanned_at) if pres else None,
        }
