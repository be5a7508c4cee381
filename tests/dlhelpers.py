"""Helpers for download tests: a home whose catalog points at a fault-injecting mirror, and waits on downloads."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, AsyncIterator

import tomlkit

from mavail.core.downloads import DownloadManager
from mavail.core.engine import Engine, Parts
from mavail.testing.mirror import Mirror
from tests.helpers import running_engine, wait_until

FAST = {
    "downloads": {"retry_base_s": 0.01, "retry_max_s": 0.05, "stall_timeout_s": 1.0, "connect_timeout_s": 2.0},
    "storage": {"min_free_gb": 0.0},
}


def write_home(home: Path, mirror: Mirror, models: dict[str, dict[str, Any]], config: dict[str, dict[str, Any]] | None = None,
               mirrors: list[Mirror] | None = None) -> None:
    """A catalog of `models` ({id: {path: content}}) served by `mirror`, and a config tuned for fast tests."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "catalog.toml").write_text("".join(mirror.add_model(mid, files, mirrors=mirrors) for mid, files in models.items()))
    cfg = {k: dict(v) for k, v in FAST.items()}
    for section, values in (config or {}).items():
        cfg.setdefault(section, {}).update(values)
    (home / "config.toml").write_text(tomlkit.dumps(cfg))


def make_downloads(engine: Engine, **options: Any) -> DownloadManager:
    """A download manager wired to `engine`'s parts as the engine wires its own, with test `options`
    (`piece_size`, `opener`, `environ`, `client_factory`, `sleep`); for `Parts(downloads=...)`."""
    return DownloadManager(settings=engine.config, clock=engine.clock, db=engine.db, layout=engine.layout, catalog=engine.catalog,
                           presence=engine.presence, status_changed=engine.status.changed, emit=engine.events.emit,
                           tasks=engine.tasks, leases=engine.leases, activity=engine.activity, tally=engine.tally,
                           store=engine.store, **options)


@contextlib.asynccontextmanager
async def dl_engine(home: Path, piece_size: int = 64 * 1024, opener: Any = None, environ: dict[str, str] | None = None,
                    **engine_args: Any) -> AsyncIterator[tuple[Engine, Path]]:
    """A running engine whose downloads use `piece_size` pieces, `opener` for partial files and `environ` for the Hub
    (read at each use: a test may change the dict it passed); `engine_args` go to `Engine` (`status_cache`, say)."""
    options: dict[str, Any] = {"piece_size": piece_size, "environ": environ}
    if opener is not None:
        options["opener"] = opener
    parts = Parts(downloads=lambda e: make_downloads(e, **options))
    async with running_engine(home, parts=parts, **engine_args) as (engine, sock):
        yield engine, sock


async def wait_status(engine: Any, model_id: str, *statuses: str, timeout: float = 20.0) -> dict[str, Any]:
    """Wait until the model's download reaches one of `statuses`; return its progress."""
    def check() -> bool:
        d = engine.downloads.get(model_id)
        return d is not None and d.status in statuses

    try:
        await wait_until(check, timeout=timeout)
    except AssertionError:
        d = engine.downloads.get(model_id)
        raise AssertionError(f"{model_id}: status {d.status if d else None} ({d.error_code if d else ''}: {d.error_message if d else ''}), wanted {statuses}") from None
    return engine.downloads.progress(model_id)


def installed_bytes(home: Path, model_id: str, path: str, version: str = "1.0.0") -> bytes:
    """The bytes of an installed file."""
    return (home / "models" / model_id / version / path).read_bytes()
