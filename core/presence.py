"""Presence: the in-memory picture of the models directory, refreshed off the event loop.

A scan reads the installed record (`core.installed`) and `lstat`s every file of
the version in use of each catalog model (`core.inventory.scan_model`). The
snapshot is swapped whole, or merged for a scan of some models, and the ids
that were scanned are passed to `on_scanned` so status can publish what
changed. A loop rescans everything every `interval_s` seconds to notice files
changed by hand.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable

from mavail.core import installed
from mavail.core.catalog import FileSpec, LiveCatalog
from mavail.core.inventory import ModelPresence, scan_model
from mavail.core.paths import HomeLayout
from mavail.core.state import Database

log = logging.getLogger("mavail.engine")


@dataclass
class Snapshot:
    """The last scan: each model's files and the installed version in use."""

    presence: dict[str, ModelPresence] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # model_id -> version in use


class Presence:
    """What is on disk, by model; `refresh` rescans (in a worker thread), reads answer from memory."""

    def __init__(self, layout: HomeLayout, catalog: LiveCatalog, db: Database,
                 on_scanned: Callable[[list[str] | None], None] = lambda ids: None) -> None:
        self._layout = layout
        self._catalog = catalog
        self._db = db
        self._on_scanned = on_scanned
        self._snap = Snapshot()

    def presence(self, model_id: str) -> ModelPresence | None:
        """The last scan of `model_id`, or None if it was never scanned."""
        return self._snap.presence.get(model_id)

    def all(self) -> dict[str, ModelPresence]:
        """Every scanned model's presence (read-only by convention)."""
        return self._snap.presence

    def installed_version(self, model_id: str) -> str | None:
        """The installed version in use, or None when none is recorded."""
        return self._snap.versions.get(model_id)

    def version_in_use(self, model_id: str) -> str:
        """The installed version in use, else the catalog's version (ModelNotFound for an unknown id)."""
        v = self._snap.versions.get(model_id)
        return v if v is not None else self._catalog.spec(model_id).version

    def _manifest(self, model_id: str, version: str, manifests: dict[tuple[str, str], list[FileSpec]]) -> list[FileSpec]:
        spec = self._catalog.get(model_id)
        if spec is not None and spec.version == version and spec.files:
            return list(spec.files)
        return manifests.get((model_id, version), list(spec.files) if spec else [])

    def _scan(self, model_ids: list[str] | None) -> Snapshot:
        record = self._db.read_sync(installed.read_all)
        models = self._catalog.models
        ids = list(models) if model_ids is None else [m for m in model_ids if m in models]
        presence = {}
        for mid in ids:
            version = record.current.get(mid, models[mid].version)
            presence[mid] = scan_model(self._layout, mid, version, self._manifest(mid, version, record.manifests), record.verified)
        return Snapshot(presence=presence, versions=record.current)

    async def refresh(self, model_ids: list[str] | None = None) -> None:
        """Rescan models (all, or the given ids) in a worker thread, then report the ids scanned."""
        fresh = await asyncio.to_thread(self._scan, model_ids)
        if model_ids is not None:
            # merged on the loop: scans of different models may overlap and must not undo each other
            fresh.presence = {**self._snap.presence, **fresh.presence}
        self._snap = fresh
        self._on_scanned(model_ids)

    async def rescan_loop(self, interval_s: float = 60.0) -> None:
        """Rescan everything every `interval_s` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("presence rescan failed")

    def bytes_on_disk(self) -> int:
        """Bytes of the catalog files found in the directories in use."""
        return sum(p.bytes_on_disk for p in self._snap.presence.values())
