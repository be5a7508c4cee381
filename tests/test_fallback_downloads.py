"""Fallback with the real download scheduler and the local mirror: queue release on a finished download,
models.request starting a download, estimates that come from the scheduler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mavail.testing.mirror import Mirror, Synthetic
from mavail.rpc.client import AsyncClient
from tests.fallback_helpers import NoGpu, next_event
from tests.helpers import running_engine, wait_until

MIB = 1024 * 1024


@pytest.fixture
def mirror():
    with Mirror() as m:
        yield m


async def test_queue_released_when_real_download_completes(home: Path, mirror: Mirror):
    home.mkdir(parents=True)
    text = (mirror.add_model("first", {"w.bin": Synthetic("first", 3 * MIB)}, family="f")
            + mirror.add_model("wanted", {"w.bin": Synthetic("wanted", 2 * MIB)}, family="f"))
    mirror.faults().throttle_bps = 8 * MIB
    (home / "catalog.toml").write_text(text)
    (home / "config.toml").write_text("[downloads]\nmax_concurrent = 1\nparallel_ranges = 1\n")
    async with running_engine(home, nvml=NoGpu()) as (eng, sock), AsyncClient(sock) as c, AsyncClient(sock) as watcher:
        await watcher.subscribe(types=["queued_request_ready"])
        await c.call("downloads.start", model_id="first")
        res = await c.call("models.request", model_id="wanted", priority="low")
        assert res["action_taken"] in ("queued", "download_started") and res["download_id"]
        q = await c.call("fallback.queue", model_id="wanted", request={"prompt": "p"}, priority="low")
        assert q["status"] == "waiting" and q["availability_status"] in ("queued", "downloading")
        assert eng.queue.has_waiting("wanted")

        async def estimate() -> float | None:
            lst = await c.call("fallback.queue_list")
            return lst["queue"][0]["estimated_wait_seconds"] if lst["queue"] else 0.0

        # once the scheduler has measured a rate, the estimate is its figure for this model
        await wait_until(lambda: _not_none(estimate()), timeout=20)
        ready = await next_event(c, "queued_request_ready", timeout=30)
        assert ready["queue_id"] == q["queue_id"] and ready["path"] == str(home / "models" / "wanted" / "1.0.0")
        assert (home / "models" / "wanted" / "1.0.0" / "w.bin").stat().st_size == 2 * MIB
        assert (await next_event(watcher, "queued_request_ready", timeout=30))["queue_id"] == q["queue_id"]
        assert not eng.queue.has_waiting("wanted")
        again = await c.call("models.request", model_id="wanted")
        assert again["action_taken"] == "model_ready" and again["path"] == ready["path"]


async def _not_none(coro: Any) -> bool:
    return (await coro) is not None


async def test_queue_restart_asks_scheduler_again(home: Path, mirror: Mirror):
    home.mkdir(parents=True)
    (home / "catalog.toml").write_text(mirror.add_model("m", {"w.bin": Synthetic("m", 1 * MIB)}))
    mirror.faults().errors = [503] * 1000  # the source is down: the download cannot finish in the first run
    (home / "config.toml").write_text("[downloads]\nmax_retries = 0\nretry_base_s = 0.01\n")
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        q = await c.call("fallback.queue", model_id="m", request={}, max_wait_time_minutes=30)
    mirror.clear_faults()
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        await c.subscribe(types=["queued_request_ready"])
        if eng.queue.has_waiting("m"):
            ev = await next_event(c, "queued_request_ready", timeout=30)
            assert ev["queue_id"] == q["queue_id"]
        await wait_until(lambda: not eng.queue.has_waiting("m"), timeout=20)
        assert (home / "models" / "m" / "1.0.0" / "w.bin").exists()
