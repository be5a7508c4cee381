"""Downloads over a real socket against the mirror: start, install, records, events, progress."""

from __future__ import annotations

import hashlib

from mavail.testing.mirror import Mirror, Synthetic
from mavail.rpc.client import AsyncClient, RpcError
from tests.dlhelpers import dl_engine, installed_bytes, wait_status, write_home


async def test_download_installs_and_records(home):
    a = Synthetic("a", 300_000)
    with Mirror() as m:
        write_home(home, m, {"m1": {"w/model.bin": a, "config.json": b'{"x": 1}'}})
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            await c.subscribe(types=["model_download_progress", "model_availability_change"])
            res = await c.call("downloads.start", model_id="m1")
            assert res["success"] and res["download_id"].startswith("dl_")
            try:
                await c.call("downloads.start", model_id="m1")
            except RpcError as exc:
                assert exc.code in (-32002,)  # still running
            except Exception:
                raise
            await wait_status(eng, "m1", "completed")
            assert installed_bytes(home, "m1", "w/model.bin") == a.read(0, a.size)
            assert installed_bytes(home, "m1", "config.json") == b'{"x": 1}'
            st = await c.call("models.status", model_id="m1")
            assert st["availability_status"] == "available" and st["verified"] is True
            prog = await c.call("downloads.progress", model_id="m1")
            assert prog["status"] == "completed" and prog["downloaded_bytes"] == prog["total_bytes"] == a.size + 8
            rows = await eng.db.fetchall("SELECT idx, sha256, piece_size FROM file_pieces WHERE model_id='m1' AND path='w/model.bin' ORDER BY idx")
            data = a.read(0, a.size)
            ps = rows[0]["piece_size"]
            assert [r["sha256"] for r in rows] == [hashlib.sha256(data[i:i + ps]).hexdigest() for i in range(0, a.size, ps)]
            cur = await eng.db.fetchall("SELECT version, is_current FROM installed_versions WHERE model_id='m1'")
            assert [tuple(r) for r in cur] == [("1.0.0", 1)]
            assert not (home / "partial" / "m1").exists()
            events = []
            async for ev in c.events():
                events.append(ev)
                if ev["method"] == "model_availability_change" and ev["params"]["new_status"] == "available":
                    break
            statuses = [e["params"]["status"] for e in events if e["method"] == "model_download_progress"]
            assert statuses[0] == "queued" and "downloading" in statuses and statuses[-1] == "completed"

            assert eng.activity.busy("m1", "downloading") is False  # the download let go (a health check may follow it)
            assert (await c.call("downloads.active"))["active_downloads"] == []
            again = await c.call("downloads.start", model_id="m1")  # already installed: completes without fetching
            before = m.requests.get("m1/w/model.bin", 0)
            await wait_status(eng, "m1", "completed")
            assert m.requests.get("m1/w/model.bin", 0) == before and again["success"]
