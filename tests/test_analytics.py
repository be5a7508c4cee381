"""analytics.* over the socket: figures against an independent computation from the same events, period edges, trends, preload."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from mavail.core.config import Config
from mavail.core.engine import Engine
from mavail.core.paths import HomeLayout
from mavail.rpc.client import AsyncClient, RpcError
from mavail.rpc.server import Server
from tests.helpers import install_files, model_toml, running_engine, synthetic_bytes, wait_until

DAY = 86400
NOW = datetime(2024, 3, 15, 10, 30, tzinfo=timezone.utc).timestamp()
MODELS = ["m-a", "m-b", "m-c"]


class FakeClock:
    """Wall time set by the test; monotonic time real."""

    def __init__(self, t: float) -> None:
        self.t = t

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return time.monotonic()


@contextlib.asynccontextmanager
async def clocked_engine(home: Path, clock: Any) -> AsyncIterator[tuple[Engine, Path]]:
    """Like tests.helpers.running_engine, with an injected clock."""
    layout = HomeLayout(home)
    layout.ensure()
    async with Engine(layout, Config.load(layout.config_file, environ={}), clock=clock) as engine:
        server = Server(engine, home / "e.sock")
        task = asyncio.create_task(server.serve(handle_signals=False))
        await asyncio.wait_for(server.ready.wait(), 10)
        try:
            yield engine, home / "e.sock"
        finally:
            engine.shutdown_requested.set()
            await asyncio.wait_for(task, 10)


def write_catalog(home: Path, ids: list[str] = MODELS) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "catalog.toml").write_text("".join(model_toml(m, [(f"{m}.bin", synthetic_bytes(m, 200))]) for m in ids))


def iso_at(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def make_events(seed: int = 7, n: int = 900) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    today0 = NOW - NOW % DAY
    out = []
    for i in range(n):
        ts = NOW - rnd.uniform(0, 400 * DAY)
        if i % 50 == 0:
            ts = today0 - rnd.randrange(0, 40) * DAY  # exactly midnight
        elif i % 50 == 1:
            ts = today0 - rnd.randrange(0, 40) * DAY - 0.001  # just before midnight
        ts = round(ts, 3)
        out.append({"model_id": rnd.choice(MODELS), "generation_time_s": round(rnd.uniform(0.5, 9.0), 3),
                    "success": rnd.random() < 0.85, "timestamp": iso_at(ts), "_ts": ts})
    return out


def expected(events: list[dict[str, Any]], start: float, end: float, model: str | None = None) -> dict[str, Any]:
    """The figures computed from scratch (the test's own arithmetic, not the engine's)."""
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"uses": 0, "ok": 0, "t": 0.0, "hours": Counter(), "days": defaultdict(lambda: [0, 0, 0.0])})
    for e in events:
        ts = e["_ts"]
        if not (start <= ts < end) or (model and e["model_id"] != model):
            continue
        p = per[e["model_id"]]
        p["uses"] += 1
        p["hours"][int(ts // 3600) % 24] += 1
        d = p["days"][datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d")]
        d[0] += 1
        if e["success"]:
            p["ok"] += 1
            p["t"] += e["generation_time_s"]
            d[1] += 1
            d[2] += e["generation_time_s"]
    return per


def check_model(got: dict[str, Any], exp: dict[str, Any], days: float) -> None:
    assert got["total_uses"] == exp["uses"]
    assert got["successful_uses"] == exp["ok"]
    assert got["success_rate"] == (pytest.approx(exp["ok"] / exp["uses"]) if exp["uses"] else None)
    assert got["average_generation_time"] == (pytest.approx(exp["t"] / exp["ok"]) if exp["ok"] else None)
    assert got["uses_per_day"] == pytest.approx(exp["uses"] / days)
    assert got["hourly_usage"] == [exp["hours"].get(h, 0) for h in range(24)]
    top = sorted(exp["hours"], key=lambda h: (-exp["hours"][h], h))[:5]
    assert got["peak_usage_hours"] == top
    for day in got.get("last_30_days_usage", []):
        u, s, t = exp["days"].get(day["date"], (0, 0, 0.0))
        assert day["uses"] == u, day
        assert day["avg_time"] == (pytest.approx(t / s) if s else None)


async def test_usage_figures_match_independent_computation(home: Path):
    write_catalog(home)
    events = make_events()
    clock = FakeClock(NOW)
    async with clocked_engine(home, clock) as (eng, sock), AsyncClient(sock) as c:
        # most in batches (out of time order: running totals must absorb back-dated events), some one by one
        for i in range(0, 800, 200):
            res = await c.call("analytics.record_batch", events=[{k: v for k, v in e.items() if k != "_ts"} for e in events[i:i + 200]])
            assert res["recorded"] == 200
        for e in events[800:]:
            await c.call("analytics.record", **{k: v for k, v in e.items() if k != "_ts"})
        today0 = NOW - NOW % DAY
        cases = [
            ({"period": "day"}, today0, today0 + DAY),
            ({}, today0 - 6 * DAY, today0 + DAY),
            ({"period": "month"}, today0 - 29 * DAY, today0 + DAY),
            ({"period": "year"}, today0 - 364 * DAY, today0 + DAY),
            ({"start_date": "2024-01-10", "end_date": "2024-02-20"}, datetime(2024, 1, 10, tzinfo=timezone.utc).timestamp(),
             datetime(2024, 2, 21, tzinfo=timezone.utc).timestamp()),
            # not on midnight, with a time-zone offset: partial days at both edges
            ({"start_date": "2024-01-10T13:15:00+02:00", "end_date": "2024-03-01T05:00:00-05:00"},
             datetime(2024, 1, 10, 11, 15, tzinfo=timezone.utc).timestamp(), datetime(2024, 3, 1, 10, tzinfo=timezone.utc).timestamp()),
            # shorter than a day, across midnight
            ({"start_date": "2024-03-10T20:00:00Z", "end_date": "2024-03-11T04:00:00Z"},
             datetime(2024, 3, 10, 20, tzinfo=timezone.utc).timestamp(), datetime(2024, 3, 11, 4, tzinfo=timezone.utc).timestamp()),
        ]
        for params, start, end in cases:
            res = await c.call("analytics.usage", include_series=True, **params)
            exp = expected(events, start, end)
            days = (end - start) / DAY
            assert res["range"]["days"] == pytest.approx(days), params
            assert set(res["models"]) == set(exp), params
            for mid, e in exp.items():
                check_model(res["models"][mid], e, days)
            s = res["summary"]
            assert s["total_generations"] == sum(e["uses"] for e in exp.values())
            ranked = sorted(exp, key=lambda m: (-exp[m]["uses"], m))
            assert s["most_used_model"] == ranked[0] and s["least_used_model"] == ranked[-1]
            assert s["total_models_used"] == len(exp)
            assert s["average_success_rate"] == pytest.approx(sum(e["ok"] / e["uses"] for e in exp.values()) / len(exp))
            assert sum(d["uses"] for d in s["daily_usage"]) == s["total_generations"]
            assert len(s["daily_usage"]) == len({int(t // DAY) for t in (start, end - 1e-6)} | set(range(int(start // DAY), int((end - 1e-6) // DAY) + 1)))
            one = await c.call("analytics.usage", model_id="m-b", **params)
            check_model(one["models"]["m-b"], expected(events, start, end, "m-b")["m-b"], days)
        plain = await c.call("analytics.usage", period="month")
        assert "last_30_days_usage" not in plain["models"]["m-a"] and plain["summary"]["daily_usage"]
        one = await c.call("analytics.usage", model_id="m-a", period="month")
        assert len(one["models"]["m-a"]["last_30_days_usage"]) == 30
        # the rollup's running totals are the sums of its days, after back-dated batches
        rows = await eng.db.read(lambda conn: conn.execute("SELECT model_id, day, uses, c_uses, requests, c_requests FROM usage_daily "
                                                           "ORDER BY model_id, day").fetchall())
        run: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for mid, _day, uses, c_uses, reqs, c_reqs in rows:
            run[mid][0] += uses
            run[mid][1] += reqs
            assert (c_uses, c_reqs) == tuple(run[mid])
        assert run["*"][0] == len(events)
        # status fields from the in-memory summary
        mine = [e for e in events if e["model_id"] == "m-a"]
        st = await c.call("models.status", model_id="m-a")
        ok = [e for e in mine if e["success"]]
        assert st["average_generation_time"] == pytest.approx(sum(e["generation_time_s"] for e in ok) / len(ok))
        assert st["last_used"] == iso_at(max(e["_ts"] for e in mine))[:19] + "Z"
        recent = [e for e in mine if e["_ts"] >= today0 - 29 * DAY]
        assert st["usage_frequency"] == pytest.approx(len(recent) / 30)
        before = await c.call("analytics.usage", period="year", include_series=False)
    # after a restart: the same figures from the database
    async with clocked_engine(home, clock) as (eng, sock), AsyncClient(sock) as c:
        assert await c.call("analytics.usage", period="year", include_series=False) == before
        st2 = await c.call("models.status", model_id="m-a")
        assert (st2["average_generation_time"], st2["last_used"], st2["usage_frequency"]) == \
            (pytest.approx(st["average_generation_time"]), st["last_used"], pytest.approx(st["usage_frequency"]))


async def test_period_edges_and_validation(home: Path):
    write_catalog(home)
    today0 = NOW - NOW % DAY
    async with clocked_engine(home, FakeClock(NOW)) as (eng, sock), AsyncClient(sock) as c:
        for ts in (today0, today0 - 0.001, today0 - 6 * DAY, today0 - 6 * DAY - 0.001):
            await c.call("analytics.record", model_id="m-a", generation_time_s=1.0, success=True, timestamp=iso_at(ts))
        day = await c.call("analytics.usage", period="day")
        assert day["models"]["m-a"]["total_uses"] == 1  # midnight today is in, a millisecond before is not
        assert day["range"] == {"period": "day", "start": "2024-03-15T00:00:00Z", "end": "2024-03-16T00:00:00Z", "days": 1.0}
        week = await c.call("analytics.usage", period="week")
        assert week["models"]["m-a"]["total_uses"] == 3
        # the same instant written with an offset
        r = await c.call("analytics.usage", start_date="2024-03-15T02:00:00+02:00", end_date="2024-03-15")
        assert r["models"]["m-a"]["total_uses"] == 1
        r = await c.call("analytics.usage", start_date="2024-03-14", end_date="2024-03-14")  # a date-only end is inclusive
        assert r["models"]["m-a"]["total_uses"] == 1 and r["range"]["days"] == 1.0
        r = await c.call("analytics.usage", model_id="m-c")
        assert r["models"]["m-c"]["total_uses"] == 0 and r["models"]["m-c"]["success_rate"] is None
        bad = [({"period": "decade"}, "period"), ({"start_date": "yesterday"}, "start_date"),
               ({"start_date": "2024-03-10", "end_date": "2024-03-01"}, "start_date"),
               ({"start_date": "2000-01-01", "end_date": "2024-01-01"}, "start_date")]
        for params, field in bad:
            with pytest.raises(RpcError) as ei:
                await c.call("analytics.usage", **params)
            assert ei.value.code == -32602 and ei.value.details["field"] == field
        with pytest.raises(RpcError) as ei:
            await c.call("analytics.usage", model_id="nope")
        assert ei.value.code == -32001
        for params, code, field in [
            ({"model_id": "nope", "generation_time_s": 1, "success": True}, -32001, None),
            ({"model_id": "m-a", "generation_time_s": -1, "success": True}, -32602, "generation_time_s"),
            ({"model_id": "m-a", "generation_time_s": 1, "success": 1}, -32602, "success"),
            ({"model_id": "m-a", "generation_time_s": 1, "success": True, "timestamp": iso_at(NOW + 3600)}, -32602, "timestamp"),
            ({"model_id": "m-a", "generation_time_s": 1, "success": True, "parameters": {"p": "x" * 20000}}, -32602, "parameters"),
        ]:
            with pytest.raises(RpcError) as ei:
                await c.call("analytics.record", **params)
            assert ei.value.code == code and (field is None or ei.value.details["field"] == field)
        # a batch is all or nothing
        with pytest.raises(RpcError) as ei:
            await c.call("analytics.record_batch", events=[{"model_id": "m-b", "generation_time_s": 1, "success": True},
                                                           {"model_id": "m-b", "generation_time_s": "x", "success": True}])
        assert ei.value.details["field"] == "events[1].generation_time_s"
        r = await c.call("analytics.usage", model_id="m-b")
        assert r["models"]["m-b"]["total_uses"] == 0


async def test_performance_trends(home: Path):
    write_catalog(home)
    async with clocked_engine(home, FakeClock(NOW)) as (eng, sock), AsyncClient(sock) as c:
        evs = []
        for mid, recent_ok, recent_time in (("m-a", 1.0, 2.0), ("m-b", 0.5, 2.0), ("m-c", 1.0, 2.0)):
            for i in range(40):  # 20 days back: mostly successful at 2 s (m-c: slow and failing then)
                ok = (i % 10 != 0) if mid != "m-c" else (i % 2 == 0)
                evs.append({"model_id": mid, "generation_time_s": 2.0 if mid != "m-c" else 3.0, "success": ok,
                            "timestamp": iso_at(NOW - 20 * DAY + i * 3600)})
            for i in range(10):  # the last 24 hours
                evs.append({"model_id": mid, "generation_time_s": recent_time, "success": (i / 10) < recent_ok,
                            "timestamp": iso_at(NOW - 3600 * (i + 1))})
        await c.call("analytics.record_batch", events=evs)
        res = await c.call("analytics.performance")
        t = res["performance_trends"]
        assert t["m-a"]["trend"] == "stable"
        assert t["m-b"]["trend"] == "degrading" and t["m-b"]["current_score"] == pytest.approx(0.5)
        assert any("success rate" in i for i in t["m-b"]["performance_issues"])
        assert t["m-c"]["trend"] == "improving"
        assert t["m-a"]["uses_last_24h"] == 10 and t["m-a"]["uses_last_30_days"] == 50
        assert res["system_performance"]["overall_score"] == pytest.approx(sum(x["current_score"] for x in t.values()) / 3)
        # a threshold larger than any change: everything is stable
        await c.call("config.update", patch={"analytics": {"trend_threshold": 0.9}})
        res = await c.call("analytics.performance")
        assert {v["trend"] for v in res["performance_trends"].values()} == {"stable"}


async def test_preload_and_requests(home: Path):
    files = [("w.bin", synthetic_bytes("w", 300))]
    write_catalog(home, ["m-a", "m-b", "m-c"])
    with (home / "catalog.toml").open("a") as f:
        f.write(model_toml("m-old", files, version="1.1.0"))
    install_files(home, "m-a", [("m-a.bin", synthetic_bytes("m-a", 200))])
    install_files(home, "m-old", files, version="1.0.0")
    async with clocked_engine(home, FakeClock(NOW)) as (eng, sock):
        import hashlib

        def rows(conn: Any) -> None:
            conn.execute("INSERT INTO installed_versions VALUES ('m-old', '1.0.0', ?, 1)", (NOW - 50 * DAY,))
            conn.execute("INSERT INTO installed_files (model_id, version, path, size, sha256) VALUES ('m-old', '1.0.0', 'w.bin', 300, ?)",
                         (hashlib.sha256(files[0][1]).hexdigest(),))

        await eng.db.write(rows)
        await eng.presence.refresh()
        async with AsyncClient(sock) as c:
            for _ in range(5):
                eng.analytics.record_request("m-b")  # what models.request does, ready or not
            eng.analytics.record_request("m-c")
            for mid in ("m-a", "m-old"):
                for _ in range(4):
                    await c.call("analytics.record", model_id=mid, generation_time_s=1.0, success=True)
            st = await c.call("models.status", model_id="m-old")
            assert st["update_available"] is True
            res = await c.call("analytics.preload")
            got = {s["model_id"]: s for s in res["suggestions"]}
            assert set(got) == {"m-b", "m-old"}  # m-a is installed and current; m-c was asked for once
            assert "not installed" in got["m-b"]["reason"] and got["m-b"]["requests"] == 5
            assert "outdated" in got["m-old"]["reason"]
            assert 0 < got["m-old"]["confidence"] < got["m-b"]["confidence"] <= 0.95
            u = await c.call("analytics.usage", model_id="m-b")
            assert u["models"]["m-b"]["requests"] == 5 and u["models"]["m-b"]["total_uses"] == 0
            st = await c.call("models.status", model_id="m-b")
            assert st["total_requests"] == 5 and st["last_used"] is None


async def test_system_performance_comes_from_recorded_downloads_and_checks(home: Path):
    """download_success_rate, average_download_speed_mbps and health_check_success_rate come from the downloads and
    health_checks tables: null with zero samples before any data, then the values the rows give, changing with them."""
    import sqlite3

    from mavail.testing.mirror import Mirror, Synthetic
    from tests.dlhelpers import dl_engine, wait_status, write_home
    from tests.helpers import wait_until

    def rows(sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(home / "state.db") as conn:
            return conn.execute(sql).fetchall()

    def expected_speed() -> float:
        done = rows("SELECT d.completed_at - d.created_at, (SELECT SUM(size) FROM download_files f WHERE f.model_id = d.model_id)"
                    " FROM downloads d WHERE d.status = 'completed'")
        return sum(b for _, b in done) / sum(t for t, _ in done) / (1024 * 1024)

    with Mirror() as m:
        write_home(home, m, {"m1": {"a.bin": Synthetic("a", 400_000)}, "m2": {"b.bin": Synthetic("b", 300_000)},
                             "gone": {"g.bin": b"abc"}}, config={"health": {"scheduler_tick_s": 3600}})
        m.remove("gone/g.bin")
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            sp = (await c.call("analytics.performance"))["system_performance"]
            assert sp["download_success_rate"] is None and sp["download_samples"] == 0
            assert sp["average_download_speed_mbps"] is None and sp["download_speed_samples"] == 0
            assert sp["health_check_success_rate"] is None and sp["health_check_samples"] == 0

            async def quick_checked(n: int) -> bool:
                return len(rows("SELECT 1 FROM health_checks WHERE trigger = 'download' AND status = 'completed'")) >= n

            await eng.downloads.start("m1")
            await wait_status(eng, "m1", "completed")
            await wait_until(lambda: quick_checked(1))
            sp = (await c.call("analytics.performance"))["system_performance"]
            assert sp["download_success_rate"] == 1.0 and sp["download_samples"] == 1
            assert sp["average_download_speed_mbps"] == pytest.approx(expected_speed(), rel=1e-6) and sp["download_speed_samples"] == 1
            assert sp["health_check_success_rate"] == 1.0 and sp["health_check_samples"] == 1

            # a second data set: another download, one that fails, and a check that finds damage
            await eng.downloads.start("m2")
            await eng.downloads.start("gone", max_retries=0)
            await wait_status(eng, "m2", "completed")
            await wait_status(eng, "gone", "failed")
            await wait_until(lambda: quick_checked(2))
            with open(home / "models" / "m1" / "1.0.0" / "a.bin", "r+b") as fh:
                fh.truncate(1000)
            res = await c.call("health.check", model_id="m1", check_type="full")
            assert res["result"]["overall_health"] == "corrupted"
            sp = (await c.call("analytics.performance"))["system_performance"]
            assert sp["download_success_rate"] == pytest.approx(2 / 3) and sp["download_samples"] == 3
            assert sp["average_download_speed_mbps"] == pytest.approx(expected_speed(), rel=1e-6) and sp["download_speed_samples"] == 2
            checks = rows("SELECT json_extract(result, '$.overall_health') FROM health_checks WHERE status IN ('completed', 'failed')")
            passed = sum(1 for (h,) in checks if h != "corrupted")
            assert len(checks) == 3 and passed == 2
            assert sp["health_check_success_rate"] == pytest.approx(passed / len(checks)) and sp["health_check_samples"] == 3


async def test_usage_status_fields_follow_every_change_with_the_status_cache_on(home: Path):
    """With the status board caching, models.status shows new usage fields after a record, a batch, a request,
    a UTC day turn and a change of analytics.frequency_window_days."""
    write_catalog(home)
    clock = FakeClock(NOW)
    async with running_engine(home, clock=clock, status_cache=True) as (eng, sock), AsyncClient(sock) as c:
        async def status(mid: str) -> dict[str, Any]:
            # every model's status, as cached (asking for one model rescans it, which recomposes it anyway)
            return (await c.call("models.status"))["models"][mid]

        before = await status("m-a")  # composed and cached now
        assert before["usage_frequency"] == 0.0 and before["last_used"] is None

        await c.call("analytics.record", model_id="m-a", generation_time_s=2.0, success=True)
        st = await status("m-a")
        assert st["total_uses"] == 1 and st["last_used"] == "2024-03-15T10:30:00Z"
        assert st["usage_frequency"] == pytest.approx(1 / 30) and st["average_generation_time"] == pytest.approx(2.0)

        await status("m-b")
        await c.call("analytics.record_batch", events=[
            {"model_id": "m-a", "generation_time_s": 4.0, "success": True},
            {"model_id": "m-a", "generation_time_s": 1.0, "success": False},
            {"model_id": "m-b", "generation_time_s": 1.0, "success": True, "timestamp": iso_at(NOW - 2 * DAY)},
        ])
        st = await status("m-a")
        assert st["total_uses"] == 3 and st["usage_frequency"] == pytest.approx(3 / 30) and st["average_generation_time"] == pytest.approx(3.0)
        st = await status("m-b")
        assert st["total_uses"] == 1 and st["last_used"] == "2024-03-13T10:30:00Z"

        assert "total_requests" not in await status("m-c")  # never used nor requested: no usage fields yet
        await c.call("models.request", model_id="m-c", auto_download=False)
        st = await status("m-c")
        assert st["total_requests"] == 1 and st["last_requested"] == "2024-03-15T10:30:00Z"

        # 29 days on, m-b's use (two days before NOW) has left the 30-day window; m-a's have not
        clock.t = NOW + 29 * DAY

        async def frequencies() -> tuple[float, float]:
            return (await status("m-a"))["usage_frequency"], (await status("m-b"))["usage_frequency"]

        async def turned() -> bool:
            return await frequencies() == (pytest.approx(3 / 30), 0.0)

        await wait_until(turned, timeout=10, interval=0.05)

        # a longer window takes m-b's use in again, a shorter one leaves m-a's out
        await c.call("config.update", patch={"analytics": {"frequency_window_days": 40}})

        async def widened() -> bool:
            return await frequencies() == (pytest.approx(3 / 40), pytest.approx(1 / 40))

        await wait_until(widened, timeout=10, interval=0.05)
        await c.call("config.update", patch={"analytics": {"frequency_window_days": 7}})
        assert await frequencies() == (0.0, 0.0)
