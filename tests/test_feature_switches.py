"""Feature switches: scheduled health checks, fallback, usage analytics, downloads on request, the notification level."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mavail.rpc.client import AsyncClient
from tests.helpers import install_files, model_toml, running_engine

WEIGHTS = [("w.bin", b"weights" * 1000)]


class ShiftedClock:
    """The system clock moved forward by `offset` seconds (makes scheduled checks due)."""

    offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


def _home(home: Path, config: str = "") -> None:
    home.mkdir(parents=True, exist_ok=True)
    # "wanted" is not here and cannot be fetched quickly (port 9 refuses); "alt" is ready and does the same job
    (home / "catalog.toml").write_text(model_toml("wanted", WEIGHTS, quality="high") + model_toml("alt", WEIGHTS, quality="high"))
    install_files(home, "alt", WEIGHTS)
    (home / "config.toml").write_text("[downloads]\nmax_retries = 0\nretry_base_s = 0.01\nconnect_timeout_s = 1.0\n" + config)


async def test_health_monitoring_off_runs_no_scheduled_check(home: Path):
    _home(home, "[health]\nmonitoring_enabled = false\n")
    clock = ShiftedClock()
    async with running_engine(home, clock=clock) as (eng, sock), AsyncClient(sock) as c:
        before = (await c.call("models.status", model_id="alt"))["last_health_check"]  # the stock-taking at start
        clock.offset = 30 * 86400.0  # every quick and full check is long due
        assert await eng.health.run_scheduled_once() == []
        assert (await c.call("models.status", model_id="alt"))["last_health_check"] == before
        await c.call("config.update", patch={"health.monitoring_enabled": True})
        done = await eng.health.run_scheduled_once()
        assert any(d.get("model_id") == "alt" for d in done), done
        assert (await c.call("models.status", model_id="alt"))["last_health_check"] > before


@pytest.mark.parametrize("enabled", [True, False])
async def test_fallback_off_suggests_no_alternative_and_sends_no_suggestion(home: Path, enabled: bool):
    _home(home, f"[fallback]\nenabled = {'true' if enabled else 'false'}\n")
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        await c.subscribe(types=["fallback_suggestion"])
        res = await c.call("models.request", model_id="wanted", auto_download=False)
        sug = await c.call("fallback.suggest", requested_model="wanted")
        if enabled:
            assert res["fallback_strategy"]["suggested_model"] == "alt" and [s["suggested_model"] for s in res["suggestions"]] == ["alt"]
            assert "alt" in [s["suggested_model"] for s in sug["suggestions"]]
            ev = await asyncio.wait_for(c.events().__anext__(), 5)
            assert ev["method"] == "fallback_suggestion"
        else:
            assert res["fallback_strategy"]["suggested_model"] in (None, "wanted") and "suggestions" not in res
            assert [s["suggested_model"] for s in sug["suggestions"]] in ([], ["wanted"])
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(c.events().__anext__(), 0.5)


async def test_analytics_off_stores_no_usage(home: Path):
    _home(home, "[analytics]\nenabled = false\n")
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        r = await c.call("analytics.record", model_id="alt", generation_time_s=2.0, success=True)
        assert r["stored"] is False
        assert (await c.call("analytics.record_batch", events=[{"model_id": "alt", "generation_time_s": 1.0, "success": True}]))["recorded"] == 0
        await c.call("models.request", model_id="alt")
        await eng.analytics.flush()
        assert await eng.db.fetchall("SELECT * FROM usage_events") == []
        usage = (await c.call("analytics.usage", model_id="alt"))["models"]["alt"]
        assert usage["total_uses"] == 0 and usage["requests"] == 0
        with pytest.raises(Exception):  # still validated: bad input is refused as before
            await c.call("analytics.record", model_id="alt", generation_time_s=-1.0, success=True)
        await c.call("config.update", patch={"analytics.enabled": True})
        assert (await c.call("analytics.record", model_id="alt", generation_time_s=2.0, success=True))["stored"] is True
        await eng.analytics.flush()
        assert len(await eng.db.fetchall("SELECT * FROM usage_events")) == 1


async def test_downloads_on_request_off_answers_without_downloading(home: Path):
    _home(home)
    text = (home / "config.toml").read_text().replace("[downloads]\n", "[downloads]\nauto_download_on_request = false\n")
    (home / "config.toml").write_text(text)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        res = await c.call("models.request", model_id="wanted")
        assert res["action_taken"] == "error" and "auto_download_on_request is off" in res["message"], res
        assert (await c.call("downloads.active"))["active_downloads"] == []
        await c.call("config.update", patch={"downloads.auto_download_on_request": True})
        res = await c.call("models.request", model_id="wanted")
        assert res["action_taken"] in ("download_started", "queued", "download_in_progress"), res
        assert [d["model_id"] for d in (await c.call("downloads.active"))["active_downloads"]] == ["wanted"]


async def test_notification_level_filters_the_events_subscribers_get(home: Path):
    _home(home, '[events]\nnotification_level = "alerts"\n')
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        await c.subscribe()
        await c.call("downloads.start", model_id="wanted")  # fails: nothing answers on port 9
        ev = await asyncio.wait_for(c.events().__anext__(), 10)
        assert ev["method"] == "download_failed"  # no progress nor availability events before it
        await c.call("config.update", patch={"events.notification_level": "none"})
        await c.call("downloads.resume", model_id="wanted")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(c.events().__anext__(), 1.0)
        await c.call("config.update", patch={"events.notification_level": "all"})
        await c.call("downloads.resume", model_id="wanted")
        ev = await asyncio.wait_for(c.events().__anext__(), 5)
        assert ev["method"] in ("model_download_progress", "config_changed", "model_availability_change")
