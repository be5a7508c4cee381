"""Retry figures: the total across a download's files, and the current file's count against its own limit."""

from __future__ import annotations

import asyncio

from core.mirror import Mirror, Synthetic
from rpc.client import AsyncClient
from tests.dlhelpers import dl_engine, wait_status, write_home


async def test_retry_count_is_the_total_and_the_per_file_figure_stays_within_its_limit(home):
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
            assert p["retry_count"] == 4  # two retries on each file
            assert all(s["max_retries_per_file"] == 2 and s["max_retries"] == 2 for s in seen)
            assert all(s["retries_this_file"] <= s["max_retries_per_file"] for s in seen)
            per_file = {}
            for s in seen:
                if s["current_file"]:
                    per_file[s["current_file"]] = max(per_file.get(s["current_file"], 0), s["retries_this_file"])
            assert per_file == {"a.bin": 2, "b.bin": 2}, per_file
            # the total went past the per-file limit while the download went on, as it may
            assert any(s["retry_count"] > s["max_retries_per_file"] and s["status"] == "downloading" for s in seen)
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
            assert p["retries_this_file"] == 2 and p["max_retries_per_file"] == 2, p  # the attempt after the last retry ended it
            assert p["retry_count"] == 2
