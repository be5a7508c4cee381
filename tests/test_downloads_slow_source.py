"""A source that drips bytes far below downloads.min_rate_bytes_per_s is replaced, then given up on."""

from __future__ import annotations

from mavail.testing.mirror import MIB, Mirror, Synthetic
from mavail.rpc.client import AsyncClient
from tests.dlhelpers import dl_engine, installed_bytes, wait_status, write_home

SLOW = {"downloads": {"min_rate_bytes_per_s": 200_000.0, "min_rate_window_s": 0.3, "min_rate_replacements": 2,
                      "stall_timeout_s": 5.0}}


async def test_a_dripping_source_is_given_up_for_the_next_mirror(home):
    data = Synthetic("drip", MIB)
    with Mirror() as m, Mirror() as m2:
        write_home(home, m, {"d": {"f.bin": data}}, config=SLOW, mirrors=[m2])
        m.faults("d/f.bin").throttle_bps = 20_000
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="d")
            await wait_status(eng, "d", "completed", timeout=30)
            assert installed_bytes(home, "d", "f.bin") == data.read(0, data.size)
            assert m.requests["d/f.bin"] == 2  # replaced once, then given up on after the second slow connection
            assert m2.bytes_served.get("d/f.bin", 0) > data.size // 2


async def test_a_dripping_only_source_fails_with_a_clear_reason(home):
    with Mirror() as m:
        write_home(home, m, {"d": {"f.bin": Synthetic("drip1", MIB)}}, config=SLOW)
        m.faults("d/f.bin").throttle_bps = 20_000
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="d")
            await wait_status(eng, "d", "failed", timeout=30)
            p = await c.call("downloads.progress", model_id="d")
            assert p["error_code"] == "SOURCE_UNAVAILABLE", p
            assert "min_rate_bytes_per_s" in p["error_message"], p
            assert m.requests["d/f.bin"] == 2


async def test_own_bandwidth_limit_is_not_mistaken_for_a_slow_source(home):
    data = Synthetic("capped", 400_000)
    with Mirror() as m:
        write_home(home, m, {"d": {"f.bin": data}}, config=SLOW)
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            # 0.1 MiB/s, under the minimum rate: the wait is ours, not the server's
            await c.call("downloads.start", model_id="d", bandwidth_limit_mbps=0.1)
            await wait_status(eng, "d", "completed", timeout=30)
            assert installed_bytes(home, "d", "f.bin") == data.read(0, data.size)


async def test_slow_connections_count_only_in_a_row(home):
    # every connection is quick for a window or two, then stalls under the minimum rate: each is replaced,
    # but the quick window between them means no two slow ones come in a row, so the URL is never given up on
    data = Synthetic("spurts", 2 * MIB)
    config = {"downloads": {**SLOW["downloads"], "parallel_min_size_mb": 1000.0, "retry_base_s": 0.01, "retry_max_s": 0.05}}
    with Mirror() as m:
        write_home(home, m, {"d": {"f.bin": data}}, config=config)
        f = m.faults("d/f.bin")
        f.throttle_bps = MIB  # 1 MiB/s: well over the minimum
        f.stall_after, f.stall_s = 700_000, 0.8  # then a pause far under it (but shorter than the stall timeout)
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="d")
            await wait_status(eng, "d", "completed", timeout=60)
            assert installed_bytes(home, "d", "f.bin") == data.read(0, data.size)
            assert m.requests["d/f.bin"] >= 3  # replaced more than min_rate_replacements times in all
