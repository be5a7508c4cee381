"""Every foundation method over a real socket, with the contract's result shapes."""

from __future__ import annotations

import os

from pathlib import Path

from mavail.rpc.client import AsyncClient, RpcError
from tests.helpers import install_files, model_toml, running_engine, synthetic_bytes


async def test_hello_and_discover(engine):
    eng, sock = engine
    async with AsyncClient(sock) as c:
        hello = await c.call("session.hello", client="test")
        assert hello["protocol_version"] and hello["engine_version"]
        assert "models.status" in hello["methods"]
        doc = await c.call("rpc.discover")
        names = {m["name"] for m in doc["methods"]}
        assert set(hello["methods"]) == names
        status = next(m for m in doc["methods"] if m["name"] == "models.list")
        assert {p["name"] for p in status["params"]} == {"page", "limit", "sort", "order", "status"}


async def test_models_presence(home: Path):
    a = [("a.bin", synthetic_bytes("a", 1000))]
    b = [("b/one.bin", synthetic_bytes("b1", 500)), ("b/two.bin", synthetic_bytes("b2", 300))]
    home.mkdir(parents=True)
    (home / "catalog.toml").write_text(model_toml("model-a", a) + model_toml("model-b", b))
    install_files(home, "model-a", a)
    install_files(home, "model-b", b[:1])
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        res = await c.call("models.status")
        assert res["models"]["model-a"]["availability_status"] == "available"
        assert res["models"]["model-a"]["is_available"] is True
        assert res["models"]["model-b"]["availability_status"] == "missing"
        assert res["models"]["model-b"]["missing_files"] == ["b/two.bin"]
        assert res["summary"]["total_models"] == 2 and res["summary"]["available_models"] == 1
        assert abs(res["summary"]["total_storage_gb"] * 1024**3 - 1500) < 1
        one = await c.call("models.status", model_id="model-a")
        assert one["path"] == str(home / "models" / "model-a" / "1.0.0")
        assert one["files"][0]["present"] is True and one["files"][0]["verified"] is False
        # truncate a file by hand: a fresh status sees it
        (home / "models/model-a/1.0.0/a.bin").write_bytes(b"x")
        one = await c.call("models.status", model_id="model-a")
        assert one["availability_status"] == "corrupted"
        lst = await c.call("models.list", limit=1, order="desc")
        assert [m["model_id"] for m in lst["data"]] == ["model-b"]
        assert lst["pagination"] == {"page": 1, "limit": 1, "total": 2, "pages": 2, "has_next": True, "has_prev": False}
        miss = await c.call("models.list", status="missing")
        assert [m["model_id"] for m in miss["data"]] == ["model-b"]
        try:
            await c.call("models.status", model_id="nope")
        except RpcError as exc:
            assert exc.code == -32001 and exc.name == "MODEL_NOT_FOUND"
        else:
            raise AssertionError("expected MODEL_NOT_FOUND")


async def test_config_get_update(engine):
    eng, sock = engine
    async with AsyncClient(sock) as c:
        cfg = await c.call("config.get")
        assert cfg["downloads"]["max_concurrent"] == 3
        res = await c.call("config.update", patch={"downloads": {"max_concurrent": 5}, "rpc.token": "abc"})
        assert res["updated_settings"] == ["downloads.max_concurrent", "rpc.token"]
        assert res["restart_required"] is True
        saved = (eng.layout.config_file).read_text()
        assert "max_concurrent = 5" in saved
        before = saved
        for bad, field in [({"downloads": {"max_concurrent": "x"}}, "downloads.max_concurrent"),
                           ({"downloads": {"max_concurrent": 0}}, "downloads.max_concurrent"),
                           ({"nope": {"x": 1}}, "nope.x")]:
            try:
                await c.call("config.update", patch=bad)
            except RpcError as exc:
                assert exc.code == -32602 and exc.details["field"] == field
            else:
                raise AssertionError(bad)
        assert eng.layout.config_file.read_text() == before
        assert eng.config.get("downloads.max_concurrent") == 5


async def test_catalog_reload_keeps_last_good(engine):
    eng, sock = engine
    cat = eng.layout.catalog_file
    cat.write_text(model_toml("good", [("f.bin", b"abc")]))
    async with AsyncClient(sock) as c:
        res = await c.call("catalog.reload")
        assert res["models"] == 1 and res["added"] == ["good"]
        (eng.layout.catalog_dir / "bad.toml").write_text(model_toml("evil", [("../../etc/passwd", b"x")]))
        try:
            await c.call("catalog.reload")
        except RpcError as exc:
            assert exc.code == -32602
            assert "catalog.d/bad.toml" in exc.message and "unsafe" in exc.message
        else:
            raise AssertionError("bad catalog accepted")
        lst = await c.call("models.list")
        assert [m["model_id"] for m in lst["data"]] == ["good"]


async def test_system_info_without_gpu(engine):
    eng, sock = engine
    async with AsyncClient(sock) as c:
        info = await c.call("system.info")
    assert info["cpu"]["logical_cores"] >= 1
    assert info["memory"]["total_mb"] > 0 and info["disk"]["total_gb"] > 0
    assert isinstance(info["gpus"], list)
    if not info["gpus"]:
        assert isinstance(info["gpu_error"], str) and info["gpu_error"]



async def test_system_info_counts_disk_io_and_network_bytes_for_rates(engine, tmp_path: Path):
    """Cumulative counters from psutil and the engine's monotonic time: two answers give the rates in between."""
    eng, sock = engine
    async with AsyncClient(sock) as c:
        first = await c.call("system.info")
        blob = tmp_path / "blob.bin"
        blob.write_bytes(os.urandom(4 * 1024 * 1024))
        os.sync()
        second = await c.call("system.info")
    assert second["sampled_monotonic_s"] > first["sampled_monotonic_s"]
    for key in ("read_bytes", "write_bytes"):
        assert second["disk_io"][key] >= first["disk_io"][key] >= 0
    for key in ("bytes_sent", "bytes_recv"):
        assert second["network"][key] >= first["network"][key] >= 0
    assert second["disk_io"]["write_bytes"] >= first["disk_io"]["write_bytes"]


async def test_token_required(home: Path):
    home.mkdir(parents=True)
    (home / "config.toml").write_text('[rpc]\ntoken = "s3cret"\n')
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        for call in (lambda: c.call("models.list"), lambda: c.call("session.hello", token="wrong")):
            try:
                await call()
            except RpcError as exc:
                assert exc.code == -32003 and exc.name == "UNAUTHORIZED"
            else:
                raise AssertionError("no token accepted")
        await c.call("session.hello", token="s3cret")
        assert (await c.call("models.list"))["data"] == []


async def test_events_subscribe_config_changed(engine):
    eng, sock = engine
    async with AsyncClient(sock) as c:
        sub = await c.subscribe(types=["config_changed"])
        await c.call("config.update", patch={"downloads.bandwidth_limit_mbps": 10})
        async for ev in c.events():
            assert ev["method"] == "config_changed"
            assert ev["params"]["changed"] == {"downloads.bandwidth_limit_mbps": 10.0}
            break
        await c.call("events.unsubscribe", subscription_id=sub)
        try:
            await c.call("events.unsubscribe", subscription_id=sub)
        except RpcError as exc:
            assert exc.code == -32009
        try:
            await c.call("events.subscribe", types=["bogus"])
        except RpcError as exc:
            assert exc.code == -32602 and exc.details["field"] == "types"


async def test_leases_follow_connections(home: Path):
    files = [("w.bin", synthetic_bytes("w", 100))]
    home.mkdir(parents=True)
    (home / "catalog.toml").write_text(model_toml("m", files) + model_toml("gone", files))
    install_files(home, "m", files)
    async with running_engine(home) as (eng, sock):
        async with AsyncClient(sock) as c:
            lease = await c.call("models.acquire", model_id="m")
            assert lease["path"].endswith("models/m/1.0.0") and lease["files"][0]["path"] == "w.bin"
            assert (await c.call("models.status", model_id="m"))["is_loaded"] is True
            try:
                await c.call("models.acquire", model_id="gone")
            except RpcError as exc:
                assert exc.code == -32006
            await c.call("models.release", lease_id=lease["lease_id"])
            assert (await c.call("models.status", model_id="m"))["is_loaded"] is False
            try:
                await c.call("models.release", lease_id=lease["lease_id"])
            except RpcError as exc:
                assert exc.code == -32009
            await c.call("models.acquire", model_id="m")
        from tests.helpers import wait_until
        await wait_until(lambda: not eng.leases.is_leased("m"))
