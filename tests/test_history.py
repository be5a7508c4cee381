"""history.list: finished downloads, checks and repairs from the engine's tables, across a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from mavail.rpc.client import AsyncClient, RpcError
from mavail.testing.mirror import MIB, Mirror, Synthetic
from tests.helpers import model_toml, running_engine, wait_until


async def test_history_keeps_completed_failed_cancelled_downloads_checks_and_repairs_across_a_restart(home: Path):
    with Mirror() as mirror:
        home.mkdir(parents=True)
        good = mirror.add_model("good", {"w.bin": Synthetic("good", 3 * MIB)})
        slow = mirror.add_model("slow", {"w.bin": Synthetic("slow", 8 * MIB)})
        mirror.faults("slow/w.bin").throttle_bps = 256 * 1024
        (home / "catalog.toml").write_text(good + slow + model_toml("broken", [("w.bin", b"x" * 1000)]))
        (home / "config.toml").write_text("[storage]\nmin_free_gb = 0.0\n[downloads]\nmax_retries = 0\npiece_size_mb = 1\n"
                                          "[health]\nscheduler_tick_s = 3600\n")
        async with running_engine(home) as (engine, sock), AsyncClient(sock) as c:
            for m in ("good", "slow", "broken"):
                await c.call("downloads.start", model_id=m)
            await wait_until(lambda: engine.downloads.progress("good")["status"] == "completed", timeout=15)
            await wait_until(lambda: engine.downloads.progress("broken")["status"] == "failed", timeout=15)
            await wait_until(lambda: engine.downloads.progress("slow")["status"] == "downloading", timeout=15)
            await c.call("downloads.cancel", model_id="slow")
            await c.call("health.check", model_id="good", check_type="full")
            f = home / "models" / "good" / "1.0.0" / "w.bin"
            with open(f, "r+b") as fh:
                fh.seek(MIB + 3)
                fh.write(b"\xff\xfe")
            rep = await c.call("health.repair", model_id="good")
            assert rep["success"], rep
            before = (await c.call("history.list"))["entries"]
        async with running_engine(home) as (engine, sock), AsyncClient(sock) as c:
            after = (await c.call("history.list"))["entries"]
            assert after == before  # from the tables, not from memory
            downloads = {e["model_id"]: e for e in after if e["kind"] == "download"}
            assert downloads["good"]["status"] == "completed" and downloads["good"]["bytes"] == 3 * MIB
            assert downloads["broken"]["status"] == "failed" and "cannot connect" in downloads["broken"]["detail"]
            assert downloads["slow"]["status"] == "cancelled" and downloads["slow"]["bytes"] is None
            assert downloads["broken"]["bytes"] is None
            for e in downloads.values():
                assert e["started_at"] and e["finished_at"] and e["duration_s"] >= 0
            checks = [e for e in after if e["kind"] == "check" and e["model_id"] == "good"]
            assert any(e["type"] == "full" and e["status"] == "completed" and e["bytes"] == 3 * MIB
                       and e["detail"].startswith("healthy") for e in checks), checks
            repairs = [e for e in after if e["kind"] == "repair"]
            assert len(repairs) == 1 and repairs[0]["status"] == "completed" and repairs[0]["bytes"] == MIB
            assert "integrity_fix" in repairs[0]["detail"]
            times = [e["finished_at"] or e["started_at"] for e in after]
            assert times == sorted(times, reverse=True)
            only = (await c.call("history.list", kinds=["repair"], limit=5))["entries"]
            assert [e["kind"] for e in only] == ["repair"]
            assert {e["model_id"] for e in (await c.call("history.list", model_id="broken"))["entries"]} == {"broken"}
            with pytest.raises(RpcError) as err:
                await c.call("history.list", kinds=["nope"])
            assert err.value.data["code"] == "INVALID_PARAMS"
