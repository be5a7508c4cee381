"""Downloads give way to generations: downloads.during_generation pauses or throttles them while a lease is held."""

from __future__ import annotations

import asyncio
import time

from mavail.rpc.client import AsyncClient
from mavail.testing.mirror import MIB, Mirror, Synthetic
from tests.dlhelpers import dl_engine, wait_status, write_home
from tests.helpers import install_files, wait_until

READY = b"ready weights" * 100


def _home(home, m, config):
    write_home(home, m, {"big": {"w.bin": Synthetic("gen", 8 * MIB)}, "ready": {"r.bin": READY}}, config={"downloads": config})
    install_files(home, "ready", [("r.bin", READY)])


async def test_pause_holds_downloads_while_a_lease_is_held_and_they_go_on_when_it_ends(home):
    with Mirror() as m:
        _home(home, m, {"during_generation": "pause"})
        m.faults("big/w.bin").throttle_bps = 2 * MIB
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="big")
            await wait_until(lambda: (eng.downloads.get("big").downloaded_bytes or 0) > MIB // 2)
            assert (await c.call("downloads.active"))["during_generation"] == {"mode": "pause", "active": False, "leases": 0, "limit_mbps": 0.0}
            lease = await c.call("models.acquire", model_id="ready")
            await wait_status(eng, "big", "queued")
            held = await c.call("downloads.active")
            assert held["during_generation"] == {"mode": "pause", "active": True, "leases": 1, "limit_mbps": 0.0}
            assert held["active_downloads"][0]["status"] == "queued" and held["total_running"] == 0
            asked, kept = m.requests["big/w.bin"], eng.downloads.get("big").downloaded_bytes
            await asyncio.sleep(0.5)  # a while with the lease held: nothing more is asked for or written
            assert m.requests["big/w.bin"] == asked and eng.downloads.get("big").downloaded_bytes == kept
            assert kept > MIB // 4  # the bytes it had stay
            await c.call("models.release", lease_id=lease["lease_id"])
            await wait_status(eng, "big", "downloading", "verifying", "completed")
            await wait_status(eng, "big", "completed")
            assert (await c.call("models.status", model_id="big"))["is_available"]


async def test_the_mode_applies_live_and_continue_leaves_downloads_alone(home):
    with Mirror() as m:
        _home(home, m, {"during_generation": "continue"})
        m.faults("big/w.bin").throttle_bps = 2 * MIB
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            await c.call("models.acquire", model_id="ready")
            await c.call("downloads.start", model_id="big")
            await wait_until(lambda: (eng.downloads.get("big").downloaded_bytes or 0) > MIB // 2)
            assert eng.downloads.get("big").status == "downloading"
            await c.call("config.update", patch={"downloads.during_generation": "pause"})
            await wait_status(eng, "big", "queued")
            await c.call("config.update", patch={"downloads.during_generation": "continue"})
            await wait_status(eng, "big", "downloading")


async def test_throttle_caps_every_download_while_a_lease_is_held(home):
    with Mirror() as m:
        _home(home, m, {"during_generation": "throttle", "during_generation_mbps": 3.0})
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            lease = await c.call("models.acquire", model_id="ready")
            await c.call("downloads.start", model_id="big")
            await wait_until(lambda: (eng.downloads.get("big").downloaded_bytes or 0) >= MIB)
            t0, b0 = time.monotonic(), eng.downloads.get("big").downloaded_bytes
            await wait_until(lambda: eng.downloads.get("big").downloaded_bytes >= b0 + 3 * MIB)
            rate = (eng.downloads.get("big").downloaded_bytes - b0) / (time.monotonic() - t0) / MIB
            assert rate < 3.0 * 1.3, rate  # the mirror alone serves this in a few milliseconds
            st = (await c.call("downloads.active"))["during_generation"]
            assert st == {"mode": "throttle", "active": True, "leases": 1, "limit_mbps": 3.0}
            await c.call("models.release", lease_id=lease["lease_id"])
            t1 = time.monotonic()
            await wait_status(eng, "big", "completed")
            assert time.monotonic() - t1 < 1.0  # the rest at full speed (about 3 MiB)
