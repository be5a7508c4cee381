"""Leases: a model in use by a client is never removed, cleaned up or replaced under it."""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from core.errors import NotFound
from core.session import Session

log = logging.getLogger("mavail.leases")


@dataclass
class Lease:
    """One use of one model version by one connection."""

    lease_id: str
    model_id: str
    version: str
    path: str
    session_id: str
    acquired_at: float


class LeaseManager:
    """Tracks leases in memory: they belong to live connections, so an engine restart ends them all.

    Other services ask `is_leased(model_id)` before touching a model and may
    `await wait_released(model_id)` to act as soon as the last user is gone.
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        self._released = asyncio.Condition()

    def acquire(self, session: Session, model_id: str, version: str, path: str) -> Lease:
        """Record a lease for `session`; it ends with `release` or when the session closes."""
        lease = Lease("lease_" + secrets.token_hex(8), model_id, version, path, session.id, self._clock.time())
        self._leases[lease.lease_id] = lease
        session.on_close(lambda: self._drop(lease.lease_id, "connection closed"))
        log.info("lease %s on %s %s by %s", lease.lease_id, model_id, version, session.id)
        return lease

    def release(self, lease_id: str) -> Lease:
        """End a lease (NotFound if unknown or already released)."""
        lease = self._drop(lease_id, "released")
        if lease is None:
            raise NotFound(f"no lease {lease_id!r}", field="lease_id")
        return lease

    def _drop(self, lease_id: str, why: str) -> Lease | None:
        lease = self._leases.pop(lease_id, None)
        if lease is not None:
            log.info("lease %s on %s ended: %s", lease_id, lease.model_id, why)
            asyncio.get_running_loop().create_task(self._notify())
        return lease

    async def _notify(self) -> None:
        async with self._released:
            self._released.notify_all()

    def is_leased(self, model_id: str, version: str | None = None) -> bool:
        """Whether any lease holds `model_id` (at `version`, when given)."""
        return any(l.model_id == model_id and (version is None or l.version == version) for l in self._leases.values())

    def leases_for(self, model_id: str) -> list[Lease]:
        """The live leases on `model_id`."""
        return [l for l in self._leases.values() if l.model_id == model_id]

    async def wait_released(self, model_id: str, version: str | None = None) -> None:
        """Return once no lease holds `model_id` (at `version`)."""
        async with self._released:
            await self._released.wait_for(lambda: not self.is_leased(model_id, version))

    def model_fields(self, model_id: str) -> dict[str, Any]:
        """Status fields: `is_loaded` and the number of active leases."""
        n = len(self.leases_for(model_id))
        return {"is_loaded": n > 0, "active_leases": n}
