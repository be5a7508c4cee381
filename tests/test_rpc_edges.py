"""The edges of the wire: socket paths that are not ours, the rate limit, exact line limits, numbers out of range."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mavail.rpc.client import AsyncClient, RpcError
from tests.helpers import ROOT, model_toml, running_engine, short_tmpdir, start_engine_process

MAVAIL = [sys.executable, "-m", "mavail.rpc.cli"]


def _engine_cmd(home: Path, sock: Path) -> list[str]:
    return [*MAVAIL, "engine", "--home", str(home), "--socket", str(sock)]


def test_socket_path_naming_a_regular_file_is_refused_and_the_file_kept():
    with short_tmpdir() as d:
        victim = d / "notes.txt"
        victim.write_text("precious\n")
        r = subprocess.run(_engine_cmd(d / "home", victim), capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert r.returncode != 0
        assert "not a socket" in r.stderr and str(victim) in r.stderr
        assert victim.read_text() == "precious\n"


def test_socket_path_naming_a_symlink_is_refused_and_the_link_kept():
    with short_tmpdir() as d:
        target = d / "target.txt"
        target.write_text("kept\n")
        link = d / "s"
        link.symlink_to(target)
        r = subprocess.run(_engine_cmd(d / "home", link), capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert r.returncode != 0 and "not a socket" in r.stderr
        assert link.is_symlink() and target.read_text() == "kept\n"


def test_second_engine_on_a_live_socket_prints_one_line():
    with short_tmpdir() as d:
        sock = d / "s"
        proc = start_engine_process(d / "home", sock)
        try:
            r = subprocess.run(_engine_cmd(d / "home2", sock), capture_output=True, text=True, timeout=30, cwd=ROOT)
            assert r.returncode == 1
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1, r.stderr
            assert lines[0].startswith("mavail: ") and "already" in lines[0]
            assert "Traceback" not in r.stderr and "ExceptionGroup" not in r.stderr
        finally:
            proc.terminate()
            proc.wait(20)


async def test_rate_limit_starts_full_and_never_locks_out_its_own_setting(home: Path):
    home.mkdir(parents=True)
    (home / "config.toml").write_text("[rpc]\nrate_limit_per_second = 2.0\n")
    async with running_engine(home) as (_eng, sock):
        async with AsyncClient(sock) as c:
            # the first calls of a fresh connection are within the burst
            assert (await c.call("models.list"))["data"] == []
            assert (await c.call("models.list"))["data"] == []
            with pytest.raises(RpcError) as exc:
                for _ in range(10):
                    await c.call("models.list")
            assert exc.value.code == -32004 and exc.value.details["retry_after_s"] > 0
            # over the limit, the calls that let a client recover still answer
            for _ in range(5):
                await c.call("session.hello")
                await c.call("config.get")
            await c.call("config.update", patch={"rpc.rate_limit_per_second": 0})
            for _ in range(20):
                await c.call("models.list")
            await c.call("config.update", patch={"rpc.rate_limit_per_second": 1})
            with pytest.raises(RpcError) as exc:
                await c.call("config.update", patch={"rpc.rate_limit_per_second": 1, "downloads.max_concurrent": 2})
            assert exc.value.code == -32004


def test_cli_call_works_with_a_rate_limit_set():
    with short_tmpdir() as d:
        home = d / "home"
        home.mkdir()
        (home / "config.toml").write_text("[rpc]\nrate_limit_per_second = 1.0\n")
        sock = d / "s"
        proc = start_engine_process(home, sock)
        try:
            for method in ("models.list", "config.get"):
                r = subprocess.run([*MAVAIL, "call", method, "--socket", str(sock)], capture_output=True, text=True, timeout=30, cwd=ROOT)
                assert r.returncode == 0, r.stderr
        finally:
            proc.terminate()
            proc.wait(20)


def _exchange(sock: Path, line: bytes) -> list[dict]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(sock))
    try:
        try:
            s.sendall(line)
        except (BrokenPipeError, ConnectionResetError):
            pass
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return [json.loads(x) for x in buf.split(b"\n") if x.strip()]
    finally:
        s.close()


def _line_of(total: int) -> bytes:
    """A session.hello request line of exactly `total` bytes before its newline."""
    head = b'{"jsonrpc":"2.0","method":"session.hello","id":9'
    return head + b" " * (total - len(head) - 1) + b"}"


@pytest.mark.parametrize("extra", [1, 173])
async def test_line_limit_is_exact(home: Path, extra: int):
    home.mkdir(parents=True)
    (home / "config.toml").write_text("[rpc]\nmax_message_bytes = 65536\n")
    async with running_engine(home) as (_eng, sock):
        [ok] = await asyncio.to_thread(_exchange, sock, _line_of(65536) + b"\n")
        assert "result" in ok and ok["id"] == 9
        [too_big] = await asyncio.to_thread(_exchange, sock, _line_of(65536 + extra) + b"\n")
        assert too_big["error"]["data"]["code"] == "MESSAGE_TOO_LARGE"
        assert too_big["error"]["data"]["details"]["max_message_bytes"] == 65536


@pytest.mark.parametrize("size", [2**64, 2**63, 10**30])
async def test_catalog_refuses_sizes_beyond_range(home: Path, size: int):
    async with running_engine(home) as (_eng, sock):
        toml = model_toml("m", [("a.bin", b"x")]).replace("size = 1", f"size = {size}")
        (home / "catalog.toml").write_text(toml)
        async with AsyncClient(sock) as c:
            with pytest.raises(RpcError) as exc:
                await c.call("catalog.reload")
            assert exc.value.name == "INVALID_CATALOG" or exc.value.code in (-32602, -32010), exc.value.to_dict()
            assert "size" in exc.value.message
            assert (await c.call("models.list"))["data"] == []


@pytest.mark.parametrize("vram", ["inf", "nan", "1e308"])
async def test_catalog_refuses_vram_out_of_range(home: Path, vram: str):
    async with running_engine(home) as (_eng, sock):
        (home / "catalog.toml").write_text(model_toml("m", [("a.bin", b"x")], vram_gb={"832x480": vram}))
        async with AsyncClient(sock) as c:
            with pytest.raises(RpcError) as exc:
                await c.call("catalog.reload")
            assert "vram" in exc.value.message


@pytest.mark.parametrize("method, params, field", [
    ("fallback.queue", {"model_id": "m", "request": {}, "max_wait_time_minutes": 1e308}, "max_wait_time_minutes"),
    ("downloads.start", {"model_id": "m", "bandwidth_limit_mbps": 1e308}, "bandwidth_limit_mbps"),
    ("analytics.record", {"model_id": "m", "generation_time_s": 1e300, "success": True}, "generation_time_s"),
    ("models.list", {"page": 2**63}, "page"),
    ("models.request", {"model_id": "m", "requirements": {"max_wait_time_minutes": 1e308}}, "requirements.max_wait_time_minutes"),
    ("models.request", {"model_id": "m", "user_preferences": {"max_wait_time_minutes": -1}}, "user_preferences.max_wait_time_minutes"),
])
async def test_numbers_out_of_range_are_invalid_params(home: Path, method: str, params: dict, field: str):
    home.mkdir(parents=True)
    (home / "catalog.toml").write_text(model_toml("m", [("a.bin", b"x")]))
    async with running_engine(home) as (_eng, sock):
        async with AsyncClient(sock) as c:
            with pytest.raises(RpcError) as exc:
                await c.call(method, params)
            assert exc.value.code == -32602, exc.value.to_dict()
            assert exc.value.details.get("field") == field


async def test_an_answer_that_cannot_be_encoded_still_carries_the_request_id(home: Path):
    async with running_engine(home) as (eng, sock):
        async def huge(*_a: object, **_k: object) -> dict:
            return {"n": 2**70}

        eng.system_info = huge  # type: ignore[method-assign]
        [resp] = await asyncio.to_thread(_exchange, sock, b'{"jsonrpc":"2.0","method":"system.info","id":"abc"}\n')
        assert resp["id"] == "abc"
        assert resp["error"]["code"] == -32603 and resp["error"]["data"]["request_id"]
        async with AsyncClient(sock) as c:
            assert (await c.call("session.hello"))["protocol_version"]


async def test_a_batch_answers_a_bad_param_as_a_single_call_does(home: Path):
    async with running_engine(home) as (_eng, sock):
        single = {"jsonrpc": "2.0", "method": "models.list", "params": {"context": 1}, "id": 1}
        [one] = await asyncio.to_thread(_exchange, sock, json.dumps(single).encode() + b"\n")
        [batch] = await asyncio.to_thread(_exchange, sock, json.dumps([single]).encode() + b"\n")
        assert one["error"]["data"]["details"].get("field") == "context"
        assert batch[0]["error"]["message"] == one["error"]["message"]
        assert batch[0]["error"]["data"]["details"] == one["error"]["data"]["details"]


@pytest.mark.parametrize("bad_id, echoed", [(True, None), (1.5, 1.5), ("x", "x")])
async def test_an_invalid_request_echoes_only_a_valid_id(home: Path, bad_id: object, echoed: object):
    async with running_engine(home) as (_eng, sock):
        req = {"jsonrpc": "1.0", "method": "session.hello", "id": bad_id}
        [resp] = await asyncio.to_thread(_exchange, sock, json.dumps(req).encode() + b"\n")
        assert resp["error"]["code"] == -32600 and resp["id"] == echoed
