"""With the status board's cache on, `models.status` shows every change a download makes as soon as it is made."""

from __future__ import annotations

from typing import Any

from mavail.rpc.client import AsyncClient
from mavail.testing.mirror import MIB, Mirror, Synthetic
from tests.dlhelpers import dl_engine, write_home
from tests.helpers import wait_until


async def test_models_status_follows_every_kind_of_download_change_with_the_cache_on(home):
    models = {"a": {"f.bin": Synthetic("sa", 2 * MIB)}, "b": {"f.bin": Synthetic("sb", 6 * MIB)}, "f": {"f.bin": Synthetic("sf", 1000)}}
    with Mirror() as m:
        write_home(home, m, models, {"downloads": {"max_concurrent": 1}})
        m.default_faults.throttle_bps = MIB
        m.faults("f/f.bin").errors = [404]  # a client error is not retried: the download fails at once
        async with dl_engine(home, status_cache=True) as (eng, sock), AsyncClient(sock) as c:
            async def st(mid: str) -> dict[str, Any]:
                # every model's status, without a rescan: served from the cache (one model's would rescan it first)
                return (await c.call("models.status"))["models"][mid]

            async def until(mid: str, **want: Any) -> dict[str, Any]:
                seen: dict[str, Any] = {}

                async def check() -> bool:
                    seen.clear()
                    seen.update(await st(mid))
                    return all(seen.get(k) == v for k, v in want.items())

                try:
                    await wait_until(check, timeout=15)
                except AssertionError:
                    raise AssertionError(f"{mid}: wanted {want}, models.status says {seen}") from None
                return seen

            for mid in models:  # composed and cached before any download exists
                assert (await st(mid))["availability_status"] == "missing"

            # start: queued, then running
            started = await c.call("downloads.start", model_id="a")
            s = await st("a")
            assert s["download_id"] == started["download_id"] and s["download_status"] in ("queued", "downloading"), s
            s = await until("a", download_status="downloading", availability_status="downloading", can_pause_download=True)

            # progress ticks: the percentage and the estimate move while it runs
            first = s["download_progress"]
            s = await wait_for(lambda s: s["download_progress"] > first and s["estimated_download_time"] is not None, st, "a")

            # a second download (big enough to outlast the calls below) waits behind the first
            await c.call("downloads.start", model_id="b")
            await until("b", download_status="queued", availability_status="queued", can_pause_download=True)

            # priority: b pre-empts a
            await c.call("downloads.set_priority", model_id="b", priority="critical")
            await until("b", download_status="downloading", availability_status="downloading")
            await until("a", download_status="queued", availability_status="queued")

            # a cap on the queued one bounds its estimate
            await c.call("downloads.set_limit", model_id="a", bandwidth_limit_mbps=0.01)
            floor = (eng.downloads.get("a").remaining_bytes / (0.01 * MIB)) * 0.9
            await wait_for(lambda s: (s["estimated_download_time"] or 0) >= floor, st, "a")
            await c.call("downloads.set_limit", model_id="a", bandwidth_limit_mbps=0)

            # pause and resume
            await c.call("downloads.pause", model_id="a")
            await until("a", download_status="paused", availability_status="paused", can_resume_download=True,
                        can_pause_download=False, estimated_download_time=None)
            await c.call("downloads.resume", model_id="a")
            await wait_for(lambda s: s["download_status"] in ("queued", "downloading") and s["availability_status"] == s["download_status"]
                           and not s["can_resume_download"], st, "a")

            # cancel: the download fields go, the model is missing again
            await c.call("downloads.cancel", model_id="b")
            await until("b", availability_status="missing", download_id=None, download_status=None, download_progress=None)

            # completion: available, no download fields
            await until("a", availability_status="available", download_id=None, download_progress=None)

            # failure
            await c.call("downloads.start", model_id="f")
            await until("f", download_status="failed", availability_status="failed", can_resume_download=True)


async def wait_for(predicate: Any, read: Any, mid: str) -> dict[str, Any]:
    """Read `read(mid)` until `predicate(status)` holds; the last status read."""
    last: dict[str, Any] = {}

    async def check() -> bool:
        last.clear()
        last.update(await read(mid))
        return bool(predicate(last))

    try:
        await wait_until(check, timeout=15)
    except AssertionError:
        raise AssertionError(f"{mid}: condition not met; models.status says {last}") from None
    return last
