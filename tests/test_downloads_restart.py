"""Restarts: kill -9 of an engine process mid-download resumes from recorded pieces; Hub sources."""

from __future__ import annotations

import hashlib
import os
import signal
import time

from mavail.core.piecehash import piece_digest
from mavail.testing.hub import Hub
from mavail.testing.mirror import MIB, Mirror, Synthetic
from mavail.rpc.client import Client
from tests.dlhelpers import dl_engine, installed_bytes, wait_status, write_home
from tests.helpers import short_tmpdir, start_engine_process


def test_kill_9_mid_download_then_restart_resumes(home):
    size = 6 * MIB
    data = Synthetic("kill", size)
    with Mirror() as m, short_tmpdir() as sd:
        sock = sd / "e.sock"
        # 1 MiB pieces (the smallest the config allows), one connection throttled so the kill lands mid-file
        write_home(home, m, {"big": {"w.bin": data}, "later": {"x.bin": Synthetic("later", 300_000)},
                             "held": {"h.bin": Synthetic("held", 200_000)}},
                   {"downloads": {"piece_size_mb": 1, "max_concurrent": 1}})
        m.faults("big/w.bin").throttle_bps = 4 * MIB
        proc = start_engine_process(home, sock, new_session=True)
        try:
            with Client(sock, timeout=5) as c:
                c.call("downloads.start", {"model_id": "big"})
                c.call("downloads.start", {"model_id": "later", "priority": "low"})
                c.call("downloads.start", {"model_id": "held", "priority": "low"})
                c.call("downloads.pause", {"model_id": "held"})
                deadline = time.monotonic() + 20
                while c.call("downloads.progress", {"model_id": "big"})["downloaded_bytes"] < size // 2:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        deadline = time.monotonic() + 10
        while not any(r.path == "big/w.bin" for r in m.log):  # the mirror notices the dead connection
            assert time.monotonic() < deadline
            time.sleep(0.01)
        served_before = sum(r.bytes_sent for r in m.log if r.path == "big/w.bin")
        import sqlite3

        conn = sqlite3.connect(home / "state.db")
        recorded = [r[0] for r in conn.execute("SELECT idx FROM download_pieces WHERE model_id='big'")]
        conn.close()
        assert len(recorded) >= 2  # pieces flushed and recorded before the kill
        m.faults("big/w.bin").throttle_bps = 0
        m.reset_counters()
        proc = start_engine_process(home, sock, new_session=True)
        try:
            with Client(sock, timeout=5) as c:
                deadline = time.monotonic() + 30
                while True:
                    st = {d["model_id"]: d["status"] for d in c.call("downloads.active")["active_downloads"]}
                    done = c.call("downloads.progress", {"model_id": "big"})["status"] == "completed" and \
                        c.call("downloads.progress", {"model_id": "later"})["status"] == "completed"
                    if done:
                        break
                    assert time.monotonic() < deadline, st
                    time.sleep(0.05)
                assert c.call("downloads.progress", {"model_id": "held"})["status"] == "paused"  # paused stays paused
            os.killpg(proc.pid, signal.SIGTERM)  # a clean stop
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        assert installed_bytes(home, "big", "w.bin") == data.read(0, size)
        refetched = m.bytes_served["big/w.bin"]
        assert refetched <= size - len(recorded) * MIB + 16 * MIB // 16  # only what was not recorded (plus < 1 piece)
        assert served_before > 0
        log = (home / "logs" / "downloads.log").read_text()
        assert "resuming 2 download(s) after restart" in log or "resuming" in log
        assert "completed" in log


async def test_in_process_restart_keeps_recorded_pieces(home):
    data = Synthetic("restart", 2 * MIB)
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": data}})
        m.default_faults.throttle_bps = 2 * MIB
        async with dl_engine(home) as (eng, sock):
            await eng.downloads.start("m")
            from tests.helpers import wait_until

            await wait_until(lambda: len(eng.downloads.get("m").files[0].recorded) >= 8, timeout=10)
        # a clean stop keeps it queued: it resumes at the next start
        m.default_faults.throttle_bps = 0
        recorded = len((await _pieces(home)))
        m.reset_counters()
        async with dl_engine(home) as (eng, sock):
            await wait_status(eng, "m", "completed")
        assert installed_bytes(home, "m", "f.bin") == data.read(0, data.size)
        assert m.bytes_served["m/f.bin"] <= data.size - recorded * 64 * 1024 + 4 * 256 * 1024


async def test_restart_resumes_inside_a_piece_from_its_flushed_prefix(home):
    data = Synthetic("prefix", 2 * MIB)
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": data}})
        m.default_faults.throttle_bps = 1 * MIB
        from tests.helpers import wait_until

        async with dl_engine(home, piece_size=2 * MIB) as (eng, sock):  # one piece: every byte is inside it
            await eng.downloads.start("m")
            async def prefix_recorded() -> bool:
                # the prefix is kept in memory a moment before its row commits: wait for the row itself
                rows = await eng.db.fetchall("SELECT idx, length FROM download_prefixes WHERE model_id = 'm'")
                return [r[0] for r in rows] == [0] and rows[0][1] >= 256 * 1024

            await wait_until(prefix_recorded, timeout=10)
        import sqlite3

        conn = sqlite3.connect(home / "state.db")
        (prefix,) = conn.execute("SELECT length FROM download_prefixes WHERE model_id = 'm' AND idx = 0").fetchone()
        assert conn.execute("SELECT COUNT(*) FROM download_pieces").fetchone()[0] == 0
        conn.close()
        m.default_faults.throttle_bps = 0
        await wait_until(lambda: any(r.path == "m/f.bin" for r in m.log))  # the first request is counted when it ends
        m.reset_counters()
        async with dl_engine(home, piece_size=2 * MIB) as (eng, sock):
            await wait_status(eng, "m", "completed")
            pieces = await eng.db.fetchall("SELECT idx, sha256 FROM file_pieces WHERE model_id = 'm'")
            assert await eng.db.fetchall("SELECT * FROM download_prefixes") == []
        assert installed_bytes(home, "m", "f.bin") == data.read(0, data.size)
        # the prefix was re-hashed from disk: only the rest of the piece came over the network
        assert m.bytes_served["m/f.bin"] == data.size - prefix
        assert [(r[0], r[1]) for r in pieces] == [(0, piece_digest(data.read(0, data.size)))]


async def _pieces(home):
    import sqlite3

    conn = sqlite3.connect(home / "state.db")
    try:
        return conn.execute("SELECT idx FROM download_pieces").fetchall()
    finally:
        conn.close()


async def test_hf_source_through_hf_endpoint_with_token(home):
    weights = Synthetic("hfw", 500_000)
    files = {"model.safetensors": weights, "config.json": b'{"dim": 8}'}
    with Hub() as hub:
        hub.add_repo("acme/tiny", files, branch="v1", private=True, lfs=lambda path: False)  # plain git files: blob ids
        hub.commit("acme/tiny", files, branch="v2")  # LFS: sha256
        hub.grant("acme/tiny", "sekrit")
        endpoint = hub.endpoint
        home.mkdir(parents=True)
        (home / "catalog.toml").write_text(
            '[[models]]\nid = "tiny"\nversion = "1"\nmodel_type = "text_to_video"\nsource = "hf://acme/tiny@v2"\n'
            '[[models]]\nid = "tiny-git"\nversion = "1"\nmodel_type = "text_to_video"\nsource = "hf://acme/tiny@v1"\n'
            '[[models]]\nid = "nope"\nversion = "1"\nmodel_type = "text_to_video"\nsource = "hf://acme/missing@v1"\n')
        (home / "config.toml").write_text('[storage]\nmin_free_gb = 0.0\n[downloads]\nretry_base_s = 0.01\n')
        environ = {"HF_ENDPOINT": endpoint, "HF_TOKEN": "sekrit"}
        async with dl_engine(home, environ=environ) as (eng, sock):
            for mid in ("tiny", "tiny-git"):
                await eng.downloads.start(mid)
                await wait_status(eng, mid, "completed")
                assert installed_bytes(home, mid, "model.safetensors", version="1") == weights.read(0, weights.size)
                assert installed_bytes(home, mid, "config.json", version="1") == b'{"dim": 8}'
                st = eng.status.model_status(mid)
                assert st["availability_status"] == "available", st
            rows = await eng.db.fetchall("SELECT sha256 FROM installed_files WHERE model_id='tiny' AND path='config.json'")
            assert rows[0][0] == hashlib.sha256(b'{"dim": 8}').hexdigest()
            import pytest

            from mavail.core.errors import SourceUnavailable

            with pytest.raises(SourceUnavailable) as ei:
                await eng.downloads.start("nope")
            assert "not found" in ei.value.message
            del environ["HF_TOKEN"]  # the manager reads the environment at each request
            await eng.downloads.cancel("tiny") if eng.downloads.get("tiny").status != "completed" else None
            with pytest.raises(SourceUnavailable) as ei:
                await eng.downloads.start("nope")
            assert "HF_TOKEN" in ei.value.message


async def test_pieces_recorded_as_sha256_before_an_upgrade_are_installed_as_the_current_piece_hash(home):
    from mavail.core.piecehash import PIECE_ALGO
    from tests.helpers import wait_until

    data = Synthetic("older", 1 * MIB)
    ps = 64 * 1024
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": data}})
        m.default_faults.throttle_bps = 1 * MIB
        async with dl_engine(home, piece_size=ps) as (eng, sock):
            await eng.downloads.start("m")

            async def some_recorded() -> bool:
                return len(await eng.db.fetchall("SELECT idx FROM download_pieces WHERE model_id = 'm'")) >= 3

            await wait_until(some_recorded, timeout=10)
        import sqlite3

        conn = sqlite3.connect(home / "state.db")
        rows = conn.execute("SELECT idx FROM download_pieces WHERE model_id = 'm'").fetchall()
        for (idx,) in rows:  # as an engine that hashed pieces with sha256 recorded them
            conn.execute("UPDATE download_pieces SET sha256 = ? WHERE model_id = 'm' AND idx = ?",
                         (hashlib.sha256(data.read(idx * ps, ps)).hexdigest(), idx))
        conn.commit()
        conn.close()
        m.default_faults.throttle_bps = 0
        async with dl_engine(home, piece_size=ps) as (eng, sock):
            await wait_status(eng, "m", "completed")
            pieces = await eng.db.fetchall("SELECT idx, sha256, algo FROM file_pieces WHERE model_id = 'm' ORDER BY idx")
        assert installed_bytes(home, "m", "f.bin") == data.read(0, data.size)
        assert {r[2] for r in pieces} == {PIECE_ALGO}
        assert [r[1] for r in pieces] == [piece_digest(data.read(i, ps)) for i in range(0, data.size, ps)]
