"""Retry figures: the current file's retry_count against its own max_retries, and total_retries across files."""

from __future__ import annotations

import asyncio

from mavail.testing.mirror import Mirror, Synthetic
from mavail.rpc.client import AsyncClient
from tests.dlhelpers import dl_engine, wait_status, write_home


async def test_retry_count_is_per_file_and_total_retries_counts_every_file(home):
    files = {"a.bin": Synthetic("ra", 100_000), "b.bin": Synthetic("rb", 100_000)}
    with Mirror() as m:
        write_home(home, m, {"r": files}, config={"downloads": {"retry_base_s": 0.4, "retry_max_s": 0.8, "max_retries": 2}})
        m.faults("r/a.bin").errors = [503, 503]
        m.faults("r/b.bin").errors = [503, 503]
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="r")
            seen: list[dict] = []
            while True:
                p = await c.call("downloads.progress", model_id="r")
                seen.append(p)
                if p["status"] in ("completed", "failed"):
                    break
                await asyncio.sleep(0.01)
            assert p["status"] == "completed", p
            assert p["total_retries"] == 4  # two retries on each file
            assert all(s["max_retries"] == 2 for s in seen)
            assert all(s["retry_count"] <= s["max_retries"] for s in seen)
            per_file = {}
            for s in seen:
                if s["current_file"]:
                    per_file[s["current_file"]] = max(per_file.get(s["current_file"], 0), s["retry_count"])
            assert per_file == {"a.bin": 2, "b.bin": 2}, per_file
            # the total went past the per-file limit while the download went on, as it may
            assert any(s["total_retries"] > s["max_retries"] and s["status"] == "downloading" for s in seen)
            await wait_status(eng, "r", "completed")


async def test_a_failed_download_shows_the_retries_its_file_spent(home):
    with Mirror() as m:
        write_home(home, m, {"f": {"a.bin": Synthetic("fa", 50_000)}}, config={"downloads": {"max_retries": 2}})
        m.faults("f/a.bin").errors = [503] * 10
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="f")
            await wait_status(eng, "f", "failed")
            p = await c.call("downloads.progress", model_id="f")
            assert p["error_code"] == "SOURCE_UNAVAILABLE", p
            assert p["retry_count"] == 2 and p["max_retries"] == 2, p  # the attempt after the last retry ended it
            assert p["total_retries"] == 2
