"""The metrics listener: prometheus_client's HTTP server on `metrics.listen`, off unless that setting names an address.

The server runs in prometheus_client's own threads (one per scrape). A scrape
asks the event loop for a snapshot through `call_soon_threadsafe` and waits
for it in its own thread, at most `snapshot_timeout_s`; the loop runs the
snapshot as one short callback and is never made to wait (see
`core.metrics.figures`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.process_collector import ProcessCollector

from mavail.core.errors import ConfigError
from mavail.core.metrics.collector import EngineCollector
from mavail.core.metrics.figures import MetricsPorts, Snapshot, take_snapshot
from mavail.core.metrics.listen import ListenAddress, check_listen
from mavail.core.ports import Spawner

__all__ = ["MetricsService"]

log = logging.getLogger("mavail.engine")


class MetricsService:
    """Serves `/metrics` while the engine runs, when `metrics.listen` is set; `url` says where once started."""

    def __init__(self, ports: MetricsPorts, tasks: Spawner, snapshot_timeout_s: float = 2.0) -> None:
        self._ports = ports
        self._tasks = tasks
        self.snapshot_timeout_s = snapshot_timeout_s  # how long a scrape waits for the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EngineCollector(ports, self.snapshot))
        ProcessCollector(namespace="mavail", registry=self.registry)  # the engine's own CPU, memory, open files
        self.address: ListenAddress | None = None
        self.port: int | None = None

    @property
    def url(self) -> str | None:
        """The `/metrics` URL being served, or None when metrics are off."""
        return self.address.url(self.port) if self.address is not None and self.port is not None else None

    async def start(self) -> None:
        """Bind the listener when `metrics.listen` is set; ConfigError when the address is refused or cannot be bound."""
        self._loop = asyncio.get_running_loop()
        s = self._ports.settings
        addr = check_listen(str(s.get("metrics.listen")), bool(s.get("metrics.allow_remote")))
        if addr is None:
            return
        try:
            server, _thread = start_http_server(addr.port, addr.host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"metrics.listen {addr.host}:{addr.port}: cannot listen there: {exc.strerror or exc}",
                              field="metrics.listen", value=str(s.get("metrics.listen"))) from None
        self._server = server
        self.address = addr
        self.port = int(server.server_address[1])
        self._tasks.on_stop(self.stop)
        log.info("metrics served at %s", self.url)

    async def stop(self) -> None:
        """Stop the listener (its thread notices within half a second, so the wait runs off the loop)."""
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.shutdown)
            server.server_close()

    def snapshot(self) -> Snapshot | None:
        """From a listener thread: the loop's snapshot, or None when the loop did not answer within the timeout."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        fut: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return  # the scrape gave up waiting
            try:
                fut.set_result(take_snapshot(self._ports))
            except BaseException as exc:  # a figure that cannot be read must not stop the loop
                fut.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop closed meanwhile
            return None
        try:
            return fut.result(self.snapshot_timeout_s)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            log.warning("metrics: the event loop did not answer a scrape within %.1f s", self.snapshot_timeout_s)
            return None
        except Exception:
            log.exception("metrics: the snapshot failed")
            return None
