"""Health checks over the socket: quick and full checks, every damaged state, scores, alerts, scheduling."""

from __future__ import annotations

import asyncio
import os
from typing import Any
import sqlite3
from pathlib import Path

import pytest

from mavail.core.engine import Parts, health_ports
from mavail.core.errors import Conflict
from mavail.core.health import HealthService
from mavail.core.health.scores import Sample, performance
from mavail.rpc.client import AsyncClient, RpcError
from tests.helpers import install_files, model_toml, running_engine, synthetic_bytes

MIB = 1024 * 1024
FILES = [("unet/model.bin", synthetic_bytes("unet", 3 * MIB + 1234)), ("vae.bin", synthetic_bytes("vae", 700_000))]


def setup_home(home: Path, model_id: str = "m1", files=FILES) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("[downloads]\npiece_size_mb = 1\n[health]\nscheduler_tick_s = 3600\n")
    (home / "catalog.toml").write_text(model_toml(model_id, files))
    return install_files(home, model_id, files)


def rows(home: Path, sql: str, *args):
    with sqlite3.connect(home / "state.db") as c:
        return c.execute(sql, args).fetchall()


async def test_first_full_check_records_pieces_and_installs(home: Path):
    setup_home(home)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        st = await c.call("health.status", model_id="m1")
        assert st["overall_health"] == "degraded"  # never verified yet
        assert {i["type"] for i in st["issues"]} == {"never_verified"}
        res = await c.call("health.check", model_id="m1", check_type="full")
        assert res["success"] and res["check_id"].startswith("check_")
        r = res["result"]
        assert r["overall_health"] == "healthy" and r["integrity_score"] == 1.0 and r["issues"] == []
        assert r["bytes_hashed"] == sum(len(d) for _, d in FILES)
        status = await c.call("models.status", model_id="m1")
        assert status["integrity_score"] == 1.0 and status["last_health_check"] and status["corruption_detected"] is False
        assert all(f["verified"] for f in status["files"])
        assert (await c.call("health.check_status", check_id=res["check_id"]))["status"] == "completed"
        with pytest.raises(RpcError) as ei:
            await c.call("health.check_status", check_id="check_nope")
        assert ei.value.code == -32009
    assert rows(home, "SELECT COUNT(*) FROM file_pieces WHERE path = 'unet/model.bin'")[0][0] == 4
    assert rows(home, "SELECT version, is_current FROM installed_versions") == [("1.0.0", 1)]
    # a second full check uses the pieces: the same bytes hashed once, still healthy
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        st = await c.call("health.status", model_id="m1")
        assert st["overall_health"] == "healthy" and st["last_full_check"]
        res = await c.call("health.check", model_id="m1", check_type="integrity")
        assert res["result"]["overall_health"] == "healthy"


async def test_flipped_byte_found_and_located(home: Path):
    d = setup_home(home)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        await c.call("health.check", model_id="m1")
        sub = await c.subscribe(types=["model_health_alert", "model_availability_change"])
        assert sub
        p = d / "unet/model.bin"
        st = os.stat(p)
        with open(p, "r+b") as fh:  # flip one byte in piece 2, keep mtime: only a full check can see it
            fh.seek(2 * MIB + 77)
            b = fh.read(1)
            fh.seek(2 * MIB + 77)
            fh.write(bytes([b[0] ^ 0xFF]))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        quick = await c.call("health.check", model_id="m1", check_type="quick")
        assert quick["result"]["overall_health"] == "healthy"
        full = (await c.call("health.check", model_id="m1", check_type="full"))["result"]
        assert full["overall_health"] == "corrupted" and full["corruption_detected"]
        issue = next(i for i in full["issues"] if i["type"] == "changed_bytes")
        assert issue["file"] == "unet/model.bin" and issue["details"]["broken_pieces"] == [2]
        assert issue["recommendation"] == "integrity_fix"
        total = sum(len(x) for _, x in FILES)
        assert full["integrity_score"] == pytest.approx((total - MIB) / total, abs=1e-6)
        assert full["recommendations"]
        status = await c.call("models.status", model_id="m1")
        assert status["availability_status"] == "corrupted" and status["is_available"] is False
        events = []
        async for ev in c.events():
            events.append(ev)
            if any(e["method"] == "model_availability_change" for e in events) and any(e["method"] == "model_health_alert" for e in events):
                break
        alert = next(e["params"] for e in events if e["method"] == "model_health_alert")
        assert alert["alert_type"] == "corruption_detected" and alert["severity"] == "critical" and alert["recommended_action"] == "auto_repair"
        change = next(e["params"] for e in events if e["method"] == "model_availability_change")
        assert change["new_status"] == "corrupted"
        # the damage is remembered across a restart, and a quick check of the unchanged file keeps it
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        st = await c.call("health.status", model_id="m1")
        assert st["overall_health"] == "corrupted"
        assert (await c.call("models.status", model_id="m1"))["availability_status"] == "corrupted"


@pytest.mark.parametrize("damage", ["truncate", "append", "delete", "chmod", "symlink", "touch"])
async def test_damaged_states(home: Path, damage: str, tmp_path: Path):
    d = setup_home(home)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not yours")
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        await c.call("health.check", model_id="m1")
        p = d / "unet/model.bin"
        if damage == "truncate":
            os.truncate(p, MIB + 5)
        elif damage == "append":
            with open(p, "ab") as fh:
                fh.write(b"junk")
        elif damage == "delete":
            p.unlink()
        elif damage == "chmod":
            p.chmod(0)
        elif damage == "symlink":
            p.unlink()
            p.symlink_to(outside)
        elif damage == "touch":
            os.utime(p, (1, 1))
        (d / "notes.txt").write_text("mine")
        quick = (await c.call("health.check", model_id="m1", check_type="quick"))["result"]
        full = (await c.call("health.check", model_id="m1", check_type="full"))["result"]
        types = {i["type"]: i for i in full["issues"] if i["file"] == "unet/model.bin"}
        extra = [i for i in full["issues"] if i["type"] == "extra_file"]
        assert extra and extra[0]["file"] == "notes.txt" and extra[0]["severity"] == "info"
        expected = {"truncate": "truncated", "append": "extended", "delete": "missing", "chmod": "unreadable", "symlink": "symlink"}
        if damage == "touch":
            assert "changed_since_verified" in {i["type"] for i in quick["issues"]}
            assert quick["overall_health"] == "degraded"
            assert full["overall_health"] == "healthy"  # same bytes: verified again
            return
        want = expected[damage]
        assert want in types, full["issues"]
        assert want in {i["type"] for i in quick["issues"]}
        assert full["overall_health"] == "corrupted"
        assert all(i["recommendation"] for i in full["issues"])
        if damage == "truncate":
            assert types[want]["recommendation"] == "integrity_fix"
            f = next(x for x in full["files"] if x["path"] == "unet/model.bin")
            assert f["broken_pieces"] == [1, 2, 3] and f["good_bytes"] == MIB
        if damage == "append":
            assert types[want]["recommendation"] == "integrity_fix"
        if damage == "chmod":
            assert types[want]["recommendation"] == "fix_permissions"
        if damage == "symlink":
            assert types[want]["recommendation"] == "redownload"
        assert (d / "notes.txt").read_text() == "mine"
    assert outside.read_bytes() == b"not yours"


async def test_check_refused_while_downloading_or_repairing(home: Path):
    setup_home(home)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        with eng.activity.hold("m1", "downloading"):
            with pytest.raises(RpcError) as ei:
                await c.call("health.check", model_id="m1")
            assert ei.value.code == -32002 and ei.value.details["activity"] == ["downloading"]
            done = await eng.health.run_scheduled_once()
            assert {"model_id": "m1", "skipped": "busy"} in done
        with pytest.raises(RpcError) as ei:
            await c.call("health.check", model_id="nope")
        assert ei.value.code == -32001


async def test_check_without_waiting_and_joining(home: Path):
    setup_home(home)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        a = await c.call("health.check", model_id="m1", wait=False)
        b = await c.call("health.check", model_id="m1", wait=False)
        assert a["status"] == "running" and a["result"] is None
        assert b["check_id"] == a["check_id"]  # joined the running full check

        async def done():
            return (await c.call("health.check_status", check_id=a["check_id"]))["status"] == "completed"

        from tests.helpers import wait_until

        await wait_until(done)


async def test_read_budget_paces_a_check(home: Path):
    setup_home(home, files=[("big.bin", synthetic_bytes("big", 4 * MIB))])
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await c.call("health.check", model_id="m1", max_read_mbps=16.0)
        assert loop.time() - t0 >= 0.2  # 4 MiB at 16 MiB/s: at least 0.25 s less the first chunk


class FakeSamples:
    """Generation samples handed to the health service in place of analytics' (set `rows` at any time)."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float, bool]] = []

    async def __call__(self, model_id: str, limit: int) -> list[tuple[float, float, bool]]:
        return self.rows[:limit]


def health_with(**overrides: Any) -> Parts:
    """Parts that build the real health service with some of its ports replaced."""
    return Parts(health=lambda eng: HealthService(**{**health_ports(eng), **overrides}))


def test_performance_formula():
    base = [Sample(i, 10.0, True) for i in range(20)]
    assert performance(base, 1.5, 3.0, 0.8, 5).score == 1.0
    slow = base + [Sample(100 + i, 20.0, True) for i in range(10)]
    p = performance(slow, 1.5, 3.0, 0.8, 5)
    assert p.ratio == 2.0 and p.score == 0.5 and p.degraded
    failing = base + [Sample(100 + i, 10.0, i % 2 == 0) for i in range(10)]
    p = performance(failing, 1.5, 3.0, 0.8, 5)
    assert p.success_rate == 0.5 and p.score == 0.5 and p.degraded
    assert performance(base[:3], 1.5, 3.0, 0.8, 5).score is None


async def test_performance_check_and_system_health(home: Path):
    setup_home(home)
    samples = FakeSamples()
    async with running_engine(home, parts=health_with(generation_samples=samples)) as (eng, sock), AsyncClient(sock) as c:
        await c.call("health.check", model_id="m1")
        samples.rows = [(i, 10.0, True) for i in range(20)] + [(100 + i, 25.0, True) for i in range(10)]
        sub = await c.subscribe(types=["model_health_alert"])
        assert sub
        res = (await c.call("health.check", model_id="m1", check_type="performance"))["result"]
        assert res["performance_score"] == 0.25 and res["overall_health"] == "degraded"
        assert any(i["type"] == "performance_degraded" for i in res["issues"])
        async for ev in c.events():
            assert ev["params"]["alert_type"] == "performance_degraded"
            break
        allh = await c.call("health.status")
        sysh = allh["system_health"]
        assert sysh["degraded_models"] == 1 and sysh["overall_score"] == 0.25 and sysh["last_system_check"]
        assert (await c.call("models.status", model_id="m1"))["performance_score"] == 0.25


async def test_performance_check_reads_what_analytics_recorded(home: Path):
    """The default performance source: generations recorded through analytics.record_batch, still in its write
    buffer when the check runs (the source flushes it); requests are not generations."""
    import time

    from mavail.core.timeutil import iso

    setup_home(home)
    (home / "config.toml").write_text("[downloads]\npiece_size_mb = 1\n[health]\nscheduler_tick_s = 3600\n"
                                      "[analytics]\nflush_interval_ms = 10000\n")
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        await c.call("health.check", model_id="m1")
        t0 = int(time.time()) - 3600
        events = [{"model_id": "m1", "generation_time_s": 10.0 if i < 20 else 25.0, "success": True, "timestamp": iso(t0 + i)}
                  for i in range(30)]
        assert (await c.call("analytics.record_batch", events=events))["recorded"] == 30
        eng.analytics.record_request("m1")
        res = (await c.call("health.check", model_id="m1", check_type="performance"))["result"]
        assert res["performance_score"] == 0.25 and res["overall_health"] == "degraded"
        samples = await eng.analytics.generation_samples("m1")
        assert len(samples) == 30 and samples[0] == (t0 + 29, 25.0, True) and samples[-1] == (t0, 10.0, True)


async def test_scheduler_staggers_and_repairs_nothing_healthy(home: Path):
    home.mkdir(parents=True)
    (home / "config.toml").write_text("[downloads]\npiece_size_mb = 1\n[health]\nscheduler_tick_s = 3600\ncheck_interval_hours = 1.0\n")
    cat = ""
    for i in range(6):
        files = [("w.bin", synthetic_bytes(f"s{i}", 10_000))]
        cat += model_toml(f"s{i}", files)
        install_files(home, f"s{i}", files)
    (home / "catalog.toml").write_text(cat)

    class Clock:
        t = 1_000_000.0

        def time(self):
            return self.t

        def monotonic(self):
            return self.t

    clock = Clock()
    from mavail.core.config import Config
    from mavail.core.engine import Engine
    from mavail.core.paths import HomeLayout

    layout = HomeLayout(home)
    async with Engine(layout, Config.load(layout.config_file, environ={}), clock=clock) as eng:
        ran: list[str] = []
        for step in range(5):  # a quarter of the interval at a time: a few models each, never all at once
            clock.t += 900
            done = await eng.health.run_scheduled_once()
            ran += [d["model_id"] for d in done if d.get("check")]
            assert len({d["model_id"] for d in done if d.get("check")}) < 6
        # the first pass of the full interval checked each model (quick found it never verified, so a full check followed)
        assert sorted(set(ran)) == [f"s{i}" for i in range(6)]
        st = await eng.health.status()
        assert st["system_health"]["healthy_models"] == 6


async def test_check_api_errors(home: Path):
    setup_home(home)
    async with running_engine(home) as (eng, sock):
        with pytest.raises(Conflict):
            with eng.activity.hold("m1", "repairing"):
                await eng.health.check("m1", "quick")


async def test_unchecked_missing_and_removed_models_have_no_score(home: Path):
    """No score for what was never measured: a model never verified, a missing one, a removed one (also after a restart);
    the system score is null until a model is checked, then the mean over checked models only."""
    setup_home(home)
    with open(home / "catalog.toml", "a") as fh:
        fh.write(model_toml("m2", [("b.bin", synthetic_bytes("b", 1000))]))
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        allh = await c.call("health.status")
        sysh = allh["system_health"]
        assert sysh["overall_score"] is None and sysh["checked_models"] == 0 and sysh["healthy_models"] == 0
        assert allh["models"]["m1"]["integrity_score"] is None  # files copied in by hand, never verified
        assert allh["models"]["m2"]["integrity_score"] is None and allh["models"]["m2"]["overall_health"] == "unknown"
        assert (await c.call("models.status", model_id="m2"))["integrity_score"] is None
        await c.call("health.check", model_id="m1", check_type="full")
        sysh = (await c.call("health.status"))["system_health"]
        assert sysh["overall_score"] == 1.0 and sysh["checked_models"] == 1 and sysh["healthy_models"] == 1
        await c.call("models.remove", model_id="m1")
        allh = await c.call("health.status")
        m1 = allh["models"]["m1"]
        assert m1["installed"] is False and m1["overall_health"] != "healthy" and m1["integrity_score"] is None
        assert allh["system_health"]["healthy_models"] == 0 and allh["system_health"]["overall_score"] is None
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:  # the last check's record must not bring it back
        allh = await c.call("health.status")
        m1 = allh["models"]["m1"]
        assert m1["installed"] is False and m1["overall_health"] == "unknown" and m1["integrity_score"] is None
        assert allh["system_health"]["healthy_models"] == 0 and allh["system_health"]["overall_score"] is None
        st = await c.call("models.status", model_id="m1")
        assert st["integrity_score"] is None and st.get("overall_health") != "healthy"
