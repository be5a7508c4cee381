"""`mavail demo`: the catalog, headless mode stopped by Ctrl-C, and the TUI mode quit with q, leaving no process."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from mavail.rpc.client import Client
from mavail.tui.demo import CATALOG, Demo
from tests.tui_helpers import until
from mavail.tui.app import create_app

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_headless_demo_serves_the_catalog_and_ctrl_c_stops_everything():
    proc = subprocess.Popen([sys.executable, "-m", "mavail.rpc.cli", "demo", "--headless"], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = proc.stdout.readline() if proc.stdout else ""
        m = re.search(r"engine pid (\d+) on (\S+)", banner)
        assert m, banner + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        engine_pid, sock = int(m.group(1)), Path(m.group(2))
        with Client(sock, timeout=10) as c:
            models = c.call("models.status")["models"]
            methods = set(c.call("session.hello")["methods"])
            if "downloads.active" in methods:  # the demo starts downloads at once, one of them from the flaky mirror
                assert {"wan2.2-ti2v-5b", "wan2.2-i2v-a14b"} <= {d["model_id"] for d in c.call("downloads.active")["active_downloads"]}
            if "analytics.usage" in methods:
                assert c.call("analytics.usage", period="month")["summary"]["total_generations"] > 0
            if "fallback.queue_list" in methods:
                assert c.call("fallback.queue_list")["total"] == 1
        assert {"wan2.2-t2v-a14b", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b"} <= set(models)
        ti2v = models["wan2.2-ti2v-5b"]
        assert ti2v["model_type"] == "text_image_to_video" and "fast_generation" in ti2v["capabilities"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert _gone(engine_pid)
        assert not sock.parent.exists()  # the throw-away home is deleted
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_tui_quit_leaves_no_process_behind():
    """The real command in a pseudo-terminal: wait for the TUI to draw the catalog, press q, check every child is gone."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "mavail.rpc.cli", "demo"], cwd=ROOT, env={**_env(), "TERM": "xterm-256color",
                            "COLUMNS": "80", "LINES": "24"}, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while b"wan2.2-ti2v-5b" not in out and time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.5)
            if r:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
            children = psutil.Process(proc.pid).children(recursive=True) or children
        assert b"wan2.2-ti2v-5b" in out, out[-2000:]
        assert children, "the engine should run as a child of the demo"
        os.write(master, b"q")
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    os.read(master, 65536)
                except OSError:
                    pass
        assert proc.wait(5) == 0
        assert all(_gone(c.pid) for c in children)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for c in children:
            if not _gone(c.pid):
                c.kill()
        os.close(master)


async def test_demo_catalog_in_the_tui():
    with Demo(autostart=()) as demo:
        app = create_app(demo.socket, keymap={})
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: all(m.id in app.pane("models").table.keys() for m in CATALOG), timeout=15)
            assert app.pane("models").table.raw("wan2.2-t2v-a14b")["family"] == "wan2.2"
        pid = demo.engine.pid if demo.engine else 0
    assert _gone(pid)
