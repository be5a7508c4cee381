"""Runs an engine on a home and a socket: config, logging, the home lock, the server."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import anyio

from mavail.core import safefs
from mavail.core.catalog import CATALOG_TEMPLATE
from mavail.core.config import Config, commented_defaults
from mavail.core.engine import Engine
from mavail.core.logs import setup_logging, teardown_logging
from mavail.core.paths import HomeLayout
from mavail.rpc.notify import sd_notify
from mavail.rpc.server import CannotServe, EngineAlreadyRunning, Server, check_socket_path

log = logging.getLogger("mavail.engine")


@contextmanager
def home_lock(home: Path) -> Iterator[None]:
    """Hold an exclusive lock on the home so two engines never share one (EngineAlreadyRunning)."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = safefs.open_file(home, home / "engine.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except safefs.LinkRefused as exc:
        raise CannotServe(exc.message) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EngineAlreadyRunning(f"another engine is already using the home {home}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)


def write_first_files(layout: HomeLayout) -> None:
    """In a new home, a config.toml showing every setting at its default and a catalog.toml showing an entry, both as comments."""
    for path, text in ((layout.config_file, commented_defaults(Config(None, environ={}).schema)), (layout.catalog_file, CATALOG_TEMPLATE)):
        try:
            safefs.lstat(layout.home, path)
        except FileNotFoundError:
            safefs.atomic_write(layout.home, path, text.encode("utf-8"))


async def run_engine(home: Path, socket_path: Path, handle_signals: bool = True, ready: anyio.Event | None = None,
                     announce: bool = False, stderr_log_level: int | None = None) -> None:
    """Run the engine until it is asked to stop; raises CannotServe or ConfigError at start.

    With `announce`, a line on stderr says when it is ready, where, and how many models it knows; with
    `stderr_log_level`, the log goes to stderr too from that level up."""
    # a socket that is not ours to take is refused before anything touches the home
    check_socket_path(socket_path)
    layout = HomeLayout(home)
    layout.ensure()
    write_first_files(layout)
    reason = layout.unusable_reason()
    if reason is not None:
        raise CannotServe(reason)
    config = Config.load(layout.config_file)
    try:
        handlers = setup_logging(layout.logs_dir, stderr_level=stderr_log_level)
    except safefs.LinkRefused as exc:
        raise CannotServe(exc.message) from None
    try:
        with home_lock(home):
            async with Engine(layout, config) as engine:
                server = Server(engine, socket_path)
                await server.bind()  # refusals surface here as one exception, not inside a task group
                async with anyio.create_task_group() as tg:
                    tg.start_soon(server.serve, handle_signals)
                    await server.ready.wait()
                    status = (f"engine {engine.version} ready on {socket_path} (home {home}, {len(engine.catalog)} models"
                              f"{'; catalog refused: ' + engine.catalog.error if engine.catalog.error else ''})")
                    if announce:
                        # one line for whoever started it (a terminal, journald): where it answers and what it holds
                        print(f"mavail: {status}", file=sys.stderr, flush=True)
                    sd_notify(f"READY=1\nSTATUS={status}")
                    if ready is not None:
                        ready.set()
                    await engine.shutdown_requested.wait()
                    sd_notify("STOPPING=1")
            log.info("engine stopped")
    finally:
        teardown_logging(handlers)
