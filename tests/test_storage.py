"""storage.* and analytics.cleanup over the socket: measured figures, retention plans, blockers, symlinks, crashes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from mavail.core.engine import Parts
from mavail.core.fallback.queue import RequestQueue
from mavail.core.storage import CleanupCrash
from mavail.rpc.client import AsyncClient, EngineUnavailable, RpcError
from tests.helpers import install_files, model_toml, running_engine, synthetic_bytes, wait_until
from tests.test_analytics import DAY, FakeClock, clocked_engine, iso_at

ROOT = Path(__file__).resolve().parent.parent
IDS = ["m-old", "m-recent", "m-freq", "m-leased", "m-busy", "m-queued"]


class QueueWaitingFor(RequestQueue):
    """The real queue, with requests reported waiting for `m-queued` too."""

    def has_waiting(self, model_id: str) -> bool:
        return model_id == "m-queued" or super().has_waiting(model_id)


def files_of(mid: str) -> list[tuple[str, bytes]]:
    return [("w/a.bin", synthetic_bytes(mid, 20_000 + 1000 * len(mid))), ("cfg.json", b"{}")]


def du(path: Path) -> int:
    """Allocated bytes of a tree, counted here with os.walk (no symlink followed; directories included)."""
    st = os.lstat(path)
    total = st.st_blocks * 512
    if os.path.islink(path) or not os.path.isdir(path):
        return total
    for root, dirs, files in os.walk(path, followlinks=False):
        for n in dirs + files:
            total += os.lstat(os.path.join(root, n)).st_blocks * 512
    return total


def setup_home(home: Path, outside: Path, ids: list[str] = IDS) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "catalog.toml").write_text("".join(model_toml(m, files_of(m)) for m in ids + ["m-gone"]))
    for m in ids:
        install_files(home, m, files_of(m))
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "precious.bin").write_bytes(b"keep me" * 1000)
    os.symlink(outside, home / "models" / "evil")  # a symlink planted in models/, pointing out of the home
    os.symlink(outside / "precious.bin", home / "models" / "m-old" / "1.0.0" / "link.bin")


async def installed_rows(eng: Any, mid: str) -> int:
    return await eng.db.read(lambda c: sum(c.execute(f"SELECT COUNT(*) FROM {t} WHERE model_id = ?", (mid,)).fetchone()[0]
                                           for t in ("installed_versions", "installed_files", "file_pieces")))


async def add_rows(eng: Any, mid: str, installed_at: float) -> None:
    def w(c: Any) -> None:
        c.execute("INSERT INTO installed_versions VALUES (?, '1.0.0', ?, 1)", (mid, installed_at))
        c.execute("INSERT INTO installed_files (model_id, version, path, size, sha256) VALUES (?, '1.0.0', 'cfg.json', 2, 'x')", (mid,))
        c.execute("INSERT INTO file_pieces (model_id, version, path, piece_size, idx, sha256) VALUES (?, '1.0.0', 'cfg.json', 8, 0, 'x')", (mid,))
    await eng.db.write(w)


async def test_info_plans_blockers_and_cleanup(home: Path):
    outside = home.parent / "outside"
    setup_home(home, outside)
    (home / "partial").mkdir(parents=True, exist_ok=True)
    old_part = home / "partial" / "m-gone.part"
    old_part.write_bytes(synthetic_bytes("p", 9000))
    fresh_part = home / "partial" / "m-recent.part"
    fresh_part.write_bytes(b"x" * 5000)
    now = time.time() + 60 * DAY  # every file looks 60 days old
    os.utime(old_part, (now - 10 * DAY, now - 10 * DAY))
    os.utime(fresh_part, (now - 3600, now - 3600))
    owned = home / "partial" / "m-busy" / "1.0.0" / "w" / "a.bin.part"  # old, but its download is running
    owned.parent.mkdir(parents=True)
    owned.write_bytes(b"y" * 3000)
    for q in (owned, owned.parent, owned.parent.parent, owned.parent.parent.parent):
        os.utime(q, (now - 30 * DAY, now - 30 * DAY))
    clock = FakeClock(now)
    async with running_engine(home, clock=clock, parts=Parts(queue=lambda e: e.build_queue(QueueWaitingFor)), status_cache=True) as (eng, sock), AsyncClient(sock) as c, \
            AsyncClient(sock) as holder:
        await add_rows(eng, "m-old", now - 60 * DAY)
        await c.call("analytics.record", model_id="m-recent", generation_time_s=1, success=True, timestamp=iso_at(now - DAY))
        await c.call("analytics.record_batch", events=[{"model_id": "m-freq", "generation_time_s": 1, "success": True,
                                                         "timestamp": iso_at(now - 40 * DAY + i)} for i in range(20)])
        lease = await holder.call("models.acquire", model_id="m-leased")
        eng.activity.acquire("m-busy", "checking")
        eng.activity.acquire("m-busy", "downloading")
        await c.subscribe(types=["model_availability_change"])

        info = await c.call("storage.info")
        s = info["storage_summary"]
        disk = psutil.disk_usage(str(home / "models"))
        assert s["total_capacity_bytes"] == disk.total
        assert abs(s["available_space_bytes"] - disk.free) < 64 * 1024**2
        rows = {r["model_id"]: r for r in info["models_storage"]}
        assert set(rows) == set(IDS) and s["models_count"] == len(IDS)
        for m in IDS:
            assert rows[m]["size_bytes"] == du(home / "models" / m), m
        assert s["models_size_bytes"] == sum(du(p) for p in (home / "models").iterdir())  # the link itself, not its target
        assert s["partial_size_bytes"] == du(old_part) + du(fresh_part) + du(home / "partial" / "m-busy")
        assert info["skipped"] == [{"name": "evil", "kind": "symlink", "size_bytes": du(home / "models" / "evil"),
                                    "reason": "symbolic link: not followed, never removed"}]
        tiers = {m: r["storage_tier"] for m, r in rows.items()}
        assert tiers == {"m-old": "cold", "m-recent": "hot", "m-freq": "cold", "m-leased": "hot", "m-busy": "cold", "m-queued": "cold"}
        parts = {p["name"]: p["orphaned"] for p in info["partial_downloads"]["entries"]}
        assert parts == {"m-gone.part": True, "m-recent.part": False, "m-busy": False}

        rec = await c.call("analytics.cleanup")
        by = {r["path"]: r for r in rec["recommendations"]}
        assert set(by) == {"models/m-old", "partial/m-gone.part"}
        assert by["models/m-old"]["reason"].startswith("Never used; installed 60 days ago")
        assert by["models/m-old"]["size_mb"] == pytest.approx(du(home / "models" / "m-old") / 1024**2)
        assert by["models/m-old"]["confidence"] >= 0.75 and by["models/m-old"]["action"] == "safe_to_remove"
        assert rec["potential_savings_gb"] * 1024**3 == pytest.approx(du(home / "models" / "m-old") + du(old_part))
        # min_unused_days larger than everything's age: only the partial data remains
        rec = await c.call("analytics.cleanup", min_unused_days=100)
        assert [r["path"] for r in rec["recommendations"]] == ["partial/m-gone.part"]

        dry = await c.call("storage.cleanup", dry_run=True)
        assert sorted(i["path"] for i in dry["plan"]) == ["models/m-old", "partial/m-gone.part"]
        why = {p["model_id"]: p["reason"] for p in dry["preserved"]}
        assert "leased" in why["m-leased"] and why["m-busy"] == "busy: checking, downloading" and "queued" in why["m-queued"]
        assert "used 1.0 days ago" in why["m-recent"] and "used 20 times" in why["m-freq"]
        assert dry["models_removed"] == ["m-old"] and dry["partial_removed"] == ["m-gone.part"] and (home / "models" / "m-old").is_dir()
        expected_freed = du(home / "models" / "m-old") + du(old_part)
        assert dry["bytes_freed"] == expected_freed  # what it would free

        res = await c.call("storage.cleanup", plan_id=dry["plan_id"])
        assert res["models_removed"] == ["m-old"] and res["partial_removed"] == ["m-gone.part"]
        assert res["bytes_freed"] == expected_freed
        assert res["summary"]["removed"] == 1 and res["summary"]["errors"] == 0
        assert not (home / "models" / "m-old").exists() and not old_part.exists() and fresh_part.exists()
        assert (outside / "precious.bin").read_bytes() == b"keep me" * 1000
        assert os.path.islink(home / "models" / "evil") and list((home / "trash").iterdir()) == []
        assert await installed_rows(eng, "m-old") == 0
        assert (await c.call("models.status", model_id="m-old"))["availability_status"] == "missing"
        assert (await c.call("models.status"))["models"]["m-old"]["availability_status"] == "missing"  # the cached status too
        async for ev in c.events():
            if ev["params"]["model_id"] == "m-old":
                assert ev["params"]["new_status"] == "missing"
                break
        with pytest.raises(RpcError) as ei:  # a plan runs once
            await c.call("storage.cleanup", plan_id=dry["plan_id"])
        assert ei.value.code == -32009

        # manual: blockers still win, whatever is asked
        res = await c.call("storage.cleanup", cleanup_type="manual", models_to_remove=["m-leased", "m-busy", "m-queued", "evil", "nope"])
        assert res["models_removed"] == [] and sorted(res["models_preserved"]) == ["m-busy", "m-leased", "m-queued"]
        assert {s["name"]: s["reason"] for s in res["skipped"]} == {"evil": "symbolic link: not followed, never removed", "nope": "no such model"}
        assert (outside / "precious.bin").exists()
        # a lease taken between the dry run and the run: the run keeps the model
        dry = await c.call("storage.cleanup", cleanup_type="manual", models_to_remove=["m-recent"], preserve_frequently_used=False, dry_run=True)
        assert [i["model_id"] for i in dry["plan"]] == ["m-recent"]
        lease2 = await holder.call("models.acquire", model_id="m-recent")
        res = await c.call("storage.cleanup", plan_id=dry["plan_id"])
        assert res["models_removed"] == [] and "leased" in {p["model_id"]: p["reason"] for p in res["preserved"]}["m-recent"]
        # released: it goes
        await holder.call("models.release", lease_id=lease2["lease_id"])
        await holder.call("models.release", lease_id=lease["lease_id"])
        res = await c.call("storage.cleanup", cleanup_type="manual", models_to_remove=["m-recent", "m-leased"], preserve_frequently_used=False)
        assert sorted(res["models_removed"]) == ["m-leased", "m-recent"]
        eng.activity.release("m-busy", "checking")
        eng.activity.release("m-busy", "downloading")
        assert owned.exists()


async def test_ceiling_floor_and_storage_warnings(home: Path):
    outside = home.parent / "outside"
    setup_home(home, outside, ["m-old", "m-recent", "m-freq"])
    now = time.time() + 60 * DAY
    async with clocked_engine(home, FakeClock(now)) as (eng, sock), AsyncClient(sock) as c:
        await c.call("analytics.record", model_id="m-recent", generation_time_s=1, success=True, timestamp=iso_at(now - 2 * DAY))
        await c.call("analytics.record", model_id="m-freq", generation_time_s=1, success=True, timestamp=iso_at(now - 20 * DAY))
        await c.subscribe(types=["storage_warning"])
        total = (await c.call("storage.info"))["storage_summary"]["models_size_bytes"]
        # a ceiling just under the current use: m-old goes by the age rule, then m-freq (warm, least recent); m-recent is hot
        ceiling_gb = (total - du(home / "models" / "m-old") - 1) / 1024**3
        await c.call("config.update", patch={"storage": {"max_gb": ceiling_gb}})
        ev = await anext_event(c)
        assert ev["params"]["warning_type"] == "ceiling" and ev["params"]["state"] == "exceeded" and ev["params"]["level"] == "critical"
        dry = await c.call("storage.cleanup", dry_run=True)
        plan = {i["model_id"]: i for i in dry["plan"]}
        assert set(plan) == {"m-old", "m-freq"} and "ceiling" in plan["m-freq"]["reason"] and plan["m-freq"]["action"] == "consider_removing"
        rec = await c.call("analytics.cleanup", storage_threshold_gb=1000)
        assert [r["model_id"] for r in rec["recommendations"]] == ["m-old"]
        # a floor above the free space: warning; back down: resolved
        await c.call("config.update", patch={"storage": {"min_free_gb": 10_000_000.0, "max_gb": 0.0}})
        got = {}
        while len(got) < 2:
            ev = await anext_event(c)
            got[ev["params"]["warning_type"]] = ev["params"]
        assert got["free_space"]["state"] == "low" and got["ceiling"]["level"] == "resolved"
        await c.call("config.update", patch={"storage": {"min_free_gb": 0.0}})
        ev = await anext_event(c)
        assert ev["params"]["warning_type"] == "free_space" and ev["params"]["level"] == "resolved"


async def anext_event(c: AsyncClient) -> dict[str, Any]:
    async def first() -> dict[str, Any]:
        async for ev in c.events():
            return ev
        raise AssertionError("connection closed")
    return await asyncio.wait_for(first(), 10)


@pytest.mark.parametrize("stage", ["after_journal", "after_move", "before_delete"])
async def test_crash_in_the_middle_of_a_cleanup(home: Path, stage: str):
    outside = home.parent / "outside"
    setup_home(home, outside, ["m-old"])

    def crash(at: str) -> None:
        if at == stage:
            raise CleanupCrash(at)

    async with running_engine(home, parts=Parts(storage=lambda e: e.build_storage(fault=crash))) as (eng, sock):
        await add_rows(eng, "m-old", time.time())
        with pytest.raises(CleanupCrash):
            await eng.storage.cleanup("manual", ["m-old"])
        moved = stage != "after_journal"
        assert (home / "models" / "m-old").exists() is not moved
        assert len(list((home / "trash").iterdir())) == int(moved)
    async with running_engine(home, status_cache=True) as (eng, sock), AsyncClient(sock) as c:
        assert list((home / "trash").iterdir()) == []
        assert (await c.call("models.status"))["models"]["m-old"]["availability_status"] == ("missing" if moved else "available")
        assert await eng.db.read(lambda c: c.execute("SELECT COUNT(*) FROM storage_trash").fetchone()[0]) == 0
        st = await c.call("models.status", model_id="m-old")
        if moved:  # finished: gone for good, rows too
            assert st["availability_status"] == "missing" and await installed_rows(eng, "m-old") == 0
        else:  # reverted: nothing was removed
            assert st["availability_status"] == "available" and await installed_rows(eng, "m-old") == 3
        assert (outside / "precious.bin").exists()


async def test_engine_killed_during_cleanup_recovers(home: Path):
    outside = home.parent / "outside"
    setup_home(home, outside, ["m-old", "m-recent"])
    sock = home / "k.sock"
    env = {**os.environ, "MAVAIL_CRASH_AT": "storage.after_move", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "mavail.rpc.cli", "engine", "--home", str(home), "--socket", str(sock)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async def up() -> bool:
            try:
                async with AsyncClient(sock, timeout=2) as c:
                    await c.call("session.hello")
                return True
            except (EngineUnavailable, OSError):
                return False

        await wait_until(up, timeout=30, interval=0.05)
        async with AsyncClient(sock, timeout=10) as c:
            with pytest.raises(EngineUnavailable):
                await c.call("storage.cleanup", cleanup_type="manual", models_to_remove=["m-old"])
        assert await asyncio.to_thread(proc.wait, 10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (home / "models" / "m-old").exists() and len(list((home / "trash").iterdir())) == 1
    async with running_engine(home, status_cache=True) as (eng, sock2), AsyncClient(sock2) as c:
        assert list((home / "trash").iterdir()) == []
        status = await c.call("models.status")
        assert status["models"]["m-old"]["availability_status"] == "missing"
        assert status["models"]["m-recent"]["availability_status"] == "available"
        assert (outside / "precious.bin").exists()


def expected_confidence(idle_days: float, keep_days: float, uses: int) -> float:
    """The documented formula, computed here independently."""
    import math

    past = 1 - math.exp(-max(0.0, idle_days - keep_days) / keep_days)
    history = 1 / (1 + math.log10(1 + uses))
    return round(0.5 + 0.45 * past * history, 3)


async def test_cleanup_confidence_follows_idle_time_and_usage_history(home: Path):
    """Confidence grows with the time past the retention threshold and shrinks with the model's usage history:
    different data, different (and the documented) figures; never one constant."""
    ids = ["m-never", "m-some", "m-once"]
    home.mkdir(parents=True, exist_ok=True)
    (home / "catalog.toml").write_text("".join(model_toml(m, files_of(m)) for m in ids))
    for m in ids:
        install_files(home, m, files_of(m))
    now = time.time() + 400 * DAY
    clock = FakeClock(now)
    async with clocked_engine(home, clock) as (eng, sock), AsyncClient(sock) as c:
        await add_rows(eng, "m-never", now - 45 * DAY)
        await c.call("analytics.record_batch", events=[{"model_id": "m-some", "generation_time_s": 1, "success": True,
                                                         "timestamp": iso_at(now - 100 * DAY - i)} for i in range(20)])
        await c.call("analytics.record", model_id="m-once", generation_time_s=1, success=True, timestamp=iso_at(now - 200 * DAY))

        async def confidences() -> dict[str, float]:
            rec = await c.call("analytics.cleanup")
            return {r["model_id"]: r["confidence"] for r in rec["recommendations"] if r["kind"] == "model"}

        got = await confidences()
        want = {"m-never": expected_confidence(45, 30, 0), "m-some": expected_confidence(100, 30, 20), "m-once": expected_confidence(200, 30, 1)}
        assert got == pytest.approx(want, abs=1e-3)
        assert len(set(got.values())) == 3
        # a second data set: more history for m-once lowers its confidence; a month later m-never's rises
        await c.call("analytics.record_batch", events=[{"model_id": "m-once", "generation_time_s": 1, "success": True,
                                                         "timestamp": iso_at(now - 200 * DAY - 10 - i)} for i in range(50)])
        clock.t = now + 30 * DAY
        got2 = await confidences()
        assert got2["m-once"] == pytest.approx(expected_confidence(230, 30, 51), abs=1e-3) and got2["m-once"] < got["m-once"]
        assert got2["m-never"] == pytest.approx(expected_confidence(75, 30, 0), abs=1e-3) and got2["m-never"] > got["m-never"]
        rec = await c.call("analytics.cleanup")
        for r in rec["recommendations"]:
            assert r["action"] == ("safe_to_remove" if r["confidence"] >= 0.75 else "consider_removing")


async def test_a_removal_that_fails_part_way_is_rescanned(home: Path):
    """A removal that fails after the move is reported as an error, and the model's status (cached) no longer says available."""
    outside = home.parent / "outside"
    setup_home(home, outside, ["m-old"])

    def fail(at: str) -> None:
        if at == "before_delete":
            raise OSError("disk went away")

    async with running_engine(home, status_cache=True, parts=Parts(storage=lambda e: e.build_storage(fault=fail))) as (eng, sock), \
            AsyncClient(sock) as c:
        await add_rows(eng, "m-old", time.time())
        assert (await c.call("models.status"))["models"]["m-old"]["availability_status"] == "available"
        res = await c.call("storage.cleanup", cleanup_type="manual", models_to_remove=["m-old"])
        assert res["models_removed"] == [] and res["errors"] == [{"name": "m-old", "kind": "model", "error": "OSError"}]
        assert (await c.call("models.status"))["models"]["m-old"]["availability_status"] == "missing"
    async with running_engine(home) as (eng, sock):  # the next start finishes the removal
        assert list((home / "trash").iterdir()) == [] and await installed_rows(eng, "m-old") == 0


async def test_cleanup_forgets_the_health_record_of_what_it_removes(home: Path):
    """A corrupted model removed by cleanup reads missing, not corrupted, and a request no longer tries to repair it."""
    files = [("w.bin", synthetic_bytes("hc", 300_000))]
    home.mkdir(parents=True)
    (home / "config.toml").write_text("[health]\nscheduler_tick_s = 3600\n")
    (home / "catalog.toml").write_text(model_toml("m1", files))
    path = install_files(home, "m1", files) / "w.bin"
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        await c.call("health.check", model_id="m1", check_type="full")
        damaged = bytearray(path.read_bytes())
        damaged[1000] ^= 0xFF
        path.write_bytes(bytes(damaged))
        await c.call("health.check", model_id="m1", check_type="full")
        assert (await c.call("models.status"))["models"]["m1"]["availability_status"] == "corrupted"
        res = await c.call("storage.cleanup", cleanup_type="manual", models_to_remove=["m1"])
        assert res["models_removed"] == ["m1"]
        st = (await c.call("models.status"))["models"]["m1"]
        assert st["availability_status"] == "missing" and not st["corruption_detected"], st
        assert st["integrity_score"] is None and st["last_health_check"] is None
        health = await c.call("health.status", model_id="m1")
        assert health["installed"] is False
        req = await c.call("models.request", model_id="m1", auto_download=False)
        assert req["action_taken"] != "repair_attempted", req


async def test_cleanup_reasons_count_days_in_words(home: Path):
    """A model installed or used less than a day ago reads "less than a day", one day reads "1 day", never "0 days"/"1 days"."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "catalog.toml").write_text("".join(model_toml(m, files_of(m)) for m in ("fresh", "day-old")))
    for m in ("fresh", "day-old"):
        install_files(home, m, files_of(m))
    old = time.time() - 1.2 * 86400
    for p in (home / "models" / "day-old").rglob("*"):
        os.utime(p, (old, old))
    async with running_engine(home) as (eng, sock):
        async with AsyncClient(sock) as c:
            await c.call("analytics.record", model_id="day-old", generation_time_s=1, success=True,
                         timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(old)))
            rec = await c.call("analytics.cleanup", min_unused_days=0)
    reasons = {r["model_id"]: r["reason"] for r in rec["recommendations"]}
    assert reasons["fresh"].startswith("Never used; installed less than a day ago"), reasons
    assert reasons["day-old"].startswith("Not used for 1 day"), reasons
    assert not any(" 0 days" in r or " 1 days" in r for r in reasons.values())
