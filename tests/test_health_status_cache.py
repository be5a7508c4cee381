"""With the status cache on, `models.status` and `health.status` show every change health and updates make.

Each change (a check's result, a repair, a performance figure, a quick pass,
an update starting, waiting and ending, a rollback, a removal, a restart) is
followed by a read over the socket that must already see the new fields: the
service reported the model through the status sink.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from mavail.core.engine import Parts, health_ports
from mavail.core.health import HealthService
from mavail.rpc.client import AsyncClient
from mavail.testing.mirror import Mirror
from tests.helpers import install_files, model_toml, running_engine, synthetic_bytes, wait_until

MIB = 1024 * 1024
BIG = synthetic_bytes("unet", 2 * MIB + 17)
SMALL = synthetic_bytes("vae", 100_000)
V1 = [("w.bin", synthetic_bytes("v1", 200_000))]
V2 = [("w.bin", synthetic_bytes("v2", 210_000))]
CONFIG = "[downloads]\npiece_size_mb = 1\n[health]\nscheduler_tick_s = 3600\n[updates]\nkeep_versions = 1\n"


class ShiftedClock:
    """The system clock moved forward by `offset` seconds."""

    offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


class FakeSamples:
    """Generation samples in place of analytics' (set `rows` at any time)."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float, bool]] = []

    async def __call__(self, model_id: str, limit: int) -> list[tuple[float, float, bool]]:
        return self.rows[:limit]


@pytest.fixture
def mirror():
    with Mirror() as m:
        yield m


def flip(p: Path, offset: int) -> None:
    with open(p, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x5A]))


async def status(c: AsyncClient) -> dict[str, Any]:
    """m1's status as the board has it: every model's, which rescans nothing (one model's rescans it first)."""
    return (await c.call("models.status"))["models"]["m1"]


async def test_cached_status_follows_checks_repairs_and_restarts(home: Path, mirror: Mirror):
    home.mkdir(parents=True)
    (home / "config.toml").write_text(CONFIG)
    (home / "catalog.toml").write_text(mirror.add_model("m1", {"unet/model.bin": BIG, "vae.bin": SMALL}))
    d = home / "models/m1/1.0.0"
    (d / "unet").mkdir(parents=True)
    (d / "unet/model.bin").write_bytes(BIG)
    (d / "vae.bin").write_bytes(SMALL)
    clock, samples = ShiftedClock(), FakeSamples()
    parts = Parts(health=lambda eng: HealthService(**{**health_ports(eng), "generation_samples": samples}))
    async with running_engine(home, clock=clock, parts=parts, status_cache=True) as (eng, sock), AsyncClient(sock) as c:
        before = await status(c)  # the stock-taking at start: never verified
        assert before["overall_health"] != "healthy"
        # a full check proves the files
        clock.offset += 10
        await c.call("health.check", model_id="m1", check_type="full")
        st = await status(c)
        assert st["last_health_check"] != before["last_health_check"]
        assert st["integrity_score"] == 1.0 and st["overall_health"] == "healthy" and st["last_health_check"] and not st["corruption_detected"]
        # a quick check that changes nothing but the time of the last check
        clock.offset += 10
        await c.call("health.check", model_id="m1", check_type="quick")
        again = await status(c)
        assert again["last_health_check"] != st["last_health_check"] and again["overall_health"] == "healthy"
        # a check that finds damage
        flip(d / "unet/model.bin", MIB + 5)
        await c.call("health.check", model_id="m1", check_type="full")
        st = await status(c)
        assert st["corruption_detected"] is True and st["availability_status"] == "corrupted" and st["overall_health"] == "corrupted"
        assert (await c.call("health.status", model_id="m1"))["overall_health"] == "corrupted"
        # a repair
        res = await c.call("health.repair", model_id="m1")
        assert res["success"], res
        st = await status(c)
        assert st["availability_status"] == "available" and not st["corruption_detected"] and st["integrity_score"] == 1.0
        # a performance figure
        samples.rows = [(i, 10.0, True) for i in range(20)] + [(100 + i, 25.0, True) for i in range(10)]
        await c.call("health.check", model_id="m1", check_type="performance")
        st = await status(c)
        assert st["performance_score"] == 0.25 and st["overall_health"] == "degraded"
        # the quick pass over every model
        samples.rows = []
        (d / "vae.bin").write_bytes(SMALL[:10])
        summary = await c.call("health.check_all")
        assert summary["success"] and summary["corrupted"] == ["m1"]
        st = await status(c)
        assert st["corruption_detected"] is True and st["availability_status"] == "corrupted"
        last = st["last_health_check"]
    # a restart after the file was put right: the record loaded and the stock-taking at start both show
    (d / "vae.bin").write_bytes(SMALL)
    async with running_engine(home, clock=clock, status_cache=True) as (eng, sock), AsyncClient(sock) as c:
        st = await status(c)
        assert st["last_health_check"] >= last and st["availability_status"] == "available" and not st["corruption_detected"]


async def test_cached_status_follows_updates_rollbacks_and_removals(home: Path):
    home.mkdir(parents=True)
    (home / "config.toml").write_text(CONFIG)
    (home / "catalog.toml").write_text(model_toml("m1", V1, version="1.0.0"))
    install_files(home, "m1", V1, version="1.0.0")
    async with running_engine(home, status_cache=True) as (eng, sock), AsyncClient(sock) as c, AsyncClient(sock) as user:
        await c.call("health.check", model_id="m1")
        assert (await status(c))["version"] == "1.0.0"
        (home / "catalog.toml").write_text(model_toml("m1", V2, version="2.0.0"))
        install_files(home, "m1", V2, version="2.0.0")
        await c.call("catalog.reload")
        lease = await user.call("models.acquire", model_id="m1")
        # an update starts, then waits for the lease to end
        await c.call("models.update", model_id="m1")
        assert (await status(c))["availability_status"] == "updating"

        async def waiting() -> bool:
            job = eng.updates.in_progress("m1")
            return job is not None and job.status == "waiting_for_release"

        await wait_until(waiting)
        st = await status(c)
        assert st["availability_status"] == "updating" and st["version"] == "1.0.0"
        # the lease ends: the update switches and ends
        await user.call("models.release", lease_id=lease["lease_id"])

        async def switched() -> bool:
            st = await status(c)
            return st["version"] == "2.0.0" and st["availability_status"] == "available"

        await wait_until(switched)
        assert eng.updates.in_progress("m1") is None
        assert (await status(c))["availability_status"] == "available"
        # a rollback
        rb = await c.call("models.rollback", model_id="m1")
        assert rb["success"] and rb["to_version"] == "1.0.0" and not rb["pending"]
        assert (await status(c))["version"] == "1.0.0"
        assert (await c.call("health.status", model_id="m1"))["version"] == "1.0.0"
        # a removal of every version
        await c.call("health.check", model_id="m1", check_type="full")
        assert (await status(c))["overall_health"] == "healthy"
        removed = await c.call("models.remove", model_id="m1")
        assert removed["success"] and removed["removed_versions"] == ["1.0.0", "2.0.0"]
        st = await status(c)
        assert st["availability_status"] == "missing" and st["integrity_score"] is None and st.get("overall_health") is None
        assert (await c.call("health.status", model_id="m1"))["overall_health"] == "unknown"
