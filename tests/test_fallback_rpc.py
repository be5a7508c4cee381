"""fallback.suggest, fallback.queue*, models.request through the socket, with a real engine and SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mavail.rpc.client import AsyncClient, RpcError
from tests.fallback_helpers import FILES, FakeDownloads, NoGpu, Overridable, next_event, write_catalog
from mavail.core.engine import Parts, health_ports
from mavail.core.health import HealthService
from tests.helpers import running_engine, wait_until

GPU16 = {"MAVAIL_GPU_VRAM_GB": "16"}


async def test_suggest_scores_and_strategy(home: Path):
    write_catalog(home, installed=("ltx-t2v", "wan-i2v"))
    async with running_engine(home, config_env=GPU16, nvml=NoGpu()) as (eng, sock), AsyncClient(sock) as c, AsyncClient(sock) as watcher:
        await watcher.subscribe(types=["fallback_suggestion"])
        res = await c.call("fallback.suggest", requested_model="wan-t2v",
                           requirements={"resolution": "1280x704"}, user_preferences={"max_wait_time_minutes": 30})
        ids = [s["suggested_model"] for s in res["suggestions"]]
        # text-only request: never the image model, though it is ready and of the same family
        assert "wan-i2v" not in ids and "wan-t2v" not in ids
        assert ids[0] == "ltx-t2v"
        top = res["suggestions"][0]
        assert 0 <= top["compatibility_score"] <= 1 and top["availability_status"] == "available"
        assert top["vram_fit"] == "fits" and top["performance_difference"] == 1.0
        assert top["estimated_quality_difference"] == "lower" and "ready now" in top["reason"]
        # wan-ti2v needs 20 GiB at 1280x704; it is offered at 832x480, which fits 16 GiB
        ti2v = next(s for s in res["suggestions"] if s["suggested_model"] == "wan-ti2v")
        assert ti2v["vram_fit"] == "reduce" and ti2v["suggested_resolution"] == "832x480"
        assert ti2v["availability_status"] == "missing"
        strategy = res["fallback_strategy"]
        assert strategy["strategy_type"] in ("alternative_model", "hybrid_approach")
        assert strategy["suggested_model"] == "ltx-t2v" and strategy["user_message"]
        assert res["free_vram_gb"] == 16.0 and res["vram_source"] == "config"
        ev = await next_event(watcher, "fallback_suggestion")
        assert ev["requested_model"] == "wan-t2v" and ev["suggested_model"] == "ltx-t2v"
        assert ev["compatibility_score"] == top["compatibility_score"] and ev["user_action_required"] is True
        # with an image: only models that take one
        res = await c.call("fallback.suggest", requested_model="wan-t2v", requirements={"has_image": True})
        assert {s["suggested_model"] for s in res["suggestions"]} <= {"wan-i2v", "wan-ti2v"}
        # errors name the field
        with pytest.raises(RpcError) as exc:
            await c.call("fallback.suggest", requested_model="wan-t2v", requirements={"quality": "ultra"})
        assert exc.value.code == -32602 and exc.value.details["field"] == "requirements.quality"
        with pytest.raises(RpcError) as exc:
            await c.call("fallback.suggest", requested_model="nope")
        assert exc.value.code == -32001


async def test_request_ready_missing_and_no_download(home: Path):
    write_catalog(home, installed=("ltx-t2v",))
    async with running_engine(home, config_env=GPU16, nvml=NoGpu(), parts=Parts(downloads=lambda e: FakeDownloads(e, eta=90.0))) \
            as (eng, sock), AsyncClient(sock) as c:
        fake = eng.downloads
        ready = await c.call("models.request", model_id="ltx-t2v")
        assert ready["action_taken"] == "model_ready" and ready["success"] is True
        assert ready["path"] == str(home / "models" / "ltx-t2v" / "1.0.0") and "suggestions" not in ready
        assert ready["fallback_strategy"]["fallback_needed"] is False
        # ready but too big at the resolution asked: still ready, with a resolution that fits
        big = await c.call("models.request", model_id="ltx-t2v", requirements={"resolution": "1920x1088"})
        assert big["action_taken"] == "model_ready"
        assert big["fallback_strategy"]["strategy_type"] in ("reduce_requirements", "alternative_model")
        # auto_download off: an error with a decision
        off = await c.call("models.request", model_id="wan-t2v", auto_download=False)
        assert off["success"] is False and off["action_taken"] == "error"
        assert off["fallback_strategy"]["suggested_model"] == "ltx-t2v"
        assert [s["suggested_model"] for s in off["suggestions"]][0] == "ltx-t2v"
        # a download service: the download starts, with the scheduler's estimate
        started = await c.call("models.request", model_id="wan-t2v", priority="high")
        assert started["action_taken"] == "download_started" and started["download_id"] == "dl_wan-t2v"
        assert started["estimated_wait_seconds"] == 90.0 and fake.calls == [("wan-t2v", "high")]
        again = await c.call("models.request", model_id="wan-t2v")
        assert again["action_taken"] == "download_in_progress" and again["estimated_wait_seconds"] == 90.0
        assert again["availability_status"] == "downloading"


async def test_request_corrupted_calls_health_and_analytics(home: Path):
    write_catalog(home, installed=("ltx-t2v",))
    (home / "models/ltx-t2v/1.0.0/w.bin").write_bytes(b"short")
    health = Overridable(lambda e: HealthService(**health_ports(e)))
    analytics = Overridable(lambda e: e.build_analytics())
    async with running_engine(home, config_env={**GPU16, "MAVAIL_FALLBACK_REPAIR_WAIT_S": "0.3"}, nvml=NoGpu(),
                              parts=Parts(health=health.build, analytics=analytics.build)) as (eng, sock), AsyncClient(sock) as c:
        seen: list[str] = []

        class Health:
            def is_busy(self, model_id: str) -> bool:
                return False

            async def repair(self, model_id: str) -> Any:
                seen.append(model_id)
                result = {"success": True, "repair_id": "r1", "actions_taken": ["redownload"], "bytes_redownloaded": 0}
                return SimpleNamespace(to_dict=lambda: result)

        class Analytics:
            def record_request(self, model_id: str) -> None:
                seen.append("req:" + model_id)

            def summary_of(self, model_id: str) -> None:
                return None  # no generations recorded

        res = await c.call("models.request", model_id="ltx-t2v")
        # the real health service tries (its mirror at 127.0.0.1:9 refuses, so the repair cannot finish well)
        assert res["action_taken"] == "repair_attempted" and "repair" in res
        health.override = Health()
        analytics.override = Analytics()
        res = await c.call("models.request", model_id="ltx-t2v")
        assert res["action_taken"] == "repair_attempted" and res["repair"]["finished"] is True
        assert res["repair"]["result"]["repair_id"] == "r1"

        class BusyHealth:
            def is_busy(self, model_id: str) -> bool:
                return True

            async def repair(self, model_id: str) -> dict[str, Any]:
                raise AssertionError("a second repair must not start")

        health.override = BusyHealth()
        res = await c.call("models.request", model_id="ltx-t2v")
        assert res["action_taken"] == "repair_attempted" and res["repair"]["finished"] is False
        assert seen == ["req:ltx-t2v", "ltx-t2v", "req:ltx-t2v"]


async def test_queue_order_release_and_events(home: Path):
    write_catalog(home, installed=("ltx-t2v",))
    async with running_engine(home, config_env=GPU16, nvml=NoGpu(), parts=Parts(downloads=lambda e: FakeDownloads(e, eta=120.0))) as (eng, sock), AsyncClient(sock) as c, AsyncClient(sock) as watcher:
        fake = eng.downloads
        await watcher.subscribe(types=["queued_request_ready"])
        q_low = await c.call("fallback.queue", model_id="wan-t2v", request={"prompt": "a"}, priority="low")
        q_high = await c.call("fallback.queue", model_id="wan-t2v", request={"prompt": "b"}, priority="high")
        q_norm = await c.call("fallback.queue", model_id="wan-t2v", request={"prompt": "c"}, priority="medium")
        q_norm2 = await c.call("fallback.queue", model_id="wan-t2v", request={"prompt": "d"})
        assert q_low["position"] == 1 and q_high["position"] == 1 and q_norm["position"] == 2 and q_norm2["position"] == 3
        assert q_high["estimated_wait_seconds"] == 120.0 and q_high["estimated_wait_time_minutes"] == 2.0
        assert q_high["estimated_start_time"] and q_high["status"] == "waiting"
        assert ("wan-t2v", "low") in fake.calls and ("wan-t2v", "high") in fake.calls
        lst = await c.call("fallback.queue_list")
        assert [e["queue_id"] for e in lst["queue"]] == [q_high["queue_id"], q_norm["queue_id"], q_norm2["queue_id"], q_low["queue_id"]]
        assert [e["position"] for e in lst["queue"]] == [1, 2, 3, 4]
        assert lst["queue"][0]["request"] == {"prompt": "b"} and lst["queue"][0]["priority"] == "high"
        # estimates are the scheduler's current ones, not a constant per position
        fake.eta = 30.0
        lst = await c.call("fallback.queue_list")
        assert {e["estimated_wait_seconds"] for e in lst["queue"]} == {30.0}
        assert eng.queue.has_waiting("wan-t2v") and not eng.queue.has_waiting("ltx-t2v")
        assert (await c.call("models.status", model_id="wan-t2v"))["queued_requests"] == 4
        cancelled = await c.call("fallback.queue_cancel", queue_id=q_norm2["queue_id"])
        assert cancelled["status"] == "cancelled"
        with pytest.raises(RpcError) as exc:
            await c.call("fallback.queue_cancel", queue_id=q_norm2["queue_id"])
        assert exc.value.code == -32006
        with pytest.raises(RpcError) as exc:
            await c.call("fallback.queue_cancel", queue_id="queue_nope")
        assert exc.value.code == -32009
        # the download completes: released in queue order, to the queuing connection and to subscribers
        await fake.complete("wan-t2v")
        got = [await next_event(c, "queued_request_ready") for _ in range(3)]
        assert [g["queue_id"] for g in got] == [q_high["queue_id"], q_norm["queue_id"], q_low["queue_id"]]
        assert got[0]["path"] == str(home / "models" / "wan-t2v" / "1.0.0") and got[0]["request"] == {"prompt": "b"}
        seen = [await next_event(watcher, "queued_request_ready") for _ in range(3)]
        assert {s["queue_id"] for s in seen} == {g["queue_id"] for g in got}
        assert (await c.call("fallback.queue_list"))["queue"] == []
        assert not eng.queue.has_waiting("wan-t2v")
        # queuing for a ready model releases at once
        now = await c.call("fallback.queue", model_id="ltx-t2v", request={})
        assert now["status"] == "ready" and now["estimated_wait_seconds"] == 0.0
        ev = await next_event(c, "queued_request_ready")
        assert ev["queue_id"] == now["queue_id"]
        rows = await eng.db.fetchall("SELECT status, COUNT(*) FROM fallback_queue GROUP BY status ORDER BY status")
        assert [tuple(r) for r in rows] == [("cancelled", 1), ("ready", 4)]


async def test_queue_expiry(home: Path):
    write_catalog(home)
    async with running_engine(home, parts=Parts(downloads=lambda e: FakeDownloads(e, eta=None))) as (eng, sock), AsyncClient(sock) as c:
        q = await c.call("fallback.queue", model_id="wan-t2v", request={"prompt": "x"}, max_wait_time_minutes=0.004)
        assert q["estimated_wait_seconds"] is None
        ev = await next_event(c, "queued_request_expired", timeout=10)
        assert ev["queue_id"] == q["queue_id"] and ev["model_id"] == "wan-t2v" and ev["waited_seconds"] >= 0.2
        assert ev["availability_status"] == "downloading"
        assert not eng.queue.has_waiting("wan-t2v")
        with pytest.raises(RpcError) as exc:
            await c.call("fallback.queue_cancel", queue_id=q["queue_id"])
        assert exc.value.code == -32006 and exc.value.details["status"] == "expired"


async def test_queue_survives_restart(home: Path):
    write_catalog(home)
    async with running_engine(home, parts=Parts(downloads=lambda e: FakeDownloads(e))) as (eng, sock), AsyncClient(sock) as c:
        keep = await c.call("fallback.queue", model_id="wan-t2v", request={"prompt": "keep"}, priority="high")
        arrive = await c.call("fallback.queue", model_id="ltx-t2v", request={"prompt": "arrives"})
        short = await c.call("fallback.queue", model_id="wan-i2v", request={"prompt": "short"}, max_wait_time_minutes=5)
        long_ = await c.call("fallback.queue", model_id="wan-i2v", request={"prompt": "long"}, max_wait_time_minutes=600)
    # while the engine is down: ltx-t2v arrives, and the short request's time runs out
    write_catalog(home, installed=("ltx-t2v",))
    import sqlite3

    with sqlite3.connect(home / "state.db") as db:
        db.execute("UPDATE fallback_queue SET expires_at = expires_at - 600 WHERE queue_id = ?", (short["queue_id"],))
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        lst = await c.call("fallback.queue_list")
        assert [e["queue_id"] for e in lst["queue"]] == [keep["queue_id"], long_["queue_id"]]
        assert lst["queue"][0]["request"] == {"prompt": "keep"} and lst["queue"][0]["position"] == 1
        rows = {r[0]: r[1] for r in await eng.db.fetchall("SELECT queue_id, status FROM fallback_queue")}
        assert rows[arrive["queue_id"]] == "ready" and rows[short["queue_id"]] == "expired"
        assert eng.queue.has_waiting("wan-t2v")
        # new requests queue behind the old ones of the same priority
        new = await c.call("fallback.queue", model_id="wan-t2v", request={}, priority="high")
        assert new["position"] == 2


async def test_leases_released_when_client_process_dies(home: Path):
    import signal
    import subprocess
    import sys

    write_catalog(home, installed=("ltx-t2v",))
    async with running_engine(home) as (eng, sock):
        code = ("import sys, time\nfrom rpc.client import Client\nc = Client(sys.argv[1])\n"
                "print(c.call('models.acquire', model_id='ltx-t2v')['lease_id'], flush=True)\ntime.sleep(60)\n")
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, str(sock), stdout=subprocess.PIPE)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.startswith(b"lease_")
        assert eng.leases.is_leased("ltx-t2v")
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await wait_until(lambda: not eng.leases.is_leased("ltx-t2v"))


async def test_performance_difference_from_measured_generation_times(home: Path):
    """performance_difference comes from the measured mean generation times when both models have them (basis says
    so), from the catalog speed tiers otherwise; different data give different, documented values."""
    write_catalog(home, installed=("ltx-t2v",))
    async with running_engine(home, config_env=GPU16, nvml=NoGpu()) as (eng, sock), AsyncClient(sock) as c:

        async def ltx() -> dict[str, Any]:
            res = await c.call("fallback.suggest", requested_model="wan-t2v")
            return next(s for s in res["suggestions"] if s["suggested_model"] == "ltx-t2v")

        s = await ltx()
        assert s["performance_basis"] == "catalog_speed_tier" and s["performance_difference"] == 1.0  # fast vs slow: (2 - 0) / 2

        def gens(mid: str, seconds: float, n: int = 3) -> list[dict[str, Any]]:
            return [{"model_id": mid, "generation_time_s": seconds, "success": True} for _ in range(n)]

        await c.call("analytics.record_batch", events=gens("wan-t2v", 20.0) + gens("ltx-t2v", 5.0)
                     + [{"model_id": "ltx-t2v", "generation_time_s": 99.0, "success": False}])  # failures are not timed
        s = await ltx()
        assert s["performance_basis"] == "measured_generation_time"
        assert s["performance_difference"] == pytest.approx((20.0 - 5.0) / 20.0, abs=1e-4)
        assert s["measured_generation_time_s"] == pytest.approx(5.0) and s["requested_generation_time_s"] == pytest.approx(20.0)
        await c.call("analytics.record_batch", events=gens("ltx-t2v", 25.0))  # now a mean of 15 s
        s = await ltx()
        assert s["performance_difference"] == pytest.approx((20.0 - 15.0) / 20.0, abs=1e-4)
        await c.call("analytics.record_batch", events=gens("ltx-t2v", 45.0, 6))  # a mean of 30 s: slower than the requested model
        s = await ltx()
        assert s["performance_difference"] == pytest.approx((20.0 - 30.0) / 30.0, abs=1e-4) and s["performance_difference"] < 0


async def test_request_repairs_a_corrupted_model_with_the_real_health_service(home: Path):
    """A corrupted model, a mirror with the right bytes: models.request repairs it and answers with the repair's result."""
    from mavail.testing.mirror import Mirror

    with Mirror() as m:
        for mid, files in FILES.items():
            for path, data in files:
                m.add(f"{mid}/{path}", data)
        write_catalog(home, base_url=m.url(""), installed=("ltx-t2v",))
        good = FILES["ltx-t2v"][0][1]
        (home / "models/ltx-t2v/1.0.0/w.bin").write_bytes(b"x" * len(good))  # right size, wrong bytes
        async with running_engine(home, config_env={**GPU16, "MAVAIL_FALLBACK_REPAIR_WAIT_S": "10"}, nvml=NoGpu()) as (eng, sock), \
                AsyncClient(sock) as c:
            await c.call("health.check", model_id="ltx-t2v", check_type="full", wait=True)
            assert (await c.call("models.status", model_id="ltx-t2v"))["availability_status"] == "corrupted"
            res = await c.call("models.request", model_id="ltx-t2v")
            assert res["action_taken"] == "model_ready", res
            assert res["repair"]["finished"] is True and res["repair"]["result"]["success"] is True, res["repair"]
            assert res["repair"]["result"]["bytes_redownloaded"] > 0
        assert (home / "models/ltx-t2v/1.0.0/w.bin").read_bytes() == good
