"""config.update writes off the event loop, only when something changes, and cannot flood past the rate limit."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import mavail.core.config as config_mod
from mavail.rpc.client import AsyncClient, RpcError
from tests.helpers import running_engine


async def test_exempt_config_update_of_the_limit_has_a_small_bucket_of_its_own(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "config.toml").write_text("[rpc]\nrate_limit_per_second = 1.0\n")
    async with running_engine(home) as (_eng, sock), AsyncClient(sock) as c:
        ok = limited = 0
        for i in range(50):
            try:
                await c.call("config.update", patch={"rpc.rate_limit_per_second": 1.0 + (i % 2)})
                ok += 1
            except RpcError as exc:
                assert exc.code == -32004, exc.to_dict()
                limited += 1
        assert ok <= 5 and limited >= 45, (ok, limited)
        # the reads that let a limited client recover still answer
        for _ in range(5):
            await c.call("session.hello")
            await c.call("config.get")


async def test_an_update_that_changes_nothing_does_not_rewrite_the_file(engine) -> None:
    eng, sock = engine
    async with AsyncClient(sock) as c:
        await c.call("config.update", patch={"downloads.max_concurrent": 2})
        st = eng.config.path.stat()
        res = await c.call("config.update", patch={"downloads.max_concurrent": 2})
        assert res["updated_settings"] == []
        st2 = eng.config.path.stat()
        assert (st2.st_ino, st2.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)


async def test_the_file_write_runs_off_the_event_loop(engine, monkeypatch: pytest.MonkeyPatch) -> None:
    eng, sock = engine
    started, release = threading.Event(), threading.Event()
    real = config_mod.atomic_write_bytes

    def slow_write(path: Path, data: bytes) -> None:
        started.set()
        assert release.wait(10)
        real(path, data)

    monkeypatch.setattr(config_mod, "atomic_write_bytes", slow_write)
    async with AsyncClient(sock) as a, AsyncClient(sock) as b:
        task = asyncio.create_task(a.call("config.update", patch={"downloads.max_concurrent": 5}))
        try:
            assert await asyncio.to_thread(started.wait, 10)
            # the loop still answers another client while the write is held
            assert (await asyncio.wait_for(b.call("session.hello"), 5))["engine_version"]
        finally:
            release.set()
        assert (await task)["updated_settings"] == ["downloads.max_concurrent"]
    assert eng.config.get("downloads.max_concurrent") == 5
    assert "max_concurrent = 5" in eng.config.path.read_text()


def test_config_update_is_still_usable_synchronously(tmp_path: Path) -> None:
    cfg = config_mod.Config.load(tmp_path / "config.toml", environ={})
    changed, restart = cfg.update({"downloads.max_concurrent": 4})
    assert changed == {"downloads.max_concurrent": 4} and not restart
    assert "max_concurrent = 4" in (tmp_path / "config.toml").read_text()
