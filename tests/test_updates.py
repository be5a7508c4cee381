"""Versions: check_updates, update beside the old version, switch after leases, rollback, keep_versions, remove, crashes."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from mavail.rpc.client import AsyncClient, Client, RpcError
from tests.helpers import install_files, model_toml, running_engine, short_tmpdir, start_engine_process, synthetic_bytes, wait_until

V1 = [("w.bin", synthetic_bytes("v1", 200_000)), ("cfg.json", b'{"v": 1}')]
V2 = [("w.bin", synthetic_bytes("v2", 210_000)), ("cfg.json", b'{"v": 2}')]


def setup(home: Path, keep: int = 1) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f"[downloads]\npiece_size_mb = 1\n[health]\nscheduler_tick_s = 3600\n[updates]\nkeep_versions = {keep}\n")
    (home / "catalog.toml").write_text(model_toml("m1", V1, version="1.0.0"))
    install_files(home, "m1", V1, version="1.0.0")


def publish_v2(home: Path, place_files: bool = True) -> None:
    """The catalog moves to 2.0.0; its files are placed beside 1.0.0 (as a finished download would leave them)."""
    (home / "catalog.toml").write_text(model_toml("m1", V2, version="2.0.0"))
    if place_files:
        install_files(home, "m1", V2, version="2.0.0")


def db(home: Path, sql: str, *args):
    with sqlite3.connect(home / "state.db") as c:
        return c.execute(sql, args).fetchall()


async def finished(c: AsyncClient, version: str) -> None:
    async def ok():
        st = await c.call("models.status", model_id="m1")
        return st["version"] == version and st["availability_status"] == "available"

    await wait_until(ok)


async def test_update_switch_keep_rollback_and_prune(home: Path):
    setup(home)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        await c.call("health.check", model_id="m1")  # installs 1.0.0 (verified, current)
        assert (await c.call("models.check_updates"))["updates"] == []
        with pytest.raises(RpcError) as ei:
            await c.call("models.update", model_id="m1")
        assert ei.value.code == -32006
        publish_v2(home)
        await c.call("catalog.reload")
        ups = (await c.call("models.check_updates"))["updates"]
        assert ups == [{"model_id": "m1", "current_version": "1.0.0", "latest_version": "2.0.0", "size_bytes": 210_008, "updating": False}]
        st = await c.call("models.status", model_id="m1")
        assert st["update_available"] is True and st["version"] == "1.0.0"
        res = await c.call("models.update", model_id="m1")
        assert res["success"] and res["from_version"] == "1.0.0" and res["to_version"] == "2.0.0"
        await finished(c, "2.0.0")
        st = await c.call("models.status", model_id="m1")
        assert st["path"].endswith("m1/2.0.0") and st["update_available"] is False and st["verified"]
        assert (home / "models/m1/1.0.0/w.bin").exists()  # kept: keep_versions = 1
        assert db(home, "SELECT version, is_current FROM installed_versions ORDER BY version") == [("1.0.0", 0), ("2.0.0", 1)]
        # rollback switches back; an update then switches forward again without downloading
        rb = await c.call("models.rollback", model_id="m1")
        assert rb["to_version"] == "1.0.0" and not rb["pending"]
        assert (await c.call("models.status", model_id="m1"))["version"] == "1.0.0"
        await c.call("models.update", model_id="m1")
        await finished(c, "2.0.0")
        # keep no previous version: the next prune removes 1.0.0 (moved to trash, then deleted)
        await c.call("config.update", patch={"updates": {"keep_versions": 0}})
        assert await eng.updates.prune("m1") == ["1.0.0"]
        assert not (home / "models/m1/1.0.0").exists() and not list((home / "trash").iterdir())
        assert db(home, "SELECT version FROM installed_versions") == [("2.0.0",)]
        with pytest.raises(RpcError) as ei:
            await c.call("models.rollback", model_id="m1")
        assert ei.value.code == -32006


async def test_update_waits_for_the_lease(home: Path):
    setup(home)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c, AsyncClient(sock) as user:
        await c.call("health.check", model_id="m1")
        lease = await user.call("models.acquire", model_id="m1")
        publish_v2(home)
        await c.call("catalog.reload")
        await c.call("models.update", model_id="m1")

        async def waiting():
            job = eng.updates.in_progress("m1")
            return job is not None and job.status == "waiting_for_release"

        await wait_until(waiting)
        st = await c.call("models.status", model_id="m1")
        assert st["availability_status"] == "updating" and st["is_available"] is True and st["version"] == "1.0.0"
        with pytest.raises(RpcError) as ei:
            await c.call("models.remove", model_id="m1")
        assert ei.value.code == -32002
        await user.call("models.release", lease_id=lease["lease_id"])
        await finished(c, "2.0.0")
        # a rollback under a lease waits too
        lease = await user.call("models.acquire", model_id="m1")
        rb = await c.call("models.rollback", model_id="m1")
        assert rb["pending"] is True
        assert (await c.call("models.status", model_id="m1"))["version"] == "2.0.0"
        await user.call("models.release", lease_id=lease["lease_id"])
        await finished(c, "1.0.0")


async def test_failed_verification_keeps_the_old_version(home: Path):
    setup(home)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        await c.call("health.check", model_id="m1")
        publish_v2(home)
        p = home / "models/m1/2.0.0/w.bin"
        data = bytearray(p.read_bytes())
        data[100] ^= 1
        p.write_bytes(bytes(data))
        await c.call("catalog.reload")
        sub = await c.subscribe(types=["model_health_alert"])
        assert sub
        await c.call("models.update", model_id="m1")
        async for ev in c.events():
            if ev["params"]["alert_type"] == "update_failed":
                assert "full check" in ev["params"]["message"]
                break
        st = await c.call("models.status", model_id="m1")
        assert st["version"] == "1.0.0" and st["availability_status"] == "available"


async def test_remove(home: Path):
    setup(home)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c, AsyncClient(sock) as user:
        await c.call("health.check", model_id="m1")
        with eng.activity.hold("m1", "checking"):
            with pytest.raises(RpcError) as ei:
                await c.call("models.remove", model_id="m1")
            assert ei.value.code == -32002
        lease = await user.call("models.acquire", model_id="m1")
        with pytest.raises(RpcError) as ei:
            await c.call("models.remove", model_id="m1")
        assert ei.value.code == -32002
        await user.call("models.release", lease_id=lease["lease_id"])
        with pytest.raises(RpcError) as ei:
            await c.call("models.remove", model_id="m1", version="9.9")
        assert ei.value.code == -32006
        res = await c.call("models.remove", model_id="m1")
        assert res["removed_versions"] == ["1.0.0"] and res["freed_bytes"] == 200_008
        assert not (home / "models/m1").exists() and not list((home / "trash").iterdir())
        st = await c.call("models.status", model_id="m1")
        assert st["availability_status"] == "missing"
        assert db(home, "SELECT COUNT(*) FROM installed_files")[0][0] == 0
        with pytest.raises(RpcError) as ei:
            await c.call("models.remove", model_id="nope")
        assert ei.value.code == -32001


async def test_remove_interrupted_after_the_move_is_finished_at_start(home: Path):
    setup(home)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        await c.call("health.check", model_id="m1")
    # as if the engine died right after moving the directory to trash
    (home / "trash").mkdir(exist_ok=True)
    os.rename(home / "models/m1/1.0.0", home / "trash/remove--m1--1.0.0--dead")
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        assert db(home, "SELECT COUNT(*) FROM installed_versions")[0][0] == 0
        assert not list((home / "trash").iterdir())
        assert (await c.call("models.status", model_id="m1"))["availability_status"] == "missing"


# --- kill the engine in the middle of an update switch -----------------------------------
@pytest.mark.parametrize("crash_at,expect", [("update.before_switch", "1.0.0"), ("update.in_switch", "1.0.0"), ("update.after_switch", "2.0.0")])
def test_killed_mid_switch_restarts_consistent(crash_at: str, expect: str):
    with short_tmpdir() as tmp:
        home, sock = tmp / "home", tmp / "e.sock"
        setup(home)
        proc = start_engine_process(home, sock)
        try:
            with Client(sock, timeout=30) as c:
                c.call("health.check", model_id="m1")
        finally:
            proc.terminate()
            proc.wait(10)
        publish_v2(home)
        proc = start_engine_process(home, sock, {"MAVAIL_CRASH_AT": crash_at})
        try:
            with Client(sock, timeout=30) as c:
                c.call("models.update", model_id="m1")
            assert proc.wait(20) == -9
        finally:
            if proc.poll() is None:
                proc.kill()
        proc = start_engine_process(home, sock)
        try:
            with Client(sock, timeout=30) as c:
                # whatever the crash left current (`expect`), the interrupted update goes on by itself to 2.0.0
                assert c.call("models.status", model_id="m1")["version"] in (expect, "2.0.0")
                wait_for_version(c, "2.0.0")
                assert c.call("health.check", model_id="m1")["result"]["overall_health"] == "healthy"
        finally:
            proc.terminate()
            proc.wait(10)
        assert db(home, "SELECT COUNT(*) FROM installed_versions WHERE model_id = 'm1' AND is_current = 1")[0][0] == 1
        assert db(home, "SELECT status FROM model_updates ORDER BY started_at") == [("completed",)]


def wait_for_version(c: Client, version: str, timeout: float = 30) -> None:
    """Poll models.status until `version` is current, available and verified."""
    deadline = time.monotonic() + timeout
    while True:
        st = c.call("models.status", model_id="m1")
        if st["version"] == version and st["availability_status"] == "available" and st["verified"]:
            return
        assert time.monotonic() < deadline, st
        time.sleep(0.05)


def test_killed_mid_download_update_resumes_by_itself(monkeypatch: pytest.MonkeyPatch):
    """Kill the engine while an update downloads; restarted, it finishes the update with no further call, and a
    models.update made meanwhile joins it instead of answering CONFLICT."""
    import threading

    from mavail.testing import mirror as mirror_mod

    release = threading.Event()
    # a stalled response waits for `release` (not for a time): the test decides when the download may go on
    monkeypatch.setattr(mirror_mod._Handler, "_stall", lambda self, seconds: release.wait(60))
    with short_tmpdir() as tmp, mirror_mod.Mirror() as m:
        home, sock = tmp / "home", tmp / "e.sock"
        setup(home)
        proc = start_engine_process(home, sock)
        try:
            with Client(sock, timeout=30) as c:
                c.call("health.check", model_id="m1")
        finally:
            proc.terminate()
            proc.wait(10)
        (home / "catalog.toml").write_text(m.add_model("m1", dict(V2), version="2.0.0"))
        stall = m.faults("m1/w.bin")
        stall.stall_after, stall.stall_count = 50_000, 1  # the update's download hangs mid-file
        proc = start_engine_process(home, sock)
        try:
            with Client(sock, timeout=30) as c:
                first = c.call("models.update", model_id="m1")
                deadline = time.monotonic() + 20
                while not (m.requests.get("m1/w.bin") and c.call("downloads.progress", model_id="m1")["status"] == "downloading"):
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                assert c.call("models.status", model_id="m1")["version"] == "1.0.0"
        finally:
            proc.kill()
            proc.wait(10)
        assert db(home, "SELECT status FROM model_updates") == [("downloading",)]
        stall.stall_count = 1  # the restarted engine's download hangs too, until released
        proc = start_engine_process(home, sock)
        try:
            with Client(sock, timeout=30) as c:
                again = c.call("models.update", model_id="m1")  # CONFLICT before: the leftover download was running
                assert again["update_id"] == first["update_id"] and again["joined"] is True
                assert c.call("models.status", model_id="m1")["version"] == "1.0.0"
                release.set()
                wait_for_version(c, "2.0.0")
                assert c.call("health.check", model_id="m1")["result"]["overall_health"] == "healthy"
        finally:
            release.set()
            proc.terminate()
            proc.wait(10)
        assert (home / "models/m1/2.0.0/w.bin").read_bytes() == V2[0][1]
        assert db(home, "SELECT update_id, status FROM model_updates") == [(first["update_id"], "completed")]


async def test_update_through_the_downloads_engine(home: Path):
    """Install 1.0.0 by download, publish 2.0.0 on the mirror, update: downloaded beside, checked, switched, 1.0.0 kept."""
    from mavail.testing.mirror import Mirror

    with Mirror() as m:
        home.mkdir(parents=True)
        (home / "config.toml").write_text("[downloads]\npiece_size_mb = 1\n[health]\nscheduler_tick_s = 3600\n")
        (home / "catalog.toml").write_text(m.add_model("m1", dict(V1), version="1.0.0"))
        async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="m1")
            await finished(c, "1.0.0")
            assert eng.health.repair_dir.parent == home / "partial"
            full = (await c.call("health.check", model_id="m1"))["result"]
            assert full["overall_health"] == "healthy"
            (home / "catalog.toml").write_text(m.add_model("m1", dict(V2), version="2.0.0"))
            await c.call("catalog.reload")
            sub = await c.subscribe(types=["model_availability_change"])
            assert sub
            res = await c.call("models.update", model_id="m1")
            assert res["to_version"] == "2.0.0"
            seen = []
            async for ev in c.events():
                seen.append(ev["params"]["new_status"])
                if ev["params"]["new_status"] == "available" and "updating" in seen:
                    break
            await finished(c, "2.0.0")
            assert (home / "models/m1/2.0.0/w.bin").read_bytes() == V2[0][1]
            assert (home / "models/m1/1.0.0/w.bin").read_bytes() == V1[0][1]
            assert db(home, "SELECT status FROM model_updates") == [("completed",)]
            assert db(home, "SELECT COUNT(*) FROM file_pieces WHERE version = '2.0.0'")[0][0] == 2
