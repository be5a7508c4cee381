"""Fixtures: a short home directory per test, and a running engine on it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from tests.helpers import running_engine, short_tmpdir

# the tests start their own servers on 127.0.0.1 and their own proxies: a proxy the machine's environment names
# (for reaching a package index, say) must not carry their requests, in this process or the engines it starts
for _name in [n for n in os.environ if n.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")]:
    del os.environ[_name]


@pytest.fixture
def home() -> Any:
    """A fresh, short home directory."""
    with short_tmpdir() as d:
        yield d / "home"


@pytest.fixture
async def engine(home: Path) -> AsyncIterator[Any]:
    """(engine, socket path) of an engine running in the test's event loop."""
    async with running_engine(home) as pair:
        yield pair


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real tinyproxy on 127.0.0.1 for the test: (its URL, its log of requests); skipped where it is not installed."""
    exe = shutil.which("tinyproxy")
    if exe is None:
        pytest.skip("tinyproxy is not installed (apt-get install tinyproxy; .ci/run installs it)")
    port = free_port()
    log = tmp_path / "tinyproxy.log"
    conf = tmp_path / "tinyproxy.conf"
    conf.write_text(f"Port {port}\nListen 127.0.0.1\nTimeout 30\nAllow 127.0.0.1\nLogFile \"{log}\"\nLogLevel Connect\n"
                    f"MaxClients 64\nPidFile \"{tmp_path / 'tinyproxy.pid'}\"\n")
    proc = subprocess.Popen([exe, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        deadline = time.monotonic() + 10
        while not listening():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"tinyproxy did not start: {log.read_text() if log.exists() else ''}")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.wait(timeout=10)
