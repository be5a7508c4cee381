"""Shared test helpers: catalogs of synthetic files, an in-process engine on a short socket path."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator

from mavail.core.config import Config
from mavail.core.engine import Engine
from mavail.core.paths import HomeLayout
from mavail.core.presence import Presence, Snapshot
from mavail.rpc.client import Client
from mavail.rpc.server import Server

ROOT = Path(__file__).resolve().parent.parent


def synthetic_bytes(seed: str, size: int) -> bytes:
    """Deterministic pseudo-random bytes of `size`, the same for the same seed."""
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


def model_toml(model_id: str, files: list[tuple[str, bytes]], base_url: str = "http://127.0.0.1:9/", version: str = "1.0.0", **extra: Any) -> str:
    """A `[[models]]` block for `files` (path, content)."""
    lines = ["[[models]]", f'id = "{model_id}"', f'version = "{version}"', f'display_name = "{extra.pop("display_name", model_id)}"',
             f'model_type = "{extra.pop("model_type", "text_to_video")}"',
             f'capabilities = {extra.pop("capabilities", ["text_to_video"])!r}'.replace("'", '"'),
             f'quality = "{extra.pop("quality", "medium")}"', f'speed = "{extra.pop("speed", "medium")}"']
    if "family" in extra:
        lines.append(f'family = "{extra.pop("family")}"')
    vram = extra.pop("vram_gb", {"832x480": 8.0})
    lines.append("[models.vram_gb]")
    lines += [f'"{k}" = {v}' for k, v in vram.items()]
    for path, data in files:
        lines += ["[[models.files]]", f'path = "{path}"', f'url = "{base_url}{model_id}/{path}"', f"size = {len(data)}",
                  f'sha256 = "{hashlib.sha256(data).hexdigest()}"']
    assert not extra, extra
    return "\n".join(lines) + "\n"


def install_files(home: Path, model_id: str, files: list[tuple[str, bytes]], version: str = "1.0.0") -> Path:
    """Write files into `models/<id>/<version>/` as if copied in by hand."""
    d = home / "models" / model_id / version
    for path, data in files:
        p = d / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return d


@contextlib.contextmanager
def short_tmpdir() -> Any:
    """A temp dir with a short path (Unix socket paths are limited to ~108 bytes)."""
    d = tempfile.mkdtemp(prefix="mv", dir="/tmp")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def held_full_scans(scanned: threading.Event, release: threading.Event) -> type[Presence]:
    """A real presence class whose full scans, once they have read the disk, set `scanned` and wait for `release`.

    Give it to `Parts(presence=lambda e: e.build_presence(cls))`; while `release` is set, scans go straight through.
    """

    class HeldFullScans(Presence):
        def _scan(self, model_ids: list[str] | None) -> Snapshot:
            snap = super()._scan(model_ids)  # the disk as it is now
            if model_ids is None and not release.is_set():
                scanned.set()
                release.wait(10)
            return snap

    return HeldFullScans


@contextlib.contextmanager
def mounted_tmpfs(size_mb: int) -> Any:
    """A real tmpfs of `size_mb` MiB in a short temp dir, unmounted afterwards; the test is skipped where mounting is refused."""
    import pytest

    with short_tmpdir() as d:
        mnt = d / "fs"
        mnt.mkdir()
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mnt)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"mount -t tmpfs is not permitted here: {r.stderr.strip()}")
        try:
            yield mnt
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@contextlib.asynccontextmanager
async def running_engine(home: Path, socket_path: Path | None = None, config_env: dict[str, str] | None = None,
                         **engine_args: Any) -> AsyncIterator[tuple[Engine, Path]]:
    """An engine and its server on `home`, in this event loop; yields (engine, socket path).

    `engine_args` go to `Engine` (a clock, an NVML stand-in, `parts=Parts(...)` with fakes of services)."""
    layout = HomeLayout(home)
    layout.ensure()
    config = Config.load(layout.config_file, environ=config_env or {})
    sock = socket_path or home / "e.sock"
    async with Engine(layout, config, **engine_args) as engine:
        server = Server(engine, sock)
        task = asyncio.create_task(server.serve(handle_signals=False))
        ready = asyncio.create_task(server.ready.wait())
        done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            ready.cancel()
            task.result()
        try:
            yield engine, sock
        finally:
            engine.shutdown_requested.set()
            await asyncio.wait_for(task, 10)


def start_engine_process(home: Path, sock: Path, env: dict[str, str] | None = None, new_session: bool = False,
                         timeout: float = 20.0) -> subprocess.Popen[bytes]:
    """`mavail engine` on `home` and `sock` in a subprocess, returned once it answers `session.hello`.

    `env` adds variables (an inherited MAVAIL_CRASH_AT is dropped: crash points are set per call);
    `new_session` puts it in its own process group (for `os.killpg`). Fails if the engine exits or
    does not answer within `timeout` seconds (and kills it then); stderr is kept for the message.
    """
    environ = {k: v for k, v in os.environ.items() if k != "MAVAIL_CRASH_AT"}
    environ.update({"PYTHONPATH": str(ROOT), **(env or {})})
    proc = subprocess.Popen([sys.executable, "-m", "mavail.rpc.cli", "engine", "--home", str(home), "--socket", str(sock)], cwd=ROOT,
                            env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=new_session)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"engine exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with Client(sock, timeout=5) as c:
                c.call("session.hello")
            return proc
        except Exception:
            time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    raise AssertionError("engine did not start")


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.01) -> None:
    """Poll `predicate()` (sync or async) until true; fail after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        r = predicate()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
