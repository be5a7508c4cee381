"""The commands for people, each run as a real process against a real engine fed by the test mirror."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from mavail.rpc.client import Client
from mavail.testing.mirror import MIB, Mirror, Synthetic
from tests.helpers import ROOT, short_tmpdir, start_engine_process

MAVAIL = [sys.executable, "-m", "mavail.rpc.cli"]


class Setup:
    """A mirror serving the catalog's models and an engine process on a home of its own."""

    def __init__(self, d: Path, mirror: Mirror, env: dict[str, str]) -> None:
        self.home, self.sock, self.mirror, self.env = d / "home", d / "e.sock", mirror, env
        self.proc: subprocess.Popen[bytes] | None = None

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 30, stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*MAVAIL, *args, "--socket", str(self.sock)], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env={**os.environ, **self.env, **(env or {})}, stdin=stdin)

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen([*MAVAIL, *args, "--socket", str(self.sock)], cwd=ROOT, text=True, env={**os.environ, **self.env}, **kw)

    def client(self) -> Client:
        c = Client(self.sock)
        if "MAVAIL_RPC_TOKEN" in self.env:
            c.call("session.hello", token=self.env["MAVAIL_RPC_TOKEN"])
        return c

    def wait(self, predicate: Any, timeout: float = 15) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = predicate()
            if got:
                return got
            time.sleep(0.05)
        raise AssertionError("condition not met in time")


@pytest.fixture
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    """Models: `slow` (6 MiB at 3 MiB/s), `big` (16 MiB at 2 MiB/s), `small` (installed by the test when it needs it), `gone`
    (its file is not served). An indirect parameter adds config.toml text."""
    config = getattr(request, "param", "")
    with short_tmpdir() as d, Mirror() as mirror:
        env = {"MAVAIL_RPC_TOKEN": "s3cret"} if "token" in config else {}
        s = Setup(d, mirror, env)
        s.home.mkdir()
        cat = mirror.add_model("slow", {"w.bin": Synthetic("slow", 6 * MIB)})
        cat += mirror.add_model("big", {"w.bin": Synthetic("big", 16 * MIB)})
        cat += mirror.add_model("small", {"a.bin": Synthetic("small", 2 * MIB), "b.json": b'{"x": 1}'})
        cat += mirror.add_model("gone", {"w.bin": b"never served"})
        mirror.remove("gone/w.bin")
        mirror.faults("slow/w.bin").throttle_bps = 3 * MIB
        mirror.faults("big/w.bin").throttle_bps = 2 * MIB
        (s.home / "catalog.toml").write_text(cat)
        (s.home / "config.toml").write_text("[downloads]\nmax_retries = 0\nretry_base_s = 0.05\n" + config)
        s.proc = start_engine_process(s.home, s.sock) if not env else _start_with_token(s)
        try:
            yield s
        finally:
            s.proc.terminate()
            try:
                s.proc.wait(20)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait(10)


def _start_with_token(s: Setup) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*MAVAIL, "engine", "--home", str(s.home), "--socket", str(s.sock)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert b"ready on" in proc.stderr.readline()  # type: ignore[union-attr]
    return proc


def _pull_small(s: Setup) -> None:
    r = s.run("pull", "small")
    assert r.returncode == 0, r.stdout + r.stderr


def _read_pty(master: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed its side
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


def test_pull_draws_progress_that_moves_to_100_percent_on_a_terminal(setup: Setup):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 140, 0, 0))
    proc = subprocess.Popen([*MAVAIL, "pull", "slow", "--socket", str(setup.sock)], cwd=ROOT, stdin=slave, stdout=slave, stderr=slave,
                            env={**os.environ, "TERM": "xterm-256color"})
    os.close(slave)
    try:
        rendered = _read_pty(master, proc)
        assert proc.wait(30) == 0, rendered[-2000:]
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", rendered).decode("utf-8", "replace")
    percents = [int(p) for p in re.findall(r"(\d+)%", text)]
    assert len(set(percents)) >= 3 and percents == sorted(percents), percents  # it moved, only forward
    assert percents[-1] == 100 and "6.0/6.0 MiB" in text and "available" in text, text[-500:]
    assert re.search(r"\d+\.\d MiB/s", text) and "eta" in text  # the rate and ETA the engine measures
    assert "\u2501" in text  # rich drew a bar
    assert setup.run("show", "slow", "--json").stdout and json.loads(setup.run("show", "slow", "--json").stdout)["is_available"]


def test_pull_json_prints_only_json_lines_and_a_failed_model_exits_1_with_the_reason(setup: Setup):
    r = setup.run("pull", "slow", "gone", "--json")
    assert r.returncode == 1, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]  # every line is JSON
    assert lines and all(isinstance(x, dict) for x in lines)
    progress = [x for x in lines if x.get("type") == "model_download_progress" and x["model_id"] == "slow"]
    assert progress and progress[-1]["downloaded_bytes"] == 6 * MIB
    results = {x["model_id"]: x for x in lines if x.get("type") == "pull_result"}
    assert results["slow"]["status"] == "available" and results["gone"]["status"] == "failed"
    assert "SOURCE_UNAVAILABLE" in results["gone"]["error"], results["gone"]
    r = setup.run("pull", "gone")
    assert r.returncode == 1 and "gone failed: " in r.stderr and "SOURCE_UNAVAILABLE" in r.stderr, r.stderr
    # without a terminal the progress bars stay off: a line per change, no escape codes
    r = setup.run("pull", "slow")
    assert r.returncode == 0 and r.stdout.strip() == "slow: available" and "\x1b" not in r.stdout, r.stdout


def _until_downloading(proc: subprocess.Popen[str]) -> None:
    for line in proc.stdout:  # type: ignore[union-attr]
        if "downloading" in line:
            return
    raise AssertionError("pull ended before the download ran")


def test_ctrl_c_during_pull_leaves_the_download_running(setup: Setup):
    proc = setup.popen("pull", "big", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _until_downloading(proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "detached" in err, err
    with setup.client() as c:
        first = c.call("downloads.progress", model_id="big")
        assert first["status"] in ("downloading", "queued"), first
        setup.wait(lambda: c.call("downloads.progress", model_id="big")["downloaded_bytes"] > first["downloaded_bytes"])
    # --cancel-on-interrupt: the same Ctrl-C cancels it
    proc = setup.popen("pull", "big", "--cancel-on-interrupt", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _until_downloading(proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "cancelled the download of big" in err, err
    with setup.client() as c:
        assert c.call("downloads.progress", model_id="big")["status"] == "cancelled"


def test_pull_no_wait_returns_at_once_and_ps_shows_the_download(setup: Setup):
    t0 = time.monotonic()
    r = setup.run("pull", "big", "--no-wait")
    assert r.returncode == 0 and "big: " in r.stdout and "mavail pull big" in r.stdout, r.stdout + r.stderr
    assert time.monotonic() - t0 < 5
    r = setup.run("ps")
    assert r.returncode == 0 and re.search(r"download\s+big\s+(downloading|queued)", r.stdout), r.stdout
    ps = json.loads(setup.run("ps", "--json").stdout)
    assert [d["model_id"] for d in ps["downloads"]["active_downloads"]] == ["big"]
    r = setup.run("pull", "big", "--no-wait", "--json")  # joins the running one
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["joined"] is True, r.stdout


def test_rm_refuses_a_model_in_use_with_the_reason_then_removes_it(setup: Setup):
    _pull_small(setup)
    with setup.client() as c:
        c.call("models.acquire", model_id="small")
        r = setup.run("ps")
        assert re.search(r"lease\s+small\s+in use\s+-\s+1 lease", r.stdout), r.stdout
        r = setup.run("rm", "small", "--yes")
        assert r.returncode == 1 and "in use" in r.stderr and "CONFLICT" in r.stderr, r.stderr
        assert (setup.home / "models" / "small" / "1.0.0" / "a.bin").exists()
    r = setup.run("rm", "small")  # no terminal to ask on, no --yes: nothing happens
    assert r.returncode == 2 and "--yes" in r.stderr
    r = setup.run("rm", "small", "--yes")
    assert r.returncode == 0 and r.stdout.startswith("removed small 1.0.0, 2.0 MiB freed"), r.stdout + r.stderr
    assert not (setup.home / "models" / "small" / "1.0.0").exists()
    r = setup.run("rm", "nope", "--yes")
    assert r.returncode == 1 and "MODEL_NOT_FOUND" in r.stderr


def test_verify_repair_show_cleanup_and_logs(setup: Setup):
    _pull_small(setup)
    r = setup.run("verify", "--full")
    assert r.returncode == 0 and r.stdout.startswith("small: healthy, integrity 1.0, 2.0 MiB hashed"), r.stdout + r.stderr
    with open(setup.home / "models" / "small" / "1.0.0" / "a.bin", "r+b") as f:
        f.seek(MIB + 5)
        byte = f.read(1)
        f.seek(MIB + 5)
        f.write(bytes([byte[0] ^ 0xFF]))
    r = setup.run("verify", "small", "--full", "--json")
    assert r.returncode == 1
    result = json.loads(r.stdout)["result"]
    assert result["corruption_detected"] is True
    r = setup.run("repair", "small")
    assert r.returncode == 0 and r.stdout.startswith("small: healthy (integrity 1.0)"), r.stdout + r.stderr
    assert setup.run("verify", "small", "--full").returncode == 0
    r = setup.run("show", "small")
    assert r.returncode == 0 and re.search(r"availability_status\s+available", r.stdout) and re.search(r"a\.bin\s+2\.0 MiB\s+yes\s+yes", r.stdout)
    r = setup.run("cleanup", "--min-unused-days", "0")
    assert r.returncode == 0 and re.search(r"model\s+small\s+2\.0 MiB", r.stdout) and "mavail cleanup --yes" in r.stdout, r.stdout
    assert (setup.home / "models" / "small").exists()  # only printed
    r = setup.run("cleanup", "--min-unused-days", "0", "--yes")
    assert r.returncode == 0 and "removed small" in r.stdout, r.stdout
    assert not (setup.home / "models" / "small" / "1.0.0").exists()
    r = setup.run("verify", "small")
    assert r.returncode == 1 and "is missing" in r.stdout, r.stdout  # nothing installed to vouch for
    r = subprocess.run([*MAVAIL, "logs", "--home", str(setup.home), "-n", "500"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 0 and "listening on" in r.stdout and "small" in r.stdout
    stamps = [line[:23] for line in r.stdout.splitlines() if line[:4].isdigit()]
    assert stamps == sorted(stamps)  # the three files merged in time order


def test_logs_follow_prints_new_lines(setup: Setup):
    proc = subprocess.Popen([*MAVAIL, "logs", "-f", "-n", "0", "--home", str(setup.home)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)  # let it reach the end of the files before the new line is written
        assert setup.run("call", "catalog.reload").returncode == 0
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "catalog reloaded" in line or "catalog" in line, line
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
    assert proc.returncode == 0


@pytest.mark.parametrize("setup", ['[rpc]\ntoken = "s3cret"\n'], indirect=True)
def test_every_command_works_with_the_token_and_says_what_is_missing_without_it(setup: Setup):
    commands = [["ls"], ["status"], ["ps"], ["show", "slow"], ["pull", "slow", "--no-wait"], ["pull", "small"], ["verify", "small"],
                ["repair", "small"], ["cleanup"], ["config", "get", "downloads.max_concurrent"], ["config", "set", "downloads.max_concurrent", "4"],
                ["rm", "small", "--yes"], ["call", "models.list"]]
    for cmd in commands:
        r = setup.run(*cmd, env={"MAVAIL_RPC_TOKEN": ""})
        assert r.returncode == 1 and "UNAUTHORIZED" in r.stderr and "MAVAIL_RPC_TOKEN" in r.stderr, (cmd, r.stderr)
        r = setup.run(*cmd)
        assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    r = setup.run("ls", "--token", "s3cret", env={"MAVAIL_RPC_TOKEN": ""})
    assert r.returncode == 0
    r = setup.run("ls", "--token", "wrong")
    assert r.returncode == 1 and "UNAUTHORIZED" in r.stderr


def test_config_get_explains_and_set_keeps_the_files_comments(setup: Setup):
    (setup.home / "config.toml").write_text("# my lab's settings\n[downloads]\n# the link is shared\nmax_concurrent = 2  # two at once\n"
                                           "max_retries = 0\nretry_base_s = 0.05\n")
    r = setup.run("config", "get", "downloads.max_concurrent")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["downloads.max_concurrent = 3", "    Downloads running at once.", "    int; >= 1, <= 64; applies at once"]
    r = setup.run("config", "set", "downloads.max_concurrent", "5")
    assert r.returncode == 0 and r.stdout.strip() == "downloads.max_concurrent = 5 (was 3; applies now)", r.stdout + r.stderr
    text = (setup.home / "config.toml").read_text()
    assert text.startswith("# my lab's settings\n[downloads]\n# the link is shared\nmax_concurrent = 5  # two at once\n"), text
    r = setup.run("config", "get", "downloads.max_concurrent")
    assert r.stdout.splitlines()[0] == "downloads.max_concurrent = 5  (default 3)"
    r = setup.run("config", "set", "downloads.max_concurrent", "0")
    assert r.returncode == 1 and "at least 1" in r.stderr, r.stderr
    r = setup.run("config", "set", "downloads.max_concurrent", "many")
    assert r.returncode == 2 and "not a int" in r.stderr
    r = setup.run("config", "set", "downloads.max_concurrent_downloads", "4")
    assert r.returncode == 1 and "did you mean downloads.max_concurrent" in r.stderr, r.stderr
    r = setup.run("config", "get", "downloads.max_concurent")
    assert r.returncode == 2 and "did you mean downloads.max_concurrent?" in r.stderr
    r = setup.run("config", "get", "rpc", "--json")
    assert set(json.loads(r.stdout)) >= {"rpc.token", "rpc.max_message_bytes"} and json.loads(r.stdout)["rpc.token"]["live"] is False


def test_unreachable_engine_exits_2_for_every_command():
    with short_tmpdir() as d:
        for cmd in (["pull", "m"], ["ls"], ["ps"], ["show", "m"], ["rm", "m", "--yes"], ["verify"], ["repair", "m"], ["cleanup"],
                    ["config", "get"]):
            r = subprocess.run([*MAVAIL, *cmd, "--socket", str(d / "none.sock")], capture_output=True, text=True, timeout=30, cwd=ROOT)
            assert r.returncode == 2 and "cannot reach" in r.stderr and "mavail engine" in r.stderr, (cmd, r.stderr)


def test_completion_scripts_for_bash_zsh_and_fish():
    for shell, marker in (("bash", "complete -o"), ("zsh", "#compdef mavail"), ("fish", "complete -c mavail")):
        r = subprocess.run([*MAVAIL, "completion", shell], capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert r.returncode == 0 and marker in r.stdout, (shell, r.stdout[:300])
        assert "models.status" in r.stdout and "downloads.start" in r.stdout and "pull" in r.stdout, shell
    script = subprocess.run([*MAVAIL, "completion", "bash"], capture_output=True, text=True, timeout=30, cwd=ROOT).stdout
    # bash itself completes with the script: subcommands, and call's method names
    probe = ("source /dev/stdin\n"
             "COMP_WORDS=(mavail pu); COMP_CWORD=1; COMP_LINE='mavail pu'; COMP_POINT=9; _shtab_mavail; echo \"${COMPREPLY[*]}\"\n"
             "COMP_WORDS=(mavail call models.st); COMP_CWORD=2; COMP_LINE='mavail call models.st'; COMP_POINT=21; _shtab_mavail; "
             "echo \"${COMPREPLY[*]}\"\n")
    r = subprocess.run(["bash", "-c", probe], input=script, capture_output=True, text=True, timeout=30)
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["pull"] and lines[1].split() == ["models.status"], r.stdout + r.stderr


@pytest.mark.skipif(not (shutil.which("zsh") and shutil.which("fish")), reason="zsh and fish are installed by .ci/run")
def test_zsh_reads_its_script_and_fish_completes_with_its_own():
    with short_tmpdir() as d:
        for shell in ("zsh", "fish"):
            (d / shell).write_text(subprocess.run([*MAVAIL, "completion", shell], capture_output=True, text=True, timeout=30, cwd=ROOT).stdout)
        r = subprocess.run(["zsh", "-n", str(d / "zsh")], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        r = subprocess.run(["fish", "-c", f"source {d / 'fish'}; complete -C 'mavail call models.st'; complete -C 'mavail pu'"],
                           capture_output=True, text=True, timeout=30)
        assert [line.split("\t")[0] for line in r.stdout.splitlines()] == ["models.status", "pull"], r.stdout + r.stderr


def test_ps_shows_a_check_in_progress(setup: Setup):
    _pull_small(setup)
    r = setup.run("call", "health.check", '{"model_id": "small", "check_type": "full", "wait": false, "max_read_mbps": 1}')
    assert r.returncode == 0, r.stderr
    check_id = json.loads(r.stdout)["check_id"]
    r = setup.run("ps")
    assert re.search(r"check\s+small\s+checking", r.stdout), r.stdout
    assert json.loads(setup.run("ps", "--json").stdout)["activity"] == [{"model_id": "small", "activity": ["checking"], "active_leases": 0}]
    # the check's progress follows the bytes it has read (what verify's bar shows)
    with setup.client() as c:
        first = c.call("health.check_status", check_id=check_id)["bytes_read"]
        setup.wait(lambda: c.call("health.check_status", check_id=check_id)["bytes_read"] > first)
        assert c.call("health.check_status", check_id=check_id)["bytes_read"] <= 2 * MIB + 8


def test_verify_draws_a_bar_on_a_terminal(setup: Setup):
    _pull_small(setup)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 140, 0, 0))
    proc = subprocess.Popen([*MAVAIL, "verify", "--full", "--socket", str(setup.sock)], cwd=ROOT, stdin=slave, stdout=slave, stderr=slave,
                            env={**os.environ, "TERM": "xterm-256color"})
    os.close(slave)
    try:
        rendered = _read_pty(master, proc)
        assert proc.wait(30) == 0, rendered[-2000:]
    finally:
        os.close(master)
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", rendered).decode("utf-8", "replace")
    assert "small: healthy, integrity 1.0" in text and "2.0/2.0 MiB" in text and "\u2501" in text, text[-800:]


def _answer_on_a_terminal(setup: Setup, answer: bytes, *args: str) -> tuple[int, str]:
    master, slave = pty.openpty()
    proc = subprocess.Popen([*MAVAIL, *args, "--socket", str(setup.sock)], cwd=ROOT, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    try:
        while b"[y/N]" not in out:
            ready, _, _ = select.select([master], [], [], 10)
            assert ready, out
            out += os.read(master, 4096)
        os.write(master, answer)
        out += _read_pty(master, proc)
        return proc.wait(20), out.decode()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def test_rm_asks_on_a_terminal(setup: Setup):
    _pull_small(setup)
    rc, out = _answer_on_a_terminal(setup, b"n\n", "rm", "small")
    assert rc == 1 and "remove small (every version), 2.0 MiB?" in out and "not removed" in out, out
    assert (setup.home / "models" / "small" / "1.0.0").exists()
    rc, out = _answer_on_a_terminal(setup, b"y\n", "rm", "small")
    assert rc == 0 and "removed small 1.0.0" in out, out
    assert not (setup.home / "models" / "small" / "1.0.0").exists()


def test_pull_files_shows_each_file_moving_and_installed(setup: Setup):
    r = setup.run("pull", "small", "--files")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "small/a.bin: installed (2.0 MiB of 2.0 MiB)" in r.stdout, r.stdout
    assert "small/b.json: installed (8 B of 8 B)" in r.stdout, r.stdout
    r = setup.run("pull", "slow", "--files")
    assert r.returncode == 0 and "slow/w.bin: downloading" in r.stdout and "slow/w.bin: installed (6.0 MiB of 6.0 MiB)" in r.stdout, r.stdout
    with setup.client() as c:
        files = c.call("downloads.progress", model_id="slow", files=True)["files"]
    assert files == [{"path": "w.bin", "size_bytes": 6 * MIB, "downloaded_bytes": 6 * MIB, "status": "installed", "connections": 0}]
