"""With the status cache on, every change the leases, activity and the request queue make shows in models.status."""

from __future__ import annotations

from pathlib import Path

from mavail.core.engine import Parts
from mavail.rpc.client import AsyncClient

from tests.fallback_helpers import FakeDownloads, NoGpu, next_event, write_catalog
from tests.helpers import running_engine, wait_until

GPU16 = {"MAVAIL_GPU_VRAM_GB": "16"}


async def test_cached_status_follows_leases_and_queue(home: Path) -> None:
    """A lease taken and released, a request queued, cancelled and released: each shows in the next models.status."""
    write_catalog(home, installed=("ltx-t2v",))
    parts = Parts(downloads=lambda e: FakeDownloads(e, eta=60.0))
    async with running_engine(home, config_env=GPU16, nvml=NoGpu(), parts=parts, status_cache=True) as (eng, sock), \
            AsyncClient(sock) as c:
        async def status(mid: str) -> dict:
            # every model's status: served from the cache (asking for one model rescans it, which recomposes it anyway)
            return (await c.call("models.status"))["models"][mid]

        # leases: is_loaded and active_leases
        before = await status("ltx-t2v")
        assert before["is_loaded"] is False and before["active_leases"] == 0
        lease = await c.call("models.acquire", model_id="ltx-t2v")
        st = await status("ltx-t2v")
        assert st["is_loaded"] is True and st["active_leases"] == 1
        second = await c.call("models.acquire", model_id="ltx-t2v")
        assert (await status("ltx-t2v"))["active_leases"] == 2
        await c.call("models.release", lease_id=lease["lease_id"])
        assert (await status("ltx-t2v"))["active_leases"] == 1
        await c.call("models.release", lease_id=second["lease_id"])
        st = await status("ltx-t2v")
        assert st["is_loaded"] is False and st["active_leases"] == 0
        # a lease ended by its connection closing
        async with AsyncClient(sock) as other:
            await other.call("models.acquire", model_id="ltx-t2v")
            assert (await status("ltx-t2v"))["active_leases"] == 1
        await wait_until(lambda: not eng.leases.is_leased("ltx-t2v"))
        assert (await status("ltx-t2v"))["active_leases"] == 0

        # activity: marking a model busy and idle recomposes its status
        eng.status.model_status("ltx-t2v")
        rev = eng.status.revision("ltx-t2v")
        eng.activity.acquire("ltx-t2v", "checking")
        assert eng.status.revision("ltx-t2v") > rev
        rev = eng.status.revision("ltx-t2v")
        eng.activity.release("ltx-t2v", "checking")
        assert eng.status.revision("ltx-t2v") > rev

        # the queue: queued_requests
        assert (await status("wan-t2v"))["queued_requests"] == 0
        a = await c.call("fallback.queue", model_id="wan-t2v", request={"prompt": "a"})
        st = await status("wan-t2v")
        assert st["queued_requests"] == 1 and st["availability_status"] == "downloading"
        b = await c.call("fallback.queue", model_id="wan-t2v", request={"prompt": "b"}, priority="high")
        assert (await status("wan-t2v"))["queued_requests"] == 2
        await c.call("fallback.queue_cancel", queue_id=a["queue_id"])
        assert (await status("wan-t2v"))["queued_requests"] == 1
        # the download completes: the request is released
        await eng.downloads.complete("wan-t2v")
        ev = await next_event(c, "queued_request_ready")
        assert ev["queue_id"] == b["queue_id"]
        st = await status("wan-t2v")
        assert st["queued_requests"] == 0 and st["availability_status"] == "available"
