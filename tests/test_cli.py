"""The `mavail` command as a user runs it: engine process, call, status, exit codes, socket hygiene."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import install_files, model_toml, short_tmpdir, synthetic_bytes

MAVAIL = [sys.executable, "-m", "mavail.rpc.cli"]
ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MAVAIL, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def wait_ready(sock: Path, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "engine exited"
        if run("call", "session.hello", "--socket", str(sock)).returncode == 0:
            return
        time.sleep(0.05)
    raise AssertionError("engine did not become ready")


@pytest.fixture
def engine_proc():
    with short_tmpdir() as d:
        home, sock = d / "home", d / "e.sock"
        home.mkdir()
        files = [("w.bin", synthetic_bytes("w", 2048))]
        (home / "catalog.toml").write_text(model_toml("wan-test", files) + model_toml("absent", files))
        install_files(home, "wan-test", files)
        proc = subprocess.Popen([*MAVAIL, "engine", "--home", str(home), "--socket", str(sock)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_ready(sock, proc)
            yield home, sock, proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def test_call_status_and_exit_codes(engine_proc):
    home, sock, proc = engine_proc
    r = run("call", "models.status", '{"model_id": "wan-test"}', "--socket", str(sock))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["availability_status"] == "available"
    r = run("call", "models.status", '{"model_id": "nope"}', "--socket", str(sock))
    assert r.returncode == 1 and json.loads(r.stderr)["data"]["code"] == "MODEL_NOT_FOUND"
    r = run("call", "models.status", "{bad json", "--socket", str(sock))
    assert r.returncode == 2
    r = run("status", "--socket", str(sock))
    assert r.returncode == 0 and "wan-test" in r.stdout and "available" in r.stdout and "missing" in r.stdout
    r = run("status", "--json", "--socket", str(sock))
    assert json.loads(r.stdout)["summary"]["total_models"] == 2
    # the logs name the request id of a failing call
    log = (home / "logs" / "model_management.log").read_text()
    assert "listening on" in log


def test_second_engine_refused_then_sigterm_cleans_up(engine_proc):
    home, sock, proc = engine_proc
    other = subprocess.run([*MAVAIL, "engine", "--home", str(home.parent / "home2"), "--socket", str(sock)],
                           capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert other.returncode != 0 and "already" in other.stderr
    same_home = subprocess.run([*MAVAIL, "engine", "--home", str(home), "--socket", str(sock) + "2"],
                               capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert same_home.returncode != 0 and "already" in same_home.stderr
    assert run("call", "session.hello", "--socket", str(sock)).returncode == 0
    assert oct(sock.stat().st_mode & 0o777) == "0o600"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert not sock.exists()
    r = run("call", "session.hello", "--socket", str(sock))
    assert r.returncode == 2 and "cannot reach" in r.stderr


def test_stale_socket_replaced_and_shutdown_method():
    with short_tmpdir() as d:
        home, sock = d / "home", d / "e.sock"
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(sock))
        stale.close()  # leaves a socket file nobody answers on
        assert sock.exists()
        proc = subprocess.Popen([*MAVAIL, "engine", "--home", str(home), "--socket", str(sock)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_ready(sock, proc)
            assert run("call", "engine.shutdown", "--socket", str(sock)).returncode == 0
            assert proc.wait(20) == 0
            assert not sock.exists()
        finally:
            if proc.poll() is None:
                proc.kill()


def test_bad_config_refuses_to_start():
    with short_tmpdir() as d:
        home = d / "home"
        home.mkdir()
        (home / "config.toml").write_text("[downloads]\nmax_concurrent = 0\n")
        r = subprocess.run([*MAVAIL, "engine", "--home", str(home), "--socket", str(d / "s")], capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert r.returncode == 1 and "downloads.max_concurrent" in r.stderr


def test_version():
    from mavail.core import __version__

    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"mavail {__version__}"


def test_every_command_that_talks_to_the_engine_takes_the_token():
    with short_tmpdir() as d:
        home, sock = d / "home", d / "e.sock"
        home.mkdir()
        (home / "config.toml").write_text('[rpc]\ntoken = "s3cret"\n')
        (home / "catalog.toml").write_text(model_toml("m", [("w.bin", b"x")]))
        proc = subprocess.Popen([*MAVAIL, "engine", "--home", str(home), "--socket", str(sock)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 20
            while not sock.exists():
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            for cmd in (["call", "models.list"], ["status"]):
                r = run(*cmd, "--socket", str(sock))
                assert r.returncode == 1 and "UNAUTHORIZED" in r.stderr and "MAVAIL_RPC_TOKEN" in r.stderr, r.stderr
                r = run(*cmd, "--socket", str(sock), "--token", "s3cret")
                assert r.returncode == 0, r.stderr
                r = subprocess.run([*MAVAIL, *cmd, "--socket", str(sock)], capture_output=True, text=True, timeout=30, cwd=ROOT,
                                   env={**os.environ, "MAVAIL_RPC_TOKEN": "s3cret"})
                assert r.returncode == 0, r.stderr
                r = run(*cmd, "--socket", str(sock), "--token", "wrong")
                assert r.returncode == 1 and "UNAUTHORIZED" in r.stderr
        finally:
            proc.terminate()
            proc.wait(20)


def test_an_unreachable_engine_is_met_with_how_to_start_it():
    with short_tmpdir() as d:
        r = run("status", "--socket", str(d / "none.sock"))
        assert r.returncode == 2
        assert "cannot reach" in r.stderr and "mavail engine" in r.stderr, r.stderr


def test_the_engine_says_when_it_is_ready_and_where():
    with short_tmpdir() as d:
        home, sock = d / "home", d / "e.sock"
        home.mkdir()
        (home / "catalog.toml").write_text(model_toml("m", [("w.bin", b"x")]) + model_toml("n", [("w.bin", b"y")]))
        proc = subprocess.Popen([*MAVAIL, "engine", "--home", str(home), "--socket", str(sock)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stderr.readline()  # type: ignore[union-attr]
            assert line.startswith("mavail: engine ") and f"ready on {sock}" in line and str(home) in line and "2 models" in line, line
            assert run("call", "session.hello", "--socket", str(sock)).returncode == 0  # ready means it answers
        finally:
            proc.terminate()
            proc.wait(20)


def test_the_engine_tells_systemd_when_it_is_ready_and_when_it_stops():
    """A datagram socket stands in for systemd's NOTIFY_SOCKET (what Type=notify units give the service)."""
    with short_tmpdir() as d:
        home, sock, notify = d / "home", d / "e.sock", d / "notify"
        home.mkdir()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(str(notify))
        listener.settimeout(20)
        proc = subprocess.Popen([*MAVAIL, "engine", "--home", str(home), "--socket", str(sock)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "NOTIFY_SOCKET": str(notify)})
        try:
            ready = listener.recv(4096).decode()
            assert "READY=1" in ready.split("\n") and any(x.startswith("STATUS=") for x in ready.split("\n")), ready
            assert run("call", "session.hello", "--socket", str(sock)).returncode == 0
            proc.send_signal(signal.SIGTERM)
            stopping = listener.recv(4096).decode()
            assert "STOPPING=1" in stopping.split("\n"), stopping
            assert proc.wait(20) == 0
        finally:
            listener.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_a_new_home_gets_a_commented_config_and_catalog_that_load_to_the_defaults():
    from mavail.core.catalog import load_catalog
    from mavail.core.config import Config

    with short_tmpdir() as d:
        home, sock = d / "home", d / "e.sock"
        proc = subprocess.Popen([*MAVAIL, "engine", "--home", str(home), "--socket", str(sock)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert "ready on" in proc.stderr.readline()  # type: ignore[union-attr]
        finally:
            proc.terminate()
            proc.wait(20)
        text = (home / "config.toml").read_text()
        loaded, defaults = Config.load(home / "config.toml", environ={}), Config(None, environ={})
        assert loaded.as_nested() == defaults.as_nested()
        for key, setting in defaults.schema.items():
            assert f"# {key.split('.', 1)[1]} = " in text and setting.doc in text, key
        assert len(load_catalog(home / "catalog.toml", home / "catalog.d")) == 0
        assert "[[models]]" in (home / "catalog.toml").read_text() and "docs/catalog.md" in (home / "catalog.toml").read_text()


def test_config_update_keeps_the_users_comments_and_order():
    with short_tmpdir() as d:
        home, sock = d / "home", d / "e.sock"
        home.mkdir()
        (home / "config.toml").write_text("# my settings: do not lose this\n[downloads]\n# fast link at the lab\n"
                                          "max_concurrent = 4  # four at once\n\n[health]\ncheck_interval_hours = 12\n")
        proc = subprocess.Popen([*MAVAIL, "engine", "--home", str(home), "--socket", str(sock)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert "ready on" in proc.stderr.readline()  # type: ignore[union-attr]
            r = run("call", "config.update", '{"patch": {"downloads.max_concurrent": 5, "downloads.bandwidth_limit_mbps": 50}}',
                    "--socket", str(sock))
            assert r.returncode == 0, r.stderr
        finally:
            proc.terminate()
            proc.wait(20)
        text = (home / "config.toml").read_text()
        assert text.startswith("# my settings: do not lose this\n[downloads]\n# fast link at the lab\nmax_concurrent = 5  # four at once\n"), text
        assert "bandwidth_limit_mbps = 50" in text and text.index("[downloads]") < text.index("[health]")
        assert "check_interval_hours = 12" in text


def test_engine_logs_to_stderr_at_the_chosen_level():
    with short_tmpdir() as d:
        home, sock = d / "home", d / "e.sock"
        proc = subprocess.Popen([*MAVAIL, "engine", "--home", str(home), "--socket", str(sock), "--log-level", "info"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            seen = []
            while not any("ready on" in line for line in seen):
                line = proc.stderr.readline()  # type: ignore[union-attr]
                assert line, "".join(seen)
                seen.append(line)
            assert any("INFO" in line and "listening on" in line for line in seen), "".join(seen)
        finally:
            proc.terminate()
            proc.wait(20)
    assert run("engine", "--log-level", "loud").returncode == 2
