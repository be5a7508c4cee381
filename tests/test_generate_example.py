"""scripts/generate_example.py as a separate process against an engine: use, take an alternative, queue and wait."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from tests.fallback_helpers import FakeDownloads, NoGpu, write_catalog
from mavail.core.engine import Parts
from tests.helpers import running_engine, wait_until

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "generate_example.py"


class Run:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.steps: list[dict[str, Any]] = []

    async def until(self, step: str, timeout: float = 20.0) -> dict[str, Any]:
        assert self.proc.stdout is not None

        async def read() -> dict[str, Any]:
            while True:
                line = await self.proc.stdout.readline()  # type: ignore[union-attr]
                if not line:
                    raise AssertionError(f"script ended before {step!r}: {self.steps}")
                self.steps.append(json.loads(line))
                if self.steps[-1]["step"] == step:
                    return self.steps[-1]

        return await asyncio.wait_for(read(), timeout)

    async def finish(self, timeout: float = 20.0) -> int:
        await self.until("released", timeout)
        return await asyncio.wait_for(self.proc.wait(), timeout)


async def start(sock: Path, *args: str) -> Run:
    proc = await asyncio.create_subprocess_exec(sys.executable, str(SCRIPT), *args, "--socket", str(sock), "--generate-seconds", "0.05",
                                                stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    return Run(proc)


async def test_uses_ready_model_and_releases(home: Path):
    write_catalog(home, installed=("wan-t2v",))
    async with running_engine(home, config_env={"MAVAIL_GPU_VRAM_GB": "48"}, nvml=NoGpu()) as (eng, sock):
        run = await start(sock, "wan-t2v", "--resolution", "1280x704")
        acquired = await run.until("acquired")
        assert acquired["model_id"] == "wan-t2v" and acquired["path"].endswith("models/wan-t2v/1.0.0")
        assert await run.finish() == 0
        await wait_until(lambda: not eng.leases.is_leased("wan-t2v"))


async def test_takes_alternative(home: Path):
    write_catalog(home, installed=("ltx-t2v", "wan-i2v"))
    async with running_engine(home, config_env={"MAVAIL_GPU_VRAM_GB": "16"}, nvml=NoGpu(), parts=Parts(downloads=lambda e: FakeDownloads(e, eta=3600.0))) as (eng, sock):
        run = await start(sock, "wan-t2v", "--resolution", "1280x704", "--max-wait", "10")
        req = await run.until("requested")
        assert req["strategy"] in ("alternative_model", "hybrid_approach")
        acquired = await run.until("acquired")
        assert acquired["model_id"] == "ltx-t2v"  # never the image-to-video model of the same family
        assert await run.finish() == 0


async def test_queues_and_waits_for_release(home: Path):
    write_catalog(home)
    async with running_engine(home, config_env={"MAVAIL_GPU_VRAM_GB": "48"}, nvml=NoGpu(), parts=Parts(downloads=lambda e: FakeDownloads(e, eta=20.0))) as (eng, sock):
        fake = eng.downloads
        run = await start(sock, "wan-t2v", "--max-wait", "5")
        req = await run.until("requested")
        assert req["action_taken"] == "download_started" and req["strategy"] == "queue_and_wait"
        queued = await run.until("queued")
        assert queued["estimated_wait_seconds"] == 20.0
        await wait_until(lambda: eng.queue.has_waiting("wan-t2v"))
        await fake.complete("wan-t2v")
        ready = await run.until("ready")
        assert ready["path"].endswith("models/wan-t2v/1.0.0")
        assert (await run.until("acquired"))["model_id"] == "wan-t2v"
        assert await run.finish() == 0


async def test_against_demo_catalog_with_real_downloads(home: Path):
    """The demo's catalog on the mirror, the real scheduler: a missing model is downloaded, the script waits, then uses it."""
    from mavail.testing.mirror import Mirror
    from mavail.tui import demo

    with Mirror() as good, Mirror() as flaky:
        home.mkdir(parents=True)
        (home / "catalog.toml").write_text(demo.catalog_toml(good, flaky))
        async with running_engine(home, config_env={"MAVAIL_GPU_VRAM_GB": "24"}, nvml=NoGpu()) as (eng, sock):
            run = await start(sock, "wan2.2-ti2v-5b", "--resolution", "1280x704", "--max-wait", "5", "--no-alternative")
            req = await run.until("requested")
            assert req["action_taken"] in ("download_started", "queued")
            await run.until("queued")
            ready = await run.until("ready", timeout=60)
            assert ready["path"].endswith("models/wan2.2-ti2v-5b/1.0.0")
            assert (await run.until("acquired"))["model_id"] == "wan2.2-ti2v-5b"
            assert await run.finish() == 0
            # a text request for the 80 GiB model on a 24 GiB GPU: never the image model, and a fitting text model
            res = await eng.fallback.request("wan2.2-t2v-a14b", {"resolution": "832x480"}, auto_download=False)
            assert res["action_taken"] == "error"
            assert all(s["model_type"] != "image_to_video" for s in res.get("suggestions", []))
            assert res["fallback_strategy"]["suggested_model"] in ("wan2.2-ti2v-5b", None)
