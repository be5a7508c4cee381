"""The status board's cache across catalog reloads: never an old entry on the wire, no memory of models long gone."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from mavail.core.engine import Parts
from mavail.rpc.client import AsyncClient
from mavail.rpc.encoding import StatusEncodings
from tests.helpers import held_full_scans, model_toml, running_engine


async def test_a_reloaded_entry_shows_at_once_even_while_the_rescan_runs(home: Path):
    home.mkdir(parents=True)
    (home / "catalog.toml").write_text(model_toml("m1", [("a.bin", b"x")], display_name="Old Name"))
    scanned, release = threading.Event(), threading.Event()
    release.set()

    HeldFullScans = held_full_scans(scanned, release)

    async with running_engine(home, parts=Parts(presence=lambda e: e.build_presence(HeldFullScans))) as (eng, sock), \
            AsyncClient(sock) as c:
        assert (await c.call("models.status"))["models"]["m1"]["display_name"] == "Old Name"
        (home / "catalog.toml").write_text(model_toml("m1", [("a.bin", b"x")], display_name="New Name"))
        release.clear()
        reload = asyncio.ensure_future(c.call("catalog.reload"))
        await asyncio.to_thread(scanned.wait, 10)
        async with AsyncClient(sock) as other:
            assert (await other.call("models.status"))["models"]["m1"]["display_name"] == "New Name"
        release.set()
        await reload


async def test_models_gone_from_the_catalog_leave_nothing_behind(home: Path):
    home.mkdir(parents=True)
    (home / "catalog.toml").write_text("")
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        for round_ in range(6):
            (home / "catalog.toml").write_text("".join(model_toml(f"r{round_}-{i}", [("a.bin", b"x")]) for i in range(10)))
            await c.call("catalog.reload")
            assert len((await c.call("models.status"))["models"]) == 10
        board = eng.status
        assert len(StatusEncodings.of(board)._cache) <= 2 * 10  # pruned once it holds twice the catalog
        assert len(board._revisions) <= 10 and len(board._published) <= 10
