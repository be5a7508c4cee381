"""Settings refuse non-finite and absurd numbers wherever they come from; the queue survives a bad wait."""

from __future__ import annotations

from pathlib import Path

import pytest

from mavail.core.config import SCHEMA, Config
from mavail.core.errors import ConfigError
from mavail.rpc.client import AsyncClient, RpcError
from tests.fallback_helpers import write_catalog
from tests.helpers import running_engine

HUGE = [("fallback.queue_max_wait_minutes", 1e308), ("fallback.default_max_wait_minutes", 1e300),
        ("analytics.max_buffered_events", 2**62), ("storage.max_gb", 1e300), ("health.check_interval_hours", 1e20),
        ("storage.check_interval_s", 1e18), ("rpc.rate_limit_per_second", 1e200), ("analytics.trend_min_events", 2**53),
        ("rpc.allowed_uids", [2**62])]


async def test_config_update_refuses_huge_numbers_and_keeps_the_old_value(engine) -> None:
    _eng, sock = engine
    async with AsyncClient(sock) as c:
        before = await c.call("config.get")
        for key, value in HUGE:
            with pytest.raises(RpcError) as exc:
                await c.call("config.update", patch={key: value})
            assert exc.value.code == -32602 and key in exc.value.message, (key, exc.value.to_dict())
        assert await c.call("config.get") == before
        # a sensible value still goes through
        res = await c.call("config.update", patch={"fallback.queue_max_wait_minutes": 120.0})
        assert res["updated_settings"] == ["fallback.queue_max_wait_minutes"]


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "1e308", str(2**62)])
def test_environment_overrides_are_bounded_too(text: str) -> None:
    for key in ("fallback.queue_max_wait_minutes", "analytics.max_buffered_events"):
        env = {"MAVAIL_" + key.replace(".", "_").upper(): text}
        with pytest.raises(ConfigError):
            Config.load(None, environ=env)


def test_config_toml_values_are_bounded_too(tmp_path: Path) -> None:
    p = tmp_path / "config.toml"
    for body in ("[fallback]\nqueue_max_wait_minutes = 1e308\n", "[fallback]\nqueue_max_wait_minutes = inf\n",
                 "[fallback]\nqueue_max_wait_minutes = nan\n", f"[analytics]\nmax_buffered_events = {2**62}\n"):
        p.write_text(body)
        with pytest.raises(ConfigError):
            Config.load(p, environ={})


def test_every_number_setting_has_a_finite_ceiling() -> None:
    for s in SCHEMA:
        if s.type in (int, float):
            with pytest.raises(ConfigError):
                s.coerce(s.type(10**16) if s.type is float else 2**53)


async def test_a_wait_that_cannot_be_a_date_refuses_the_call_and_the_queue_keeps_answering(home: Path) -> None:
    write_catalog(home, installed=("ltx-t2v",))
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        eng.config._values["fallback.queue_max_wait_minutes"] = 1e308  # as if a value had slipped past validation
        with pytest.raises(RpcError) as exc:
            await c.call("fallback.queue", model_id="ltx-t2v", request={})
        assert exc.value.code == -32602, exc.value.to_dict()
        assert (await c.call("fallback.queue_list"))["queue"] == []
        assert await eng.db.fetchall("SELECT * FROM fallback_queue") == []
        eng.config._values["fallback.queue_max_wait_minutes"] = 60.0
        res = await c.call("fallback.queue", model_id="ltx-t2v", request={})
        assert res["status"] == "ready"
