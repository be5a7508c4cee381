"""The queue: priorities, move, concurrency, pause/resume/cancel races, 20 models, limits, ensure, estimates."""

from __future__ import annotations

import asyncio
import errno
import time

import pytest

from mavail.core.downloads.partial import PartialFile
from mavail.testing.mirror import MIB, Mirror, Synthetic
from mavail.rpc.client import AsyncClient, RpcError
from tests.dlhelpers import dl_engine, installed_bytes, wait_status, write_home
from tests.helpers import wait_until


async def test_twenty_models_queued_respect_concurrency_and_priority(home):
    models = {f"m{i:02d}": {"f.bin": Synthetic(f"q{i}", 60_000)} for i in range(20)}
    with Mirror() as m:
        write_home(home, m, models, {"downloads": {"max_concurrent": 3}})
        m.default_faults.throttle_bps = 100_000
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            peak = 0
            for mid in models:
                await c.call("downloads.start", model_id=mid, priority="low")
            await c.call("downloads.set_priority", model_id="m19", priority="critical")
            act = await c.call("downloads.active")
            assert act["total_active"] == 20
            order = [d["model_id"] for d in act["active_downloads"]]
            assert order[0] == "m19" and order[1:4] == ["m00", "m01", "m02"]
            assert [d["queue_position"] for d in act["active_downloads"]] == list(range(1, 21))
            moved = await c.call("downloads.move", model_id="m10", position=2)
            assert moved["queue_position"] == 2
            order = [d["model_id"] for d in (await c.call("downloads.active"))["active_downloads"]]
            assert order[:2] == ["m19", "m10"]
            await c.call("config.update", patch={"downloads": {"max_concurrent": 5}})

            def running() -> bool:
                nonlocal peak
                n = sum(1 for d in eng.downloads._dl.values() if d.status in ("downloading", "verifying"))
                peak = max(peak, n)
                return all(d.status == "completed" for d in eng.downloads._dl.values())

            await wait_until(running, timeout=60, interval=0.005)
            assert 3 <= peak <= 5
            for mid, files in models.items():
                assert installed_bytes(home, mid, "f.bin") == files["f.bin"].read(0, 60_000)
            done = await c.call("models.status")
            assert done["summary"]["available_models"] == 20


async def test_pause_resume_cancel_races(home):
    data = Synthetic("race", 2 * MIB)
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": data}, "k": {"f.bin": Synthetic("k", MIB)}})
        m.default_faults.throttle_bps = 2 * MIB
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="m")
            # hammer the same download with concurrent calls; every call answers, none crashes the engine
            calls = []
            for _ in range(5):
                calls += [("downloads.pause", {"model_id": "m"}), ("downloads.resume", {"model_id": "m"}),
                          ("downloads.progress", {"model_id": "m"})]
            results = await asyncio.gather(*(c.call(meth, **p) for meth, p in calls), return_exceptions=True)
            assert all(not isinstance(r, RpcError) or r.code == -32006 for r in results)
            await c.call("downloads.resume", model_id="m")
            d = eng.downloads.get("m")
            try:
                await wait_until(lambda: eng.downloads.get("m").downloaded_bytes > 200_000, timeout=10)
            except AssertionError:
                raise AssertionError(f"STUCK {d.status} {d.task} {d.stop_reason} {d.downloaded_bytes} {d.transfers}")
            r = await c.call("downloads.pause", model_id="m")
            assert r["new_status"] == "paused"
            kept = eng.downloads.get("m").downloaded_bytes
            await asyncio.sleep(0.2)  # the mirror counts a response's bytes when it ends
            served = m.bytes_served.get("m/f.bin", 0)
            await asyncio.sleep(0.3)
            assert m.bytes_served.get("m/f.bin", 0) == served  # the connections are closed
            assert eng.downloads.get("m").downloaded_bytes == kept
            assert (await c.call("models.status", model_id="m"))["availability_status"] == "paused"
            m.default_faults.throttle_bps = 0
            await c.call("downloads.resume", model_id="m")
            await wait_status(eng, "m", "completed")
            assert installed_bytes(home, "m", "f.bin") == data.read(0, data.size)
            assert m.bytes_served["m/f.bin"] <= data.size + 6 * 256 * 1024  # bytes kept across pauses
            assert kept > 0
            with pytest.raises(RpcError) as ei:
                await c.call("downloads.resume", model_id="m")
            assert ei.value.code == -32006
            # cancel while running removes partial data; cancel with keep_partial keeps it for a later start
            m.default_faults.throttle_bps = 1 * MIB
            await c.call("downloads.start", model_id="k")
            await wait_until(lambda: eng.downloads.get("k").downloaded_bytes > 100_000, timeout=10)
            res = await asyncio.gather(c.call("downloads.cancel", model_id="k", keep_partial=True),
                                       c.call("downloads.pause", model_id="k"), return_exceptions=True)
            assert res[0]["new_status"] == "cancelled"
            assert (home / "partial" / "k").exists()
            m.default_faults.throttle_bps = 0
            n_before = len(m.log)
            await c.call("downloads.start", model_id="k")
            await wait_status(eng, "k", "completed")
            later = [r for r in m.log[n_before:] if r.path == "k/f.bin" and r.range]
            assert any(not r.range.startswith("bytes=0-") for r in later)  # resumed from the kept data
            assert installed_bytes(home, "k", "f.bin") == Synthetic("k", MIB).read(0, MIB)
            assert eng.activity.busy("k", "downloading") is False  # the download let go (a health check may follow it)


async def test_cancel_deletes_partial(home):
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": Synthetic("c", 2 * MIB)}})
        m.default_faults.throttle_bps = MIB
        async with dl_engine(home) as (eng, sock):
            await eng.downloads.start("m")
            await wait_until(lambda: eng.downloads.get("m").downloaded_bytes > 100_000, timeout=10)
            r = await eng.downloads.cancel("m")
            assert r.status == "cancelled" and r.changed
            assert not (home / "partial" / "m").exists()
            assert await eng.db.fetchall("SELECT * FROM download_pieces WHERE model_id='m'") == []
            assert (await eng.presence.refresh(["m"])) is None and eng.status.availability_status("m") == "missing"


async def test_bandwidth_limits_per_download_and_global_live(home):
    with Mirror() as m:
        write_home(home, m, {"a": {"f.bin": Synthetic("la", 3 * MIB)}, "b": {"f.bin": Synthetic("lb", 2 * MIB)}})
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            t0 = time.monotonic()
            await c.call("downloads.start", model_id="a", bandwidth_limit_mbps=2.0)
            await wait_until(lambda: eng.downloads.get("a").downloaded_bytes > MIB, timeout=10)
            await c.call("downloads.set_limit", model_id="a", bandwidth_limit_mbps=0)  # lift it live
            await wait_status(eng, "a", "completed")
            assert 0.4 < time.monotonic() - t0 < 3.0
            await c.call("config.update", patch={"downloads": {"bandwidth_limit_mbps": 4.0}})
            t0 = time.monotonic()
            await c.call("downloads.start", model_id="b")
            await wait_status(eng, "b", "completed")
            elapsed = time.monotonic() - t0
            assert 0.4 <= elapsed < 1.5, elapsed  # 2 MiB at 4 MiB/s


async def test_ensure_joins_and_estimate(home):
    with Mirror() as m:
        write_home(home, m, {"a": {"f.bin": Synthetic("ea", 2 * MIB)}, "b": {"f.bin": Synthetic("eb", MIB)}},
                   {"downloads": {"max_concurrent": 1}})
        m.default_faults.throttle_bps = 2 * MIB
        async with dl_engine(home) as (eng, sock):
            first = await eng.downloads.ensure("a")
            again = await eng.downloads.ensure("a", priority="high")
            assert first["started"] and again["joined"] and again["download_id"] == first["download_id"]
            assert eng.downloads.get("a").priority == "high"
            await eng.downloads.ensure("b", priority="low")
            assert eng.downloads.is_active("b") and eng.downloads.get("b").status == "queued"
            await wait_until(lambda: eng.downloads.get("a").speed > 0, timeout=10)
            # one instant (no await in between): the estimates follow the scheduler's measured state exactly
            da, db_ = eng.downloads.get("a"), eng.downloads.get("b")
            ea, eb = eng.downloads.estimate_ready_seconds("a"), eng.downloads.estimate_ready_seconds("b")
            speed = da.speed
            assert 0 < speed < 3 * MIB  # the mirror caps the connection at 2 MiB/s
            assert ea == pytest.approx(da.remaining_bytes / speed, rel=1e-9)
            # b (queued, one download at a time) waits for a's remaining bytes, then its own, at the same rate
            assert eb == pytest.approx((da.remaining_bytes + db_.remaining_bytes) / speed, rel=1e-9)
            assert 0 < ea < eb
            st = eng.status.model_status("b")
            assert st["availability_status"] == "queued" and st["download_progress"] == 0.0
            seen = []
            eng.downloads.add_listener(lambda mid, ver, status: seen.append((mid, status)))
            await wait_until(lambda: ("b", "completed") in seen, timeout=20)
            assert ("a", "completed") in seen
            assert eng.downloads.estimate_ready_seconds("b") is None


class _FullDisk(PartialFile):
    """A partial file on a disk that fills up after `budget` bytes."""

    budget = 300_000
    written = 0

    def write(self, data, offset):  # type: ignore[override]
        if _FullDisk.written + len(data) > _FullDisk.budget:
            raise OSError(errno.ENOSPC, "No space left on device")
        _FullDisk.written += len(data)
        super().write(data, offset)


async def test_disk_full_mid_download_pauses_and_keeps_data(home):
    data = Synthetic("full", MIB)
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": data}})
        async with dl_engine(home, opener=_FullDisk) as (eng, sock), AsyncClient(sock) as c:
            await c.subscribe(types=["model_download_progress", "storage_warning"])
            await c.call("downloads.start", model_id="m")
            p = await wait_status(eng, "m", "paused")
            assert p["error_code"] == "INSUFFICIENT_STORAGE" and "disk is full" in p["error_message"]
            assert (await c.call("session.hello"))["engine_version"]  # the engine stays up
            kept = eng.downloads.get("m").downloaded_bytes
            assert 0 < kept <= 300_000
            _FullDisk.budget = 10 * MIB  # space freed
            served = m.bytes_served["m/f.bin"]
            await c.call("downloads.resume", model_id="m")
            await wait_status(eng, "m", "completed")
            assert installed_bytes(home, "m", "f.bin") == data.read(0, data.size)
            assert m.bytes_served["m/f.bin"] - served <= data.size - kept + 256 * 1024
