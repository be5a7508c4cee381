"""Downloads against a misbehaving server: ranges off, 416, changed files, drops, bursts, lies, stalls, corruption."""

from __future__ import annotations

import asyncio

import time

import pytest

from mavail.testing.mirror import Mirror, Synthetic
from mavail.rpc.client import AsyncClient, RpcError
from tests.dlhelpers import dl_engine, installed_bytes, wait_status, write_home

SIZE = 400_000
PARALLEL = {"downloads": {"parallel_min_size_mb": 0.0, "parallel_ranges": 4}}


def _ranged(m: Mirror, path: str) -> list:
    return [r for r in m.log if r.path == path and r.method == "GET"]


@pytest.mark.parametrize("parallel", [False, True])
async def test_drops_resume_where_they_stopped(home, parallel):
    data = Synthetic("drop", SIZE)
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": data}}, PARALLEL if parallel else None)
        f = m.faults("m/f.bin")
        f.drop_after, f.drop_count = 50_000, 6
        async with dl_engine(home) as (eng, sock):
            sub = eng.events.subscribe(types=["model_download_progress"], model_ids=["m"])
            await eng.downloads.start("m", max_retries=1)  # progress renews the retry budget
            await wait_status(eng, "m", "completed")
            assert installed_bytes(home, "m", "f.bin") == data.read(0, SIZE)
            # nothing fetched twice beyond what was in flight: every drop resumed at its byte
            assert m.bytes_served["m/f.bin"] <= SIZE + 4 * 64 * 1024
            assert eng.downloads.progress("m")["total_retries"] >= 3
            # progress events carry the retries, so a watcher (the TUI) sees them without polling
            # (the status changes before its event is sent, after the state is saved: wait for the event)
            async def completed_event():
                while True:
                    for ev in await sub.next_batch():
                        if ev.params["status"] == "completed":
                            return ev

            last = await asyncio.wait_for(completed_event(), 10)
            assert last.params["total_retries"] == eng.downloads.progress("m")["total_retries"] >= 3


async def test_server_without_ranges_or_validators(home):
    data = Synthetic("norange", SIZE)
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": data}}, PARALLEL)
        f = m.faults("m/f.bin")
        f.ranges = f.etag = f.last_modified = False
        async with dl_engine(home) as (eng, sock):
            await eng.downloads.start("m")
            await wait_status(eng, "m", "completed")
            assert installed_bytes(home, "m", "f.bin") == data.read(0, SIZE)


async def test_file_changed_upstream_restarts_from_zero(home):
    """Resume with If-Range after the file changed: the server sends the new file whole; never spliced."""
    old = Synthetic("v1", SIZE)
    new = Synthetic("v2", SIZE)
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": new}})  # the catalog describes the new file
        m.replace("m/f.bin", old)
        f = m.faults("m/f.bin")
        f.drop_after, f.drop_count = 100_000, 1
        f.change_after_requests, f.change_to = 1, new
        async with dl_engine(home) as (eng, sock):
            await eng.downloads.start("m")
            await wait_status(eng, "m", "completed")
            assert installed_bytes(home, "m", "f.bin") == new.read(0, SIZE)
            reqs = _ranged(m, "m/f.bin")
            assert reqs[1].if_range is not None and reqs[1].status == 200  # If-Range refused the old validator


async def test_changed_etag_with_a_server_that_ignores_if_range(home):
    old, new = Synthetic("w1", SIZE), Synthetic("w2", SIZE)
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": new}})
        m.replace("m/f.bin", old)
        f = m.faults("m/f.bin")
        f.if_range = False
        f.drop_after, f.drop_count = 100_000, 1
        f.change_after_requests, f.change_to = 1, new
        async with dl_engine(home) as (eng, sock):
            await eng.downloads.start("m")
            await wait_status(eng, "m", "completed")
            assert installed_bytes(home, "m", "f.bin") == new.read(0, SIZE)


async def test_416_and_wrong_size_source_falls_back_to_mirror(home):
    data = Synthetic("m416", SIZE)
    with Mirror() as m, Mirror() as alt:
        write_home(home, m, {"m": {"f.bin": data}}, mirrors=[alt])
        m.replace("m/f.bin", Synthetic("short", SIZE // 2))  # primary serves a different, smaller file
        f = m.faults("m/f.bin")
        f.errors = [416]
        async with dl_engine(home) as (eng, sock):
            await eng.downloads.start("m")
            await wait_status(eng, "m", "completed")
            assert installed_bytes(home, "m", "f.bin") == data.read(0, SIZE)
            assert alt.requests["m/f.bin"] >= 1


async def test_retry_after_is_honoured_and_4xx_not_retried(home):
    data = Synthetic("ra", 50_000)
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": data}, "gone": {"g.bin": b"abc"}})
        f = m.faults("m/f.bin")
        f.errors, f.retry_after = [503, 429], "1"
        m.remove("gone/g.bin")
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            await c.subscribe(types=["download_failed"])
            t0 = time.monotonic()
            await eng.downloads.start("m")
            await eng.downloads.start("gone", max_retries=5)
            await wait_status(eng, "m", "completed")
            assert time.monotonic() - t0 >= 2.0  # two waits of Retry-After: 1
            p = await wait_status(eng, "gone", "failed")
            assert p["error_code"] == "SOURCE_UNAVAILABLE" and "404" in p["error_message"]
            assert m.requests["gone/g.bin"] == 1  # a 404 is not retried
            ev = [e async for e in _take(c.events(), 1)][0]
            assert ev["params"]["model_id"] == "gone" and ev["params"]["error_code"] == "SOURCE_UNAVAILABLE"
            st = await c.call("models.status", model_id="gone")
            assert st["availability_status"] == "failed"


async def _take(agen, n):
    i = 0
    async for x in agen:
        yield x
        i += 1
        if i >= n:
            return


async def test_5xx_until_retries_run_out_then_resume_later(home):
    data = Synthetic("5xx", 100_000)
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": data}})
        f = m.faults("m/f.bin")
        f.errors = [500] * 3
        async with dl_engine(home) as (eng, sock):
            await eng.downloads.start("m", max_retries=1)
            p = await wait_status(eng, "m", "failed")
            assert p["error_code"] == "SOURCE_UNAVAILABLE" and "500" in p["error_message"]
            f.errors = []
            await eng.downloads.resume("m")
            await wait_status(eng, "m", "completed")


async def test_lying_content_length(home):
    data = Synthetic("lie", SIZE)
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": data}})
        f = m.faults("m/f.bin")
        f.lie_length, f.lie_count = -150_000, 1  # claims and sends less: a short response
        async with dl_engine(home) as (eng, sock):
            await eng.downloads.start("m")
            await wait_status(eng, "m", "completed")
            f.lie_length, f.lie_count = 150_000, 2  # claims more than it sends
            (home / "models" / "m" / "1.0.0" / "f.bin").unlink()
            await eng.db.execute("DELETE FROM installed_files")
            await eng.downloads.start("m")
            await wait_status(eng, "m", "completed")
            assert installed_bytes(home, "m", "f.bin") == data.read(0, SIZE)


async def test_stalled_connection_is_replaced_without_spending_a_retry(home):
    data = Synthetic("stall", SIZE)
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": data}}, {"downloads": {"stall_timeout_s": 0.3}})
        f = m.faults("m/f.bin")
        f.stall_after, f.stall_count = 100_000, 2
        async with dl_engine(home) as (eng, sock):
            await eng.downloads.start("m", max_retries=0)
            await wait_status(eng, "m", "completed")
            assert installed_bytes(home, "m", "f.bin") == data.read(0, SIZE)


async def test_corrupt_bytes_are_an_integrity_error_and_retried(home):
    data = Synthetic("corrupt", SIZE)
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": data}, "bad": {"b.bin": Synthetic("b", 10_000)}})
        f = m.faults("m/f.bin")
        f.corrupt_offsets, f.corrupt_count = (12345,), 1
        m.faults("bad/b.bin").corrupt_offsets = (5,)  # always corrupt
        async with dl_engine(home) as (eng, sock):
            await eng.downloads.start("m")
            await eng.downloads.start("bad", max_retries=1)
            await wait_status(eng, "m", "completed")
            assert installed_bytes(home, "m", "f.bin") == data.read(0, SIZE)
            assert m.requests["m/f.bin"] >= 2
            p = await wait_status(eng, "bad", "failed")
            assert p["error_code"] == "INTEGRITY_ERROR"
            assert not (home / "models" / "bad" / "1.0.0" / "b.bin").exists()  # never installed


async def test_refuses_what_the_disk_cannot_hold(home):
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": Synthetic("big", 1000)}}, {"storage": {"min_free_gb": 1e9}})
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            with pytest.raises(RpcError) as ei:
                await c.call("downloads.start", model_id="m")
            assert ei.value.code == -32005
            details = ei.value.data["details"]
            assert details["required_bytes"] == 1000 and details["free_bytes"] > 0
            with pytest.raises(RpcError) as ei:
                await c.call("downloads.start", model_id="nope")
            assert ei.value.code == -32001
            with pytest.raises(RpcError) as ei:
                await c.call("downloads.progress", model_id="m")
            assert ei.value.code == -32009
