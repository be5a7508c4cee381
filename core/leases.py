"""Leases: a model in use by a client is never removed, cleaned up or replaced under it."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator, Sequence

from mavail.core.errors import Conflict, InvalidState, NotFound
from mavail.core.session import Session
from mavail.core.status import StatusSink
from mavail.core.timeutil import Clock

log = logging.getLogger("mavail.leases")


def _no_sink(model_ids: Sequence[str] | None) -> None:
    """The sink of a manager that nobody composes statuses from."""


@dataclass
class Lease:
    """One use of one model version by one connection.

    `version` is None while the lease is pending: taken before the acquire has
    looked at the model, it holds every version until `settle` names one.
    """

    lease_id: str
    model_id: str
    version: str | None
    path: str
    session_id: str
    acquired_at: float


class LeaseManager:
    """Tracks leases in memory: they belong to live connections, so an engine restart ends them all.

    Other services ask `is_leased(model_id)` before touching a model and may
    `await wait_released(model_id)` to act as soon as the last user is gone.

    Check-and-act is atomic in both directions, because neither side awaits
    between its check and its mark: an acquire takes a (pending) lease before
    it awaits anything, and a removal takes its intent with `removing` (which
    refuses while a lease holds the model) before it awaits anything. So a
    removal never starts under a lease, and no lease is granted while a
    removal is under way.

    Every change of a model's leases is reported to `status_sink` with the
    model's id, since `is_loaded` and `active_leases` derive from them.
    """

    def __init__(self, clock: Clock, status_sink: StatusSink | None = None,
                 elsewhere: Callable[[str, str | None], list[str]] | None = None,
                 refresh_elsewhere: Callable[[], Awaitable[None]] | None = None) -> None:
        """`elsewhere(model_id, version)` says why other engines on a shared store hold the model (empty: none do),
        `refresh_elsewhere` reads their leases again; without them only this engine's leases count."""
        self._clock = clock
        self._sink: StatusSink = status_sink or _no_sink
        self._elsewhere = elsewhere
        self._refresh_elsewhere = refresh_elsewhere
        self._leases: dict[str, Lease] = {}
        self._removing: Counter[str] = Counter()
        self._replacing: Counter[str] = Counter()
        self._released = asyncio.Condition()

    def acquire(self, session: Session, model_id: str, version: str | None = None, path: str = "") -> Lease:
        """Record a lease for `session`; it ends with `release` or when the session closes.

        Without `version` the lease is pending (see `Lease`); Conflict while the model is being removed.
        """
        if self.being_removed(model_id):
            raise Conflict(f"model {model_id!r} is being removed", model_id=model_id)
        if self._replacing[model_id] > 0:
            raise Conflict(f"a repair is replacing files of model {model_id!r}; try again in a moment", model_id=model_id)
        lease = Lease("lease_" + secrets.token_hex(8), model_id, version, path, session.id, self._clock.time())
        self._leases[lease.lease_id] = lease
        session.on_close(lambda: self._drop(lease.lease_id, "connection closed"))
        log.info("lease %s on %s %s by %s", lease.lease_id, model_id, version, session.id)
        self._sink([model_id])
        return lease

    def settle(self, lease_id: str, version: str, path: str) -> Lease:
        """Name the version and path a pending lease holds (NotFound if it has ended meanwhile)."""
        lease = self._leases.get(lease_id)
        if lease is None:
            raise NotFound(f"no lease {lease_id!r}", field="lease_id")
        lease.version, lease.path = version, path
        self._sink([lease.model_id])
        return lease

    def discard(self, lease_id: str) -> None:
        """End a lease if it is still live (an acquire that turned out not to be possible)."""
        self._drop(lease_id, "not granted")

    def being_removed(self, model_id: str) -> bool:
        """Whether a removal of `model_id` (or of one of its versions) is under way."""
        return self._removing[model_id] > 0

    @contextmanager
    def removing(self, model_id: str, version: str | None = None) -> Iterator[None]:
        """`with leases.removing(mid):` marks the removal of `model_id` (at `version`) for the block.

        Conflict, and no mark, while a lease holds it; while marked, `acquire` refuses the model.
        Enter it with no await between the caller's other checks and the block's first await.
        """
        if self.is_leased(model_id, version):
            raise Conflict(f"model {model_id!r} is in use", model_id=model_id, active_leases=len(self.leases_for(model_id)))
        other = self.leased_elsewhere(model_id, version)
        if other:
            raise Conflict(f"model {model_id!r} is {'; '.join(other)}", model_id=model_id, leased_elsewhere=other)
        self._removing[model_id] += 1
        try:
            yield
        finally:
            self._removing[model_id] -= 1
            if self._removing[model_id] <= 0:
                del self._removing[model_id]

    @contextmanager
    def replacing(self, model_id: str) -> Iterator[None]:
        """`with leases.replacing(mid):` marks a repair replacing files of `model_id` for the block.

        Conflict, and no mark, while a lease holds it; while marked, `acquire` refuses the model.
        Like `removing`, enter it with no await between the caller's checks and the block's first await.
        """
        if self.is_leased(model_id):
            raise Conflict(f"model {model_id!r} is in use", model_id=model_id, active_leases=len(self.leases_for(model_id)))
        other = self.leased_elsewhere(model_id)
        if other:
            raise Conflict(f"model {model_id!r} is {'; '.join(other)}", model_id=model_id, leased_elsewhere=other)
        self._replacing[model_id] += 1
        try:
            yield
        finally:
            self._replacing[model_id] -= 1
            if self._replacing[model_id] <= 0:
                del self._replacing[model_id]

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
            self._sink([lease.model_id])
            asyncio.get_running_loop().create_task(self._notify())
        return lease

    async def _notify(self) -> None:
        async with self._released:
            self._released.notify_all()

    def is_leased(self, model_id: str, version: str | None = None) -> bool:
        """Whether any lease holds `model_id` (at `version`, when given; a pending lease holds every version)."""
        return any(l.model_id == model_id and (version is None or l.version is None or l.version == version)
                   for l in self._leases.values())

    def leased_elsewhere(self, model_id: str, version: str | None = None) -> list[str]:
        """Why other engines sharing the model store hold `model_id` (at `version`), one line each; empty when none do."""
        return self._elsewhere(model_id, version) if self._elsewhere is not None else []

    async def refresh_elsewhere(self) -> None:
        """Read the other engines' leases again (before a cleanup or a removal decides)."""
        if self._refresh_elsewhere is not None:
            await self._refresh_elsewhere()

    def count(self) -> int:
        """How many leases are live, on every model together (pending ones included)."""
        return len(self._leases)

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


async def acquire_available(leases: LeaseManager, session: Session, model_id: str, refresh: Callable[[list[str]], Awaitable[None]],
                            status: Callable[[str], dict[str, Any]]) -> tuple[Lease, dict[str, Any]]:
    """`models.acquire`: lease the model for `session` once a fresh scan shows it available; (lease, its status).

    The lease is taken, pending, before the scan is awaited, so a removal that
    checks for leases meanwhile sees it and leaves the model alone; one already
    under way makes the acquire fail (Conflict). If the scan then finds the
    model unavailable (InvalidState), the lease is dropped again.
    """
    status(model_id)  # ModelNotFound before anything is taken
    lease = leases.acquire(session, model_id)
    try:
        await refresh([model_id])
        st = status(model_id)
        if not st["is_available"]:
            raise InvalidState(f"model {model_id!r} is {st['availability_status']}, not available", model_id=model_id,
                               availability_status=st["availability_status"])
        leases.settle(lease.lease_id, st["version"], st["path"])
    except BaseException:
        leases.discard(lease.lease_id)
        raise
    return lease, st
