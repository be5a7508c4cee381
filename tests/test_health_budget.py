"""The read budget: health.max_read_mbps paces scheduled checks only; a manual check runs at full speed unless it names its own."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mavail.rpc.client import AsyncClient
from tests.helpers import install_files, model_toml, running_engine, synthetic_bytes, wait_until

MIB = 1024 * 1024
BIG = [("big.bin", synthetic_bytes("budget", 24 * MIB))]  # 24 s at 1 MiB/s
MID = [("mid.bin", synthetic_bytes("budget-mid", 8 * MIB))]


def setup_home(home: Path, max_read_mbps: float, files=BIG) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f"[downloads]\npiece_size_mb = 1\n[health]\nscheduler_tick_s = 3600\nmax_read_mbps = {max_read_mbps}\n")
    (home / "catalog.toml").write_text(model_toml("m1", files))
    install_files(home, "m1", files)


async def completed(c: AsyncClient, check_id: str) -> bool:
    return (await c.call("health.check_status", check_id=check_id))["status"] == "completed"


async def test_manual_full_check_is_not_paced_by_the_scheduled_budget(home: Path):
    setup_home(home, 1.0)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        for _ in range(2):  # the first hashes the whole file, the second its pieces
            res = await c.call("health.check", model_id="m1", check_type="full", wait=False)
            await wait_until(lambda: completed(c, res["check_id"]), timeout=10.0)  # paced, it would take 24 s
        done = await c.call("health.check_status", check_id=res["check_id"])
        assert done["result"]["overall_health"] == "healthy" and done["result"]["bytes_hashed"] == 24 * MIB


async def test_max_read_mbps_given_paces_a_manual_check(home: Path):
    setup_home(home, 1.0, MID)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        res = await c.call("health.check", model_id="m1", check_type="full", max_read_mbps=8.0)
        # 8 MiB at 8 MiB/s: at least 1 s less the first chunk, and far less than the 8 s of health.max_read_mbps
        assert 0.9 <= res["result"]["duration_s"] < 6.0, res["result"]["duration_s"]


async def test_scheduled_check_honours_the_budget(home: Path):
    setup_home(home, 8.0, MID)
    async with running_engine(home) as (eng, sock):
        out = await eng.health.check("m1", "full", trigger="scheduled")
        assert out.result is not None and out.result["duration_s"] >= 0.9, out.result


async def test_manual_check_joining_a_scheduled_one_lifts_its_budget(home: Path):
    setup_home(home, 1.0)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        running = await eng.health.check("m1", "full", trigger="scheduled", wait=False)
        assert running.status == "running"
        await asyncio.sleep(0.5)  # into its pacing (4 s per 4 MiB chunk at 1 MiB/s); joining earlier would pass as well
        res = await c.call("health.check", model_id="m1", check_type="full", wait=False)
        assert res["check_id"] == running.check_id and res.get("joined")
        await wait_until(lambda: completed(c, running.check_id), timeout=10.0)
