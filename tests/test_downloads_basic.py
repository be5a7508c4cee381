"""Downloads over a real socket against the mirror: start, install, records, events, progress."""

from __future__ import annotations


from mavail.testing.mirror import MIB, Mirror, Synthetic
from mavail.core.piecehash import PIECE_ALGO, piece_digest
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
            rows = await eng.db.fetchall("SELECT idx, sha256, piece_size, algo FROM file_pieces WHERE model_id='m1' AND path='w/model.bin' ORDER BY idx")
            data = a.read(0, a.size)
            ps = rows[0]["piece_size"]
            assert {r["algo"] for r in rows} == {PIECE_ALGO}
            assert [r["sha256"] for r in rows] == [piece_digest(data[i:i + ps]) for i in range(0, a.size, ps)]
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


async def test_control_calls_answer_the_contract_payloads(home):
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": Synthetic("ctl", 2 * MIB)}, "k": {"f.bin": Synthetic("k", MIB)}})
        m.default_faults.throttle_bps = MIB // 4
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            started = await c.call("downloads.start", model_id="m")
            assert set(started) == {"success", "message", "download_id", "estimated_completion", "status", "queue_position", "total_bytes"}
            assert started["success"] is True and started["message"] == f"download of m {started['status']}"
            assert started["total_bytes"] == 2 * MIB and started["queue_position"] == 1
            await c.call("downloads.start", model_id="k", priority="low")
            act = await c.call("downloads.active")
            assert set(act) == {"active_downloads", "total_active", "total_running", "total_bandwidth_usage_mbps",
                                "bandwidth_limit_mbps", "max_concurrent", "during_generation"}, act
            assert act["total_active"] == 2 and [d["model_id"] for d in act["active_downloads"]] == ["m", "k"]
            assert await c.call("downloads.set_priority", model_id="k", priority="medium") == {
                "success": True, "message": "k priority is normal", "priority": "normal", "queue_position": 2}
            assert await c.call("downloads.move", model_id="k", position=1) == {
                "success": True, "message": "k moved to position 1", "queue_position": 1, "priority": "normal"}
            assert await c.call("downloads.set_limit", model_id="m", bandwidth_limit_mbps=2) == {
                "success": True, "message": "m limited to 2 MiB/s", "bandwidth_limit_mbps": 2.0}
            assert await c.call("downloads.set_limit", model_id="m", bandwidth_limit_mbps=0) == {
                "success": True, "message": "m unlimited", "bandwidth_limit_mbps": 0.0}
            assert await c.call("downloads.pause", model_id="m") == {"success": True, "message": "download of m paused", "new_status": "paused"}
            assert await c.call("downloads.pause", model_id="m") == {"success": True, "message": "m is already paused", "new_status": "paused"}
            assert await c.call("downloads.resume", model_id="m") == {"success": True, "message": "download of m resumed", "new_status": "queued"}
            again = await c.call("downloads.resume", model_id="m")
            assert again["success"] is True and again["message"] == f"m is already {again['new_status']}", again
            assert await c.call("downloads.cancel", model_id="m", keep_partial=True) == {
                "success": True, "message": "download of m cancelled (partial data kept)", "new_status": "cancelled"}
            assert await c.call("downloads.cancel", model_id="k") == {"success": True, "message": "download of k cancelled", "new_status": "cancelled"}
