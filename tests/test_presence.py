"""Presence scans that overlap: the scan that started last decides, whichever finishes last."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from mavail.core.engine import Parts
from mavail.rpc.client import AsyncClient
from tests.helpers import held_full_scans, install_files, model_toml, running_engine, synthetic_bytes

FILES = [("w.bin", synthetic_bytes("a", 50_000))]


async def _statuses(sock: Path) -> dict:
    async with AsyncClient(sock) as c:
        return (await c.call("models.status"))["models"]


async def test_an_older_scan_finishing_last_does_not_undo_a_newer_one(home: Path):
    home.mkdir(parents=True)
    (home / "catalog.toml").write_text(model_toml("m1", FILES))
    scanned, release = threading.Event(), threading.Event()
    release.set()  # the engine's own start-up scan goes through

    HeldFullScans = held_full_scans(scanned, release)

    async with running_engine(home, parts=Parts(presence=lambda e: e.build_presence(HeldFullScans))) as (eng, sock):
        pres = eng.presence
        release.clear()
        assert (await _statuses(sock))["m1"]["availability_status"] == "missing"
        full = asyncio.create_task(pres.refresh())  # the rescan loop's full scan, slow on a big catalog
        await asyncio.to_thread(scanned.wait, 10)
        install_files(home, "m1", FILES)  # the files arrive after the full scan looked
        await pres.refresh(["m1"])  # a targeted rescan that started later
        assert (await _statuses(sock))["m1"]["availability_status"] == "available"
        release.set()
        await full
        assert (await _statuses(sock))["m1"]["availability_status"] == "available"
        assert eng.presence.presence("m1").complete
