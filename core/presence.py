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
        self._started = 0  # scans started so far: each scan's number
        self._entry_scan: dict[str, int] = {}  # model id -> number of the scan its entry came from
        self._versions_scan = 0

    def presence(self, model_id: str) -> ModelPresence | None:
        """The last scan of `model_id`, or None if it was never scanned."""
        return self._snap.presence.get(model_id)

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
        """Rescan models (all, or the given ids) in a worker thread, then report the ids scanned.

        Scans may overlap (the rescan loop's full scan, a download's rescan of
        its model). Each is numbered when it starts; a model's entry, and the
        record of versions in use, are taken only from a scan that started after
        the one they came from, so an older scan finishing last never undoes a
        newer one.
        """
        self._started += 1
        number = self._started
        fresh = await asyncio.to_thread(self._scan, model_ids)
        presence = dict(self._snap.presence)
        for mid, pres in fresh.presence.items():
            if number > self._entry_scan.get(mid, 0):
                presence[mid] = pres
                self._entry_scan[mid] = number
        if model_ids is None:  # a full scan also forgets models the catalog no longer has
            presence = {mid: p for mid, p in presence.items() if mid in fresh.presence or self._entry_scan.get(mid, 0) > number}
            self._entry_scan = {mid: n for mid, n in self._entry_scan.items() if mid in presence}
        versions = self._snap.versions
        if number > self._versions_scan:
            versions, self._versions_scan = fresh.versions, number
        self._snap = Snapshot(presence=presence, versions=versions)
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
