"""A shared model store: three engine processes, each with its own home, whose `models/` is one directory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from mavail.core.store import STORE_DIR, Holder, SharedStore, VersionLock
from mavail.rpc.client import Client, RpcError
from mavail.testing.mirror import MIB, Mirror, Synthetic
from tests.dlhelpers import dl_engine, installed_bytes, wait_status, write_home
from tests.helpers import short_tmpdir, start_engine_process, wait_until

SHARED = {"store": {"shared": True, "poll_s": 0.05}, "downloads": {"piece_size_mb": 1}}


def _homes(tmp: Path, mirror: Mirror, models: dict[str, dict[str, Any]], n: int) -> tuple[Path, list[Path]]:
    """`n` homes whose `models/` links to one shared directory, with one catalog (written once, copied)."""
    shared = tmp / "shared-models"
    shared.mkdir()
    homes = [tmp / f"node{i}" for i in range(n)]
    write_home(homes[0], mirror, models, SHARED)
    for h in homes:
        h.mkdir(exist_ok=True)
        (h / "models").symlink_to(shared)
        if h is not homes[0]:
            for name in ("catalog.toml", "config.toml"):
                shutil.copy(homes[0] / name, h / name)
    return shared, homes


@contextlib.contextmanager
def _engines(homes: list[Path]) -> Iterator[tuple[list[subprocess.Popen[bytes]], list[Path]]]:
    with short_tmpdir() as sd:
        socks = [sd / f"e{i}.sock" for i in range(len(homes))]
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for h, s in zip(homes, socks):
                procs.append(start_engine_process(h, s, new_session=True))
            yield procs, socks
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)


def _wait(what: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)


def _status(sock: Path, model_id: str) -> dict[str, Any]:
    with Client(sock, timeout=5) as c:
        return c.call("models.status", {"model_id": model_id})


def _progress(sock: Path, model_id: str) -> dict[str, Any]:
    with Client(sock, timeout=5) as c:
        return c.call("downloads.progress", {"model_id": model_id})


def _journal(shared: Path, model_id: str, path: str) -> dict[str, Any] | None:
    p = shared / STORE_DIR / "partial" / model_id / "1.0.0" / f"{path}.pieces.json"
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, ValueError):
        return None


def test_three_engines_fetch_each_file_once_and_all_report_it_available(tmp_path):
    files = {"weights.bin": Synthetic("shared-w", 3 * MIB), "config.json": Synthetic("shared-c", 200_000)}
    with Mirror() as m:
        shared, homes = _homes(tmp_path, m, {"m": files}, 3)
        m.faults("m/weights.bin").throttle_bps = 6 * MIB  # about half a second: the others start while it runs
        with _engines(homes) as (procs, socks):
            for s in socks:
                with Client(s, timeout=5) as c:
                    c.call("downloads.start", {"model_id": "m"})
            for s in socks:
                _wait(lambda s=s: _progress(s, "m")["status"] == "completed")
            statuses = [_status(s, "m") for s in socks]
            m.wait_idle()
        for st in statuses:
            assert st["availability_status"] == "available", st
        for path, data in files.items():
            assert m.bytes_served[f"m/{path}"] == data.size  # fetched once, by one engine
        assert (shared / "m" / "1.0.0" / "weights.bin").read_bytes() == files["weights.bin"].read(0, 3 * MIB)
        logs = [(h / "logs" / "downloads.log").read_text() for h in homes]
        adopted = [log for log in logs if "weights.bin adopted from the shared store" in log]
        assert len(adopted) == 2, logs  # the two engines that did not download adopted the holder's verified file
        print(f"requests per file: {dict(m.requests)}; bytes served: {dict(m.bytes_served)}")


def test_killing_the_downloading_engine_hands_the_download_over_with_its_verified_pieces(tmp_path):
    size = 6 * MIB
    data = Synthetic("shared-kill", size)
    with Mirror() as m:
        shared, homes = _homes(tmp_path, m, {"m": {"w.bin": data}}, 3)
        m.faults("m/w.bin").throttle_bps = 3 * MIB
        with _engines(homes) as (procs, socks):
            with Client(socks[0], timeout=5) as c:
                c.call("downloads.start", {"model_id": "m"})
            _wait(lambda: len((_journal(shared, "m", "w.bin") or {}).get("recorded", {})) >= 1)
            for s in socks[1:]:
                with Client(s, timeout=5) as c:
                    c.call("downloads.start", {"model_id": "m"})
            for s in socks[1:]:
                p = _wait(lambda s=s: (lambda p: p if p["wait_reason"] else None)(_progress(s, "m")))
                assert f"pid {procs[0].pid}" in p["wait_reason"] and p["waiting_for"]["pid"] == procs[0].pid
                assert _status(s, "m")["download_wait_reason"] == p["wait_reason"]
            _wait(lambda: len((_journal(shared, "m", "w.bin") or {}).get("recorded", {})) >= size // MIB // 2)
            os.killpg(procs[0].pid, signal.SIGKILL)
            procs[0].wait(10)
            verified_at_kill = len(_journal(shared, "m", "w.bin")["recorded"])
            m.wait_idle()
            served_before = m.bytes_served.get("m/w.bin", 0)
            m.reset_counters()
            m.faults("m/w.bin").throttle_bps = 0
            for s in socks[1:]:
                _wait(lambda s=s: _progress(s, "m")["status"] == "completed")
                assert _status(s, "m")["availability_status"] == "available"
            m.wait_idle()
        refetched = m.bytes_served.get("m/w.bin", 0)
        assert (shared / "m" / "1.0.0" / "w.bin").read_bytes() == data.read(0, size)
        # only what the journal did not hold yet is fetched again (at most one piece in progress beyond it)
        assert refetched <= size - verified_at_kill * MIB + MIB, (refetched, verified_at_kill)
        logs = "".join((h / "logs" / "downloads.log").read_text() for h in homes[1:])
        assert "w.bin continues from the shared partial data" in logs
        print(f"served before the kill {served_before}, verified pieces at the kill {verified_at_kill} of {size // MIB}, "
              f"served after {refetched} ({(refetched - (size - verified_at_kill * MIB)) / MIB:+.2f} MiB beyond the missing pieces)")


def test_cleanup_and_removal_on_one_engine_refuse_a_model_leased_on_another(tmp_path):
    with Mirror() as m:
        shared, homes = _homes(tmp_path, m, {"m": {"f.bin": Synthetic("shared-lease", 300_000)}}, 2)
        with _engines(homes) as (procs, socks):
            for s in socks:
                with Client(s, timeout=5) as c:
                    c.call("downloads.start", {"model_id": "m"})
            for s in socks:
                _wait(lambda s=s: _status(s, "m")["availability_status"] == "available")
            with Client(socks[1], timeout=5) as b:
                lease = b.call("models.acquire", {"model_id": "m"})
                _wait(lambda: list((shared / STORE_DIR / "leases" / "m").glob("*.json")))
                with Client(socks[0], timeout=5) as a:
                    got = a.call("storage.cleanup", {"cleanup_type": "manual", "models_to_remove": ["m"]})
                    assert got["models_removed"] == []
                    reasons = [p["reason"] for p in got["preserved"] if p["model_id"] == "m"]
                    assert reasons and "in use on another engine" in reasons[0] and f"pid {procs[1].pid}" in reasons[0], got
                    with pytest.raises(RpcError) as err:
                        a.call("models.remove", {"model_id": "m"})
                    assert "another engine" in str(err.value)
                assert (shared / "m" / "1.0.0" / "f.bin").exists()
                b.call("models.release", {"lease_id": lease["lease_id"]})
            _wait(lambda: not list((shared / STORE_DIR / "leases" / "m").glob("*.json")))
            with Client(socks[0], timeout=5) as a:
                got = a.call("storage.cleanup", {"cleanup_type": "manual", "models_to_remove": ["m"]})
            assert got["models_removed"] == ["m"] and not (shared / "m").exists(), got


def test_a_lock_whose_holder_stopped_heartbeating_is_taken_over(tmp_path):
    """A holder on another host that went silent: its flock is still held (NFS has not noticed), its heartbeat is stale."""
    home = tmp_path / "h"
    (home / "models").mkdir(parents=True)
    now = [time.time()]
    holder = SharedStore(home, home / "models", lambda: now[0], lambda: 5.0)
    other = SharedStore(home, home / "models", lambda: now[0], lambda: 5.0)
    object.__setattr__(holder.engine, "host", "node-a")  # as if on another host: its pid is not looked up here
    lock = holder.try_lock("m", "1.0.0")
    assert isinstance(lock, VersionLock)
    got = other.try_lock("m", "1.0.0")
    assert isinstance(got, Holder) and got.host == "node-a"
    now[0] += 4.0
    assert lock.heartbeat()
    now[0] += 4.0  # 4 s since the last heartbeat: still fresh
    assert isinstance(other.try_lock("m", "1.0.0"), Holder)
    now[0] += 2.0  # 6 s: stale
    taken = other.try_lock("m", "1.0.0")
    assert isinstance(taken, VersionLock)
    assert not lock.still_held() and not lock.heartbeat()  # the old holder finds out at its next heartbeat
    assert other.holder("m", "1.0.0").engine == other.engine.name
    lock.release()
    assert other.holder("m", "1.0.0").engine == other.engine.name  # the old holder's release leaves the new holder alone
    taken.release()
    assert other.holder("m", "1.0.0") is None


async def test_a_holder_whose_lock_was_taken_over_stops_then_continues_from_its_journal(home):
    """The engine's lock is broken by another (as for a silent holder on another host): at its next heartbeat the engine
    stops, waits for the new holder, and once that one lets go continues from the journal it left."""
    size = 4 * MIB
    data = Synthetic("shared-broken", size)
    with Mirror() as m:
        write_home(home, m, {"m": {"w.bin": data}}, {"store": {"shared": True, "poll_s": 0.05, "lock_stale_s": 0.6}})
        m.faults("m/w.bin").throttle_bps = 2 * MIB
        async with dl_engine(home, piece_size=256 * 1024) as (eng, sock):
            await eng.downloads.start("m")
            d = eng.downloads.get("m")
            await wait_until(lambda: d.store_lock is not None and len(d.files[0].recorded) >= 2, timeout=10)
            # another engine whose clock runs 100 s ahead sees this one's heartbeat as stale and breaks the lock
            other = SharedStore(home, home / "models", lambda: time.time() + 100, lambda: 0.6)
            object.__setattr__(other.engine, "host", "node-b")
            taken = await asyncio.to_thread(other.try_lock, "m", "1.0.0")
            assert isinstance(taken, VersionLock)
            await wait_until(lambda: d.wait_reason is not None, timeout=5)
            assert "node-b" in d.wait_reason and eng.downloads.progress("m")["waiting_for"]["host"] == "node-b"
            m.wait_idle()
            served = m.bytes_served["m/w.bin"]
            m.faults("m/w.bin").throttle_bps = 0
            await asyncio.to_thread(taken.release)
            await wait_status(eng, "m", "completed")
        assert installed_bytes(home, "m", "w.bin") == data.read(0, size)
        waste = m.bytes_served["m/w.bin"] - size
        assert waste <= 2 * 256 * 1024 and waste < served, (served, waste)  # the pieces fetched before the break were kept


def test_a_lock_just_taken_is_not_broken_for_the_dead_holder_named_before_it(tmp_path):
    """The moment between a new holder's flock and its holder file: the file still names the holder that died."""
    import fcntl

    home = tmp_path / "h"
    (home / "models").mkdir(parents=True)
    dead = SharedStore(home, home / "models", lambda: time.time() - 3600, lambda: 5.0)  # its last heartbeat: an hour ago
    lock = dead.try_lock("m", "1.0.0")
    assert isinstance(lock, VersionLock)
    os.close(lock.fd)  # killed: the kernel drops its lock, its holder file stays
    path = home / "models" / STORE_DIR / "locks" / "m" / "1.0.0.lock"
    fd = os.open(path, os.O_RDWR)  # a new holder has the lock and has touched it, but not yet written its holder file
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.utime(fd)
    other = SharedStore(home, home / "models", time.time, lambda: 5.0)
    got = other.try_lock("m", "1.0.0")
    assert isinstance(got, Holder) and os.stat(path).st_ino == os.fstat(fd).st_ino  # waited, nothing broken
    os.close(fd)
    taken = other.try_lock("m", "1.0.0")
    assert isinstance(taken, VersionLock)
    taken.release()


async def test_cleanup_removes_abandoned_shared_partial_data_unless_an_engine_holds_its_lock(home):
    from tests.helpers import running_engine

    write_home(home, Mirror(), {}, {"store": {"shared": True}, "storage": {"partial_max_age_days": 1.0}})
    root = home / "models" / STORE_DIR / "partial"
    old = time.time() - 3 * 86400
    for mid in ("gone", "busy"):
        part = root / mid / "1.0.0" / "w.bin.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(b"x" * 1000)
        for p in (part, part.parent):
            os.utime(p, (old, old))
    async with running_engine(home) as (eng, sock):
        other = SharedStore(home, home / "models", time.time, lambda: 30.0)
        object.__setattr__(other.engine, "host", "node-b")
        held = await asyncio.to_thread(other.try_lock, "busy", "1.0.0")
        assert isinstance(held, VersionLock)
        got = (await eng.storage.cleanup("auto")).to_dict()
        assert got["partial_removed"] == ["gone/1.0.0"], got
        assert [p["reason"] for p in got["preserved"] if p["model_id"] == "busy"] == ["another engine (node-b, pid %d) is "
                                                                                     "downloading it" % os.getpid()]
        assert not (root / "gone").exists() and (root / "busy" / "1.0.0" / "w.bin.part").exists()
        await asyncio.to_thread(held.release)


@pytest.mark.parametrize("left", [b"", b"\0" * 300, b'{"path": "w.bin", "size": 1', b"[]", b"null"])
def test_a_journal_a_crash_left_empty_or_unreadable_claims_no_piece(tmp_path, left):
    """Journals are rewritten without a flush; a crash of the machine can leave an empty file, zeros or the old one."""
    from mavail.core.store import PieceJournal

    home = tmp_path / "h"
    (home / "models").mkdir(parents=True)
    store = SharedStore(home, home / "models", time.time, lambda: 5.0)
    store.write_journal("m", "1.0.0", PieceJournal("w.bin", 2 * MIB, "ab" * 32, MIB, {0: "cd" * 16}))
    assert store.read_journal("m", "1.0.0", "w.bin").recorded == {0: "cd" * 16}
    path = home / "models" / STORE_DIR / "partial" / "m" / "1.0.0" / "w.bin.pieces.json"
    path.write_bytes(left)
    assert store.read_journal("m", "1.0.0", "w.bin") is None


@pytest.mark.parametrize("field", ["recorded", "prefixes", "validators"])
@pytest.mark.parametrize("value", [None, [], "x", 5])
def test_a_journal_of_another_shape_claims_no_piece(tmp_path, field, value):
    """A journal that is JSON but not of the shape this engine writes (another version, an edit by hand) is read as
    none, like an unreadable one: it must not stop the engine that waits on the store or takes it over."""
    from mavail.core.store import PieceJournal

    home = tmp_path / "h"
    (home / "models").mkdir(parents=True)
    store = SharedStore(home, home / "models", time.time, lambda: 5.0)
    body = json.loads(PieceJournal("w.bin", 2 * MIB, "ab" * 32, MIB, {0: "cd" * 16}).to_json())
    body[field] = value
    path = home / "models" / STORE_DIR / "partial" / "m" / "1.0.0" / "w.bin.pieces.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(body))
    assert store.read_journal("m", "1.0.0", "w.bin") is None


async def test_a_download_waiting_for_another_engine_leaves_its_connections_to_those_that_transfer(home):
    """While "w" waits for the engine that holds it on the store, it moves no byte: "x", the one download of this engine
    transferring, gets every place of downloads.max_connections. Counted as transferring, "w" halves x's share."""
    from tests.helpers import wait_until

    x = Synthetic("x-alone", 64 * MIB)
    with Mirror() as m:
        cfg = {"store": {"shared": True, "poll_s": 0.05, "lock_stale_s": 60.0},
               "downloads": {"parallel_min_size_mb": 0.0, "parallel_ranges": 4, "max_connections": 4, "max_concurrent": 2}}
        write_home(home, m, {"w": {"w.bin": Synthetic("w-held", MIB)}, "x": {"x.bin": x}}, cfg)
        m.faults("x/x.bin").throttle_bps = 512 * 1024  # each connection capped: x opens all it may
        other = SharedStore(home, home / "models", time.time, lambda: 60.0)  # another engine on the store
        held = await asyncio.to_thread(other.try_lock, "w", "1.0.0")
        assert isinstance(held, VersionLock)
        try:
            async with dl_engine(home) as (eng, sock):
                await eng.downloads.start("w")
                await wait_until(lambda: eng.downloads.get("w").waiting_for is not None, timeout=5)
                await eng.downloads.start("x")
                seen: list[int] = []

                def all_four() -> bool:
                    seen.append(eng.downloads.progress_dict(eng.downloads.get("x"))["connections"])
                    return seen[-1] == 4

                try:
                    await wait_until(all_four, timeout=4)
                except AssertionError:
                    raise AssertionError(f"x had at most {max(seen)} connections of 4 while w only waited") from None
                await eng.downloads.cancel("x")
                await eng.downloads.cancel("w")
        finally:
            await asyncio.to_thread(held.release)
