"""The /metrics listener: figures that follow real downloads, checks and repairs, read with prometheus_client's parser;
bounded labels; a stalled loop; addresses refused."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from mavail.core.config import Config
from mavail.core.errors import ConfigError
from mavail.core.metrics.listen import check_listen, parse_listen
from mavail.rpc.client import AsyncClient, RpcError
from mavail.testing.mirror import Mirror, Synthetic
from tests.dlhelpers import wait_status, write_home
from tests.helpers import ROOT, running_engine, short_tmpdir, start_engine_process, wait_until
from tests.metrics_helpers import names, parse, scrape, value

MIB = 1024 * 1024
ON = {"metrics": {"listen": "127.0.0.1:0"}, "downloads": {"piece_size_mb": 1}, "health": {"scheduler_tick_s": 3600}}


def _flip_byte(path: Path, offset: int) -> None:
    """Damage one byte, keeping the mtime (only a full check can see it)."""
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


async def test_metrics_are_off_by_default(home: Path):
    async with running_engine(home) as (eng, _sock):
        assert eng.metrics.url is None and eng.config.get("metrics.listen") == ""


async def test_a_download_shows_in_bytes_received_and_in_the_statuses(home: Path):
    data = Synthetic("metrics-dl", 3 * MIB + 123)
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": data}, "other": {"g.bin": b"x" * 1000}}, ON)
        async with running_engine(home) as (eng, _sock):
            before = await scrape(eng.metrics.url)
            assert value(before, "mavail_up") == 1
            assert value(before, "mavail_download_bytes_total") == 0
            assert value(before, "mavail_models", status="missing") == 2 and value(before, "mavail_catalog_models") == 2
            assert value(before, "mavail_build_info", version=eng.version) == 1
            await eng.downloads.start("m")
            await wait_status(eng, "m", "completed")
            await wait_until(lambda: eng.status.availability_status("m") == "available")
            after = await scrape(eng.metrics.url)
    # every byte the mirror sent was counted once, as it arrived
    assert value(after, "mavail_download_bytes_total") == len(data) == m.bytes_served["m/f.bin"]
    assert value(after, "mavail_model_download_bytes_total", model_id="m") == len(data)
    assert value(after, "mavail_model_download_bytes_total", model_id="other") == 0
    assert value(after, "mavail_models", status="available") == 1 and value(after, "mavail_models", status="missing") == 1
    assert value(after, "mavail_model_status", model_id="m", status="available") == 1
    assert value(after, "mavail_model_status", model_id="m", status="missing") == 0
    assert value(after, "mavail_model_size_bytes", model_id="m") == len(data)
    assert value(after, "mavail_storage_used_bytes") == len(data)
    assert value(after, "mavail_downloads", state="downloading") == 0
    assert sum(v for (n, _), v in after.items() if n == "mavail_download_retries_total") == 0
    assert value(after, "mavail_disk_free_bytes") > 0 and value(after, "mavail_process_cpu_seconds_total") > 0


async def test_retries_and_failures_are_counted_by_reason(home: Path):
    data = Synthetic("metrics-retry", 400_000)
    with Mirror() as m:
        write_home(home, m, {"r": {"f.bin": data}, "gone": {"g.bin": b"y" * 5000}}, ON)
        f = m.faults("r/f.bin")
        f.drop_after, f.drop_count = 100_000, 3
        m.remove("gone/g.bin")
        async with running_engine(home) as (eng, _sock):
            await eng.downloads.start("r", max_retries=1)
            await wait_status(eng, "r", "completed")
            await eng.downloads.start("gone", max_retries=1)
            await wait_status(eng, "gone", "failed")
            s = await scrape(eng.metrics.url)
            retries = {dict(labels)["reason"]: v for (n, labels), v in s.items() if n == "mavail_download_retries_total"}
            made = eng.downloads.progress("r")["total_retries"] + eng.downloads.progress("gone")["total_retries"]
            assert sum(retries.values()) == made and retries["short_read"] + retries["connection"] >= 3, retries
            assert value(s, "mavail_download_failures_total", reason="SOURCE_UNAVAILABLE") == 1
            assert value(s, "mavail_downloads", state="failed") == 1
            assert value(s, "mavail_models", status="failed") == 1
            assert value(s, "mavail_download_bytes_total") == m.bytes_served["r/f.bin"]


async def test_a_corrupted_model_its_check_and_its_repair_show(home: Path):
    data = Synthetic("metrics-rot", 3 * MIB)
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": data}}, ON)
        async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
            await eng.downloads.start("m")
            await wait_status(eng, "m", "completed")
            await wait_until(lambda: eng.status.availability_status("m") == "available")
            before = await scrape(eng.metrics.url)
            _flip_byte(home / "models/m/1.0.0/f.bin", MIB + 10)
            full = (await c.call("health.check", model_id="m", check_type="full"))["result"]
            assert full["overall_health"] == "corrupted"
            s = await scrape(eng.metrics.url)
            assert value(s, "mavail_corrupted_models") == 1 and value(s, "mavail_model_corrupted", model_id="m") == 1
            assert value(s, "mavail_models", status="corrupted") == 1
            checks = (value(s, "mavail_health_checks_total", type="full", outcome="corrupted") or 0) - (
                value(before, "mavail_health_checks_total", type="full", outcome="corrupted") or 0)
            assert checks == 1
            served = m.bytes_served["m/f.bin"]
            res = await c.call("health.repair", model_id="m")
            assert res["success"] and res["bytes_redownloaded"] > 0
            s = await scrape(eng.metrics.url)
    assert value(s, "mavail_repair_bytes_total") == res["bytes_redownloaded"] == m.bytes_served["m/f.bin"] - served
    assert value(s, "mavail_repairs_total", outcome="completed") == 1
    assert value(s, "mavail_corrupted_models") == 0 and value(s, "mavail_models", status="available") == 1


async def test_live_figures_while_a_download_runs_with_a_queued_request_and_a_lease(home: Path):
    slow = Synthetic("metrics-slow", 8 * MIB)
    with Mirror() as m:
        write_home(home, m, {"slow": {"f.bin": slow}, "ready": {"g.bin": b"z" * 3000}}, ON)
        m.faults("slow/f.bin").throttle_bps = 1 * MIB
        async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
            await eng.downloads.start("ready")
            await wait_until(lambda: eng.status.availability_status("ready") == "available", timeout=20)
            lease = await c.call("models.acquire", model_id="ready")
            await eng.queue.enqueue("slow", {"prompt": "a cat"})
            await wait_until(lambda: eng.downloads.progress("slow")["speed_mbps"] > 0, timeout=20)
            s = await scrape(eng.metrics.url)
            assert value(s, "mavail_downloads", state="downloading") == 1
            assert 0 < value(s, "mavail_download_rate_bytes_per_second") < 4 * MIB
            assert 0 < value(s, "mavail_download_remaining_bytes") <= len(slow)
            assert value(s, "mavail_queue_requests") == 1 and 0 < value(s, "mavail_queue_oldest_wait_seconds") < 60
            assert value(s, "mavail_leases") == 1 and value(s, "mavail_model_leases", model_id="ready") == 1
            assert value(s, "mavail_models", status="downloading") == 1
            await c.call("models.release", lease_id=lease["lease_id"])
            assert value(await scrape(eng.metrics.url), "mavail_leases") == 0
            await eng.downloads.cancel("slow")


async def test_model_labels_only_while_the_catalog_is_small(home: Path):
    with Mirror() as m:
        write_home(home, m, {"a": {"f": b"1" * 100}, "b": {"f": b"2" * 100}}, {**ON, "metrics": {"listen": "127.0.0.1:0", "per_model_max": 1}})
        async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
            s = await scrape(eng.metrics.url)
            assert value(s, "mavail_per_model_labels") == 0 and value(s, "mavail_models", status="missing") == 2
            assert not any(n.startswith("mavail_model_") for n in names(s))
            assert all("model_id" not in dict(labels) for _, labels in s)
            await c.call("config.update", patch={"metrics": {"per_model_max": 2}})  # applies at the next scrape
            s = await scrape(eng.metrics.url)
            assert value(s, "mavail_per_model_labels") == 1 and value(s, "mavail_model_status", model_id="b", status="missing") == 1


async def test_a_stalled_event_loop_gives_up_at_zero_and_never_waits_on_the_listener(home: Path):
    with Mirror() as m:
        write_home(home, m, {"a": {"f": b"1" * 100}}, ON)
        async with running_engine(home) as (eng, _sock):
            eng.metrics.snapshot_timeout_s = 0.3
            got: list[str] = []
            t = threading.Thread(target=lambda: got.append(httpx.get(eng.metrics.url, timeout=10).text))
            t.start()
            time.sleep(1.0)  # the loop is stuck (on purpose): the scrape must not wait for it
            await asyncio.to_thread(t.join, 10)
            s = parse(got[0])
            assert value(s, "mavail_up") == 0 and "mavail_models" not in names(s)
            assert value(s, "mavail_download_bytes_total") == 0  # what is read off the loop is still served
            assert value(await scrape(eng.metrics.url), "mavail_up") == 1


def test_listen_addresses_parse_and_public_ones_are_refused_without_allow_remote():
    assert parse_listen("") is None
    assert parse_listen("127.0.0.1:9464").loopback and parse_listen("[::1]:9464").loopback
    assert parse_listen("localhost:1").host == "127.0.0.1"
    for bad in ("9464", "127.0.0.1", "127.0.0.1:99999", "::1:9464", "metrics.example:9464", "127.0.0.1:x"):
        with pytest.raises(ConfigError) as ei:
            parse_listen(bad)
        assert ei.value.details["field"] == "metrics.listen"
    for public in ("0.0.0.0:9464", "[::]:9464", "192.168.1.20:9464"):
        with pytest.raises(ConfigError, match="not a loopback address"):
            check_listen(public, allow_remote=False)
        assert check_listen(public, allow_remote=True) is not None
    with pytest.raises(ConfigError, match="metrics.allow_remote"):
        Config.load(None, environ={"MAVAIL_METRICS_LISTEN": "0.0.0.0:9464"})
    assert Config.load(None, environ={"MAVAIL_METRICS_LISTEN": "0.0.0.0:9464", "MAVAIL_METRICS_ALLOW_REMOTE": "true"})


async def test_config_update_refuses_a_public_address_and_changes_nothing(home: Path):
    home.mkdir(parents=True)
    (home / "config.toml").write_text("# mine\n")
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        with pytest.raises(RpcError) as ei:
            await c.call("config.update", patch={"metrics": {"listen": "0.0.0.0:9464"}})
        assert ei.value.name == "INVALID_PARAMS" and ei.value.details["field"] == "metrics.listen"
        assert "not a loopback address" in ei.value.message
        assert eng.config.get("metrics.listen") == "" and "9464" not in (home / "config.toml").read_text()
        res = await c.call("config.update", patch={"metrics": {"listen": "0.0.0.0:9464", "allow_remote": True}})
        assert res["restart_required"] is True
        with pytest.raises(RpcError):  # turning allow_remote off again would leave a public address
            await c.call("config.update", patch={"metrics.allow_remote": False})


def test_the_engine_refuses_to_start_on_a_public_address_or_a_taken_port():
    with short_tmpdir() as d:
        home = d / "home"
        home.mkdir()
        (home / "config.toml").write_text('[metrics]\nlisten = "0.0.0.0:9464"\n')
        cmd = [sys.executable, "-m", "mavail.rpc.cli", "engine", "--home", str(home), "--socket", str(d / "s")]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)
        assert r.returncode == 1 and "metrics.listen '0.0.0.0:9464' is not a loopback address" in r.stderr, r.stderr
        import socket

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            (home / "config.toml").write_text(f'[metrics]\nlisten = "127.0.0.1:{taken.getsockname()[1]}"\n')
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)
        assert r.returncode == 1 and "cannot listen there" in r.stderr, r.stderr
        assert not (d / "s").exists()


def test_an_engine_process_serves_metrics_on_its_own_loop():
    with short_tmpdir() as d:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = start_engine_process(d / "home", d / "s", env={"MAVAIL_METRICS_LISTEN": f"127.0.0.1:{port}"})
        try:
            samples = parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
            assert value(samples, "mavail_up") == 1 and value(samples, "mavail_catalog_models") == 0
        finally:
            proc.terminate()
            assert proc.wait(20) == 0
