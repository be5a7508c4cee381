"""Repairs against a real HTTP mirror: piece-level fixes, redownloads, fallbacks, leases, crash recovery."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mavail.testing.mirror import Mirror
from mavail.rpc.client import AsyncClient, Client, RpcError
from tests.helpers import running_engine, short_tmpdir, start_engine_process, synthetic_bytes

MIB = 1024 * 1024
BIG = synthetic_bytes("unet", 4 * MIB + 4321)
SMALL = synthetic_bytes("vae", 300_000)


@pytest.fixture
def mirror():
    with Mirror() as m:
        yield m


def setup(home: Path, mirror: Mirror, model_id: str = "m1") -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("[downloads]\npiece_size_mb = 1\n[health]\nscheduler_tick_s = 3600\n")
    (home / "catalog.toml").write_text(mirror.add_model(model_id, {"unet/model.bin": BIG, "vae.bin": SMALL}))
    d = home / "models" / model_id / "1.0.0"
    (d / "unet").mkdir(parents=True)
    (d / "unet/model.bin").write_bytes(BIG)
    (d / "vae.bin").write_bytes(SMALL)
    return d


class ShiftedClock:
    """The system clock moved forward by `offset` seconds (tests make scheduled checks due by moving it)."""

    offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


def flip(p: Path, offset: int) -> None:
    with open(p, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x5A]))


async def test_flipped_byte_repaired_by_fetching_one_piece(home: Path, mirror: Mirror):
    d = setup(home, mirror)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        await c.call("health.check", model_id="m1")  # records piece hashes
        flip(d / "unet/model.bin", 3 * MIB + 10)
        (d / "mine.txt").write_text("keep me")
        mirror.reset_counters()
        res = await c.call("health.repair", model_id="m1")
        assert res["success"], res
        assert res["actions_taken"] == ["integrity_check", "integrity_fix"]
        assert res["bytes_redownloaded"] == MIB
        assert mirror.bytes_served.get("m1/unet/model.bin") == MIB
        assert (d / "unet/model.bin").read_bytes() == BIG
        assert (d / "mine.txt").read_text() == "keep me"
        st = await c.call("models.status", model_id="m1")
        assert st["availability_status"] == "available" and st["integrity_score"] == 1.0 and not st["corruption_detected"]
        h = await c.call("health.status", model_id="m1")
        assert h["overall_health"] == "healthy" and [i["type"] for i in h["issues"]] == ["extra_file"]
        assert not list((home / "partial" / ".repair").glob("*"))
    log = (home / "logs" / "health_monitor.log")
    assert not log.exists() or "integrity_fix" in log.read_text()


@pytest.mark.parametrize("damage,action,fetched", [
    ("truncate", "integrity_fix", len(BIG) - 2 * MIB),
    ("append", "truncate", 0),
    ("delete", "redownload", len(BIG)),
    ("symlink", "redownload", len(BIG)),
    ("chmod", "fix_permissions", 0),
])
async def test_repair_each_damage(home: Path, mirror: Mirror, damage: str, action: str, fetched: int, tmp_path: Path):
    d = setup(home, mirror)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious")
    p = d / "unet/model.bin"
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        await c.call("health.check", model_id="m1")
        if damage == "truncate":
            os.truncate(p, 2 * MIB + 100)
        elif damage == "append":
            with open(p, "ab") as fh:
                fh.write(b"x" * 1000)
        elif damage == "delete":
            p.unlink()
        elif damage == "symlink":
            p.unlink()
            p.symlink_to(outside)
        elif damage == "chmod":
            p.chmod(0)
        res = await c.call("health.repair", model_id="m1", repair_type="auto")
        assert res["success"], res
        assert action in res["actions_taken"]
        assert res["bytes_redownloaded"] == fetched
        assert not p.is_symlink() and p.read_bytes() == BIG
        assert (await c.call("health.status", model_id="m1"))["overall_health"] == "healthy"
    assert outside.read_bytes() == b"precious"


async def test_hand_copied_without_pieces_is_redownloaded(home: Path, mirror: Mirror):
    d = setup(home, mirror)
    flip(d / "vae.bin", 5)  # damaged before any check: no piece hashes to locate it
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        full = (await c.call("health.check", model_id="m1"))["result"]
        issue = next(i for i in full["issues"] if i["file"] == "vae.bin")
        assert issue["type"] == "changed_bytes" and issue["recommendation"] == "redownload"
        res = await c.call("health.repair", model_id="m1", repair_type="integrity_fix")
        assert not res["success"] and res["errors"][0]["file"] == "vae.bin"
        res = await c.call("health.repair", model_id="m1")
        assert res["success"] and res["actions_taken"] == ["integrity_check", "redownload"] and res["bytes_redownloaded"] == len(SMALL)
        assert (d / "vae.bin").read_bytes() == SMALL


async def test_bad_source_piece_falls_back_then_reports_failure(home: Path, mirror: Mirror):
    d = setup(home, mirror)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        await c.call("health.check", model_id="m1")
        flip(d / "unet/model.bin", MIB + 1)
        # the first response for the file is corrupt: the piece fails its hash, auto falls back to a redownload
        mirror.faults("m1/unet/model.bin").corrupt_offsets = (MIB + 2,)
        mirror.faults("m1/unet/model.bin").corrupt_count = 1
        res = await c.call("health.repair", model_id="m1")
        assert res["success"] and res["actions_taken"] == ["integrity_check", "redownload"], res
        assert (d / "unet/model.bin").read_bytes() == BIG
        # a source that is always wrong: the repair fails and leaves the file no worse than it found it
        flip(d / "unet/model.bin", MIB + 1)
        before = (d / "unet/model.bin").read_bytes()
        mirror.faults("m1/unet/model.bin").corrupt_count = -1
        sub = await c.subscribe(types=["model_health_alert"])
        assert sub
        res = await c.call("health.repair", model_id="m1")
        assert not res["success"] and res["errors"]
        assert (d / "unet/model.bin").read_bytes() == before
        async for ev in c.events():
            if ev["params"]["alert_type"] == "repair_failed":
                break
        assert (await c.call("models.status", model_id="m1"))["availability_status"] == "corrupted"


async def test_repair_refused_under_lease_unless_forced(home: Path, mirror: Mirror):
    d = setup(home, mirror)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c, AsyncClient(sock) as user:
        await c.call("health.check", model_id="m1")
        await user.call("models.acquire", model_id="m1")
        flip(d / "unet/model.bin", 7)
        with pytest.raises(RpcError) as ei:
            await c.call("health.repair", model_id="m1")
        assert ei.value.code == -32002
        res = await c.call("health.repair", model_id="m1", force_repair=True)
        assert res["success"] and res["bytes_redownloaded"] == MIB
        # the scheduler defers an automatic repair while the model is in use
        flip(d / "unet/model.bin", 7)
        await c.call("health.check", model_id="m1")
        done = await eng.health.run_scheduled_once()
        assert {"model_id": "m1", "repair": "deferred_in_use"} in done


async def test_scheduled_check_auto_repairs(home: Path, mirror: Mirror):
    d = setup(home, mirror)
    clock = ShiftedClock()
    async with running_engine(home, clock=clock) as (eng, sock), AsyncClient(sock) as c:
        await c.call("health.check", model_id="m1")
        os.truncate(d / "vae.bin", 10)
        interval = eng.config.get("health.check_interval_hours") * 3600
        clock.offset += interval + 1  # the quick check is due
        done = await eng.health.run_scheduled_once()
        assert any(x.get("repair") == "ok" for x in done), done
        assert (d / "vae.bin").read_bytes() == SMALL
        await c.call("config.update", patch={"health": {"auto_repair_enabled": False}})
        os.truncate(d / "vae.bin", 10)
        clock.offset += interval + 1
        done = await eng.health.run_scheduled_once()
        assert not any("repair" in x for x in done)
        assert (await c.call("health.status", model_id="m1"))["overall_health"] == "corrupted"


# --- kill the engine in the middle of a repair ----------------------------------------------
@pytest.mark.parametrize("crash_at", ["repair.committed", "repair.mid_apply"])
def test_killed_mid_repair_restarts_consistent(mirror: Mirror, crash_at: str):
    with short_tmpdir() as tmp:
        home, sock = tmp / "home", tmp / "e.sock"
        d = setup(home, mirror)
        proc = start_engine_process(home, sock, {"MAVAIL_CRASH_AT": crash_at})
        try:
            with Client(sock, timeout=30) as c:
                c.call("health.check", model_id="m1")
            flip(d / "unet/model.bin", 5)
            flip(d / "unet/model.bin", 2 * MIB + 5)
            with pytest.raises(Exception):
                with Client(sock, timeout=30) as c:
                    c.call("health.repair", model_id="m1")
            assert proc.wait(10) == -9
        finally:
            if proc.poll() is None:
                proc.kill()
        journals = list((home / "partial" / ".repair").iterdir())
        assert len(journals) == 1 and (journals[0] / "journal.json").exists()
        proc = start_engine_process(home, sock)
        try:
            with Client(sock, timeout=30) as c:
                st = c.call("models.status", model_id="m1")
                assert st["availability_status"] == "available" and st["integrity_score"] == 1.0
                assert c.call("health.check", model_id="m1")["result"]["overall_health"] == "healthy"
        finally:
            proc.terminate()
            proc.wait(10)
        assert (d / "unet/model.bin").read_bytes() == BIG
        assert not list((home / "partial" / ".repair").iterdir())
        log = (home / "logs" / "health_monitor.log").read_text()
        assert "finished an interrupted repair of m1 1.0.0 unet/model.bin: verified" in log


# --- a killed redownload resumes ---------------------------------------------------------------
def test_killed_redownload_resumes_from_its_flushed_pieces(mirror: Mirror):
    import threading

    with short_tmpdir() as tmp:
        home, sock = tmp / "home", tmp / "e.sock"
        d = setup(home, mirror)
        flip(d / "unet/model.bin", 5)
        faults = mirror.faults("m1/unet/model.bin")
        faults.throttle_bps = 3 * MIB
        proc = start_engine_process(home, sock)
        try:
            def call() -> None:
                try:
                    with Client(sock, timeout=60) as c:
                        c.call("health.repair", model_id="m1", repair_type="redownload")
                except Exception:
                    pass

            threading.Thread(target=call, daemon=True).start()
            deadline = time.monotonic() + 30
            while mirror.bytes_served.get("m1/unet/model.bin", 0) < 3 * MIB:
                assert time.monotonic() < deadline and proc.poll() is None, "the redownload did not get going"
                time.sleep(0.01)
            proc.kill()  # SIGKILL: no cleanup of any kind
            assert proc.wait(10) == -9
        finally:
            if proc.poll() is None:
                proc.kill()
        faults.throttle_bps = 0
        mirror.reset_counters()
        proc = start_engine_process(home, sock)
        try:
            with Client(sock, timeout=60) as c:
                res = c.call("health.repair", model_id="m1", repair_type="redownload")
                assert res["success"], res
                assert c.call("health.check", model_id="m1")["result"]["overall_health"] == "healthy"
        finally:
            proc.terminate()
            proc.wait(10)
        again = mirror.bytes_served.get("m1/unet/model.bin", 0)
        assert again <= len(BIG) - 2 * MIB, f"fetched {again} of {len(BIG)} bytes again"
        assert res["bytes_redownloaded"] <= len(BIG) - 2 * MIB
        assert (d / "unet/model.bin").read_bytes() == BIG
        assert not any(p.name.endswith(".mavail-repair.tmp") for p in d.rglob("*"))
        assert not list((home / "partial" / ".redownload").iterdir())


# --- leases: a redownload never replaces files under a user ----------------------------------------
async def test_redownload_never_replaces_files_of_a_leased_model(home: Path, mirror: Mirror):
    import asyncio

    from tests.helpers import wait_until

    d = setup(home, mirror)
    files = [d / "unet/model.bin", d / "vae.bin"]
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c, AsyncClient(sock) as user:
        await c.call("health.check", model_id="m1")
        inodes = [os.stat(p).st_ino for p in files]
        lease = await user.call("models.acquire", model_id="m1")
        for force in (False, True):
            with pytest.raises(RpcError) as ei:
                await c.call("health.repair", model_id="m1", repair_type="redownload", force_repair=force)
            assert ei.value.code == -32002
        assert [os.stat(p).st_ino for p in files] == inodes
        await user.call("models.release", lease_id=lease["lease_id"])

        # a lease taken while the redownload is fetching: nothing is replaced, the fetched data waits for the next repair
        mirror.faults("m1/unet/model.bin").throttle_bps = 2 * MIB
        repair = asyncio.create_task(c.call("health.repair", model_id="m1", repair_type="redownload", force_repair=True))
        await wait_until(lambda: mirror.bytes_served.get("m1/unet/model.bin", 0) >= MIB, timeout=20)
        lease = await user.call("models.acquire", model_id="m1")
        res = await repair
        assert not res["success"] and {e["code"] for e in res["errors"]} == {"CONFLICT"}, res
        assert [os.stat(p).st_ino for p in files] == inodes
        assert [p.read_bytes() for p in files] == [BIG, SMALL]
        await user.call("models.release", lease_id=lease["lease_id"])
        mirror.faults("m1/unet/model.bin").throttle_bps = 0
        mirror.reset_counters()
        res = await c.call("health.repair", model_id="m1", repair_type="redownload", force_repair=True)
        assert res["success"], res
        assert mirror.bytes_served.get("m1/unet/model.bin", 0) == 0  # every piece was already fetched and flushed
        assert os.stat(files[0]).st_ino != inodes[0] and files[0].read_bytes() == BIG
