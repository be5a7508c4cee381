"""models.request over the socket with the real download scheduler: concurrent requests for one model join its
download; with auto_download off nothing is downloaded and nothing says it will be."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from mavail.testing.mirror import Mirror, Synthetic
from mavail.rpc.client import AsyncClient
from tests.fallback_helpers import NoGpu, write_catalog
from tests.helpers import running_engine, wait_until

MIB = 1024 * 1024
STARTED = ("download_started", "queued")


@pytest.fixture
def mirror():
    with Mirror() as m:
        yield m


def setup(home: Path, mirror: Mirror, ids: list[str]) -> None:
    home.mkdir(parents=True)
    (home / "catalog.toml").write_text("".join(mirror.add_model(m, {"w.bin": Synthetic(m, 2 * MIB)}, family="f") for m in ids))
    (home / "config.toml").write_text("[downloads]\nparallel_ranges = 1\n")
    mirror.faults().throttle_bps = 256 * 1024  # the downloads stay in progress for the whole test


def check_joined(results: list[dict[str, Any]]) -> None:
    """One request started the download; every other one joined it (the same download, in progress)."""
    for r in results:
        assert r["success"] is True and r["action_taken"] in STARTED + ("download_in_progress",), r
    assert len({r["download_id"] for r in results}) == 1 and results[0]["download_id"]
    assert sum(r["action_taken"] in STARTED for r in results) == 1, [r["action_taken"] for r in results]


async def test_concurrent_requests_join_the_download(home: Path, mirror: Mirror):
    setup(home, mirror, ["wanted"])
    async with running_engine(home, nvml=NoGpu()) as (eng, sock), AsyncClient(sock) as a, AsyncClient(sock) as b:
        dl = eng.downloads
        real_start, real_resolve = dl.start, dl._resolve
        entered: list[str] = []
        gate = asyncio.Event()

        async def start(model_id: str, *args: Any, **kw: Any) -> dict[str, Any]:
            entered.append(model_id)
            return await real_start(model_id, *args, **kw)

        async def resolve(model_id: str) -> Any:
            await gate.wait()  # the first start holds the scheduler's lock here
            return await real_resolve(model_id)

        dl.start, dl._resolve = start, resolve
        first = asyncio.create_task(a.call("models.request", model_id="wanted"))
        await wait_until(lambda: len(entered) == 1)
        second = asyncio.create_task(b.call("models.request", model_id="wanted"))
        await wait_until(lambda: len(entered) == 2)  # both decided to start one; the second waits for the lock
        gate.set()
        r1, r2 = await asyncio.gather(first, second)
        check_joined([r1, r2])
        assert r1["action_taken"] in STARTED and r2["action_taken"] == "download_in_progress"
        assert r2["estimated_wait_seconds"] is None or r2["estimated_wait_seconds"] >= 0


async def test_concurrent_requests_stress(home: Path, mirror: Mirror):
    ids = [f"m{i}" for i in range(4)]
    setup(home, mirror, ids)
    async with running_engine(home, nvml=NoGpu()) as (eng, sock):
        clients = [AsyncClient(sock) for _ in range(6)]
        for c in clients:
            await c.__aenter__()
        try:
            for mid in ids:
                results = await asyncio.gather(*(c.call("models.request", model_id=mid) for c in clients))
                check_joined(list(results))
        finally:
            for c in clients:
                await c.__aexit__(None, None, None)


async def test_request_without_auto_download_says_what_happens(home: Path):
    write_catalog(home, installed=("ltx-t2v",))
    # a low bar for the alternative, a high one for "use it instead": the hybrid strategy, which used to promise a download
    (home / "config.toml").write_text("[fallback]\nalternative_min_score = 0.99\nhybrid_min_score = 0.05\n")
    async with running_engine(home, config_env={"MAVAIL_GPU_VRAM_GB": "16"}, nvml=NoGpu()) as (eng, sock), AsyncClient(sock) as c:
        off = await c.call("models.request", model_id="wan-t2v", auto_download=False)
        assert off["success"] is False and off["action_taken"] == "error" and off.get("download_id") is None
        text = json.dumps(off).lower()
        for promise in ("will be downloaded", "downloads meanwhile", "will be ready", "download is under way"):
            assert promise not in text, (promise, off["message"], off["fallback_strategy"])
        assert "auto_download" in off["message"] and "not" in off["message"]
        assert off["fallback_strategy"]["suggested_model"] == "ltx-t2v"
        assert not eng.downloads.is_active("wan-t2v")
        assert (await c.call("models.status", model_id="wan-t2v"))["availability_status"] == "missing"
        # the same request with auto_download on may promise it: the download really starts
        on = await c.call("models.request", model_id="wan-t2v")
        assert on["action_taken"] in STARTED and on["download_id"]
        await wait_until(lambda: eng.downloads.is_active("wan-t2v") or eng.status.availability_status("wan-t2v") != "missing")
