"""The request queue: generation requests waiting for a model, persisted in SQLite, released when it is ready.

A request is queued for one model with a priority and a maximum wait. The
queue is ordered by priority (critical, high, normal, low) then arrival; that
order is the `position` shown by `fallback.queue_list` and the order in which
requests are released. Queuing for a model that is not ready asks the download
scheduler for it (the `ensure_download` callable, with the request's priority).

When the model becomes available (an internal subscription to
`model_availability_change`) every request waiting for it is released with a
`queued_request_ready` event, sent to the connection that queued it and to
event subscribers. A request still waiting after `max_wait_time_minutes` ends
with `queued_request_expired`. Both outcomes, and cancellations, are written
to the `fallback_queue` table, so an engine restart keeps the waiting requests
(their connections are gone: events then reach subscribers only), expires
those whose time ran out while it was down, releases those whose model
arrived, and asks the scheduler again for the models still missing.

Wait estimates come from the `eta` callable (the download scheduler's estimate): the
scheduler's remaining bytes of the model, the bytes ahead of it, its
concurrency, smoothed rate and bandwidth limit. None means unknown; there is
no constant per queue position.

Every change of the number of requests waiting for a model is reported to the
status sink with the model's id (`queued_requests` is a status field).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import Counter
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Protocol

from mavail.core.errors import InvalidParams, InvalidState, MavailError, NotFound
from mavail.core.events import Event, Subscription, make_event
from mavail.core.fallback.scoring import READY
from mavail.core.limits import MAX_WAIT_MINUTES
from mavail.core.ports import CatalogView, PresenceView, Settings, Spawner, StatusSink, StatusView
from mavail.core.priority import normalise_priority, priority_rank
from mavail.core.session import Session
from mavail.core.state import Database
from mavail.core.timeutil import Clock, iso, wait_event

log = logging.getLogger("mavail.fallback")

__all__ = ["EventChannel", "QueuedRequest", "RequestQueue"]


class EventChannel(Protocol):
    """The part of the event bus the queue uses: an internal subscription, and publishing ready events."""

    def subscribe(self, types: Iterable[str] | None = None, model_ids: Iterable[str] | None = None,
                  max_pending: int = 10_000) -> Subscription:
        """A subscription to these event types."""

    def unsubscribe(self, sub_id: str) -> bool:
        """End a subscription."""

    def publish(self, event: Event) -> None:
        """Deliver an event to subscribers."""


@dataclass
class QueuedRequest:
    """One waiting request."""

    queue_id: str
    seq: int
    model_id: str
    request: dict[str, Any]
    priority: str
    created_at: float
    expires_at: float
    session_id: str | None

    @property
    def key(self) -> tuple[int, int]:
        """Queue order: priority, then arrival."""
        return priority_rank(self.priority), self.seq


class RequestQueue:
    """The persistent queue of requests waiting for models."""

    def __init__(self, *, settings: Settings, clock: Clock, db: Database, catalog: CatalogView, presence: PresenceView,
                 status: StatusView, status_sink: StatusSink, events: EventChannel, tasks: Spawner,
                 ensure_download: Callable[[str, str], Awaitable[dict[str, Any] | None]],
                 eta: Callable[[str], float | None]) -> None:
        """`ensure_download(model_id, priority)` starts or joins a download; `eta(model_id)` is seconds until it is ready."""
        self._settings = settings
        self._clock = clock
        self._db = db
        self._catalog = catalog
        self._presence = presence
        self._status = status
        self._sink = status_sink
        self._events = events
        self._tasks = tasks
        self._ensure_download = ensure_download
        self._eta = eta
        self._waiting: dict[str, QueuedRequest] = {}
        self._per_model: Counter[str] = Counter()
        self._sessions: dict[str, Session] = {}
        self._seq = 0
        self._wake: asyncio.Event | None = None
        self._sub: Any = None
        self._lock: asyncio.Lock | None = None

    # --- queries ----------------------------------------------------------------
    def has_waiting(self, model_id: str) -> bool:
        """Whether any request waits for `model_id` (cleanup must not remove it)."""
        return self._per_model.get(model_id, 0) > 0

    def model_fields(self, model_id: str) -> dict[str, Any]:
        """Status provider: how many queued requests wait for the model."""
        return {"queued_requests": self._per_model.get(model_id, 0)}

    def ordered(self) -> list[QueuedRequest]:
        """Waiting requests in queue order."""
        return sorted(self._waiting.values(), key=lambda e: e.key)

    # --- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        """Load waiting requests, subscribe to availability changes, reconcile with what happened while down."""
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

        def load(conn: Any) -> tuple[list[Any], int]:
            rows = conn.execute("SELECT queue_id, seq, model_id, request, priority, created_at, expires_at, session_id "
                                "FROM fallback_queue WHERE status = 'waiting'").fetchall()
            top = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM fallback_queue").fetchone()[0]
            return rows, int(top)

        rows, self._seq = await self._db.read(load)
        for r in rows:
            try:
                request = json.loads(r[3])
            except ValueError:
                request = {}
            self._add(QueuedRequest(r[0], r[1], r[2], request, r[4], r[5], r[6], r[7]))
        if rows:
            log.info("queue: %d waiting requests loaded", len(rows))
        self._sub = self._events.subscribe(["model_availability_change"])
        self._tasks.spawn(self._watch(), name="queue-availability")
        self._tasks.spawn(self._expiry_loop(), name="queue-expiry")
        self._tasks.on_stop(self._stop)
        await self._expire_due()
        for model_id in sorted(set(self._per_model)):
            if self._catalog.get(model_id) is None:
                continue
            if self._status.availability_status(model_id) in READY:
                await self.release(model_id)
            else:
                await self._ensure(model_id, self._best_priority(model_id), raise_errors=False)

    async def _stop(self) -> None:
        if self._sub is not None:
            self._events.unsubscribe(self._sub.id)
            self._sub = None

    def _add(self, e: QueuedRequest) -> None:
        self._waiting[e.queue_id] = e
        self._per_model[e.model_id] += 1
        self._sink([e.model_id])

    def _remove(self, queue_id: str) -> QueuedRequest | None:
        e = self._waiting.pop(queue_id, None)
        if e is not None:
            self._per_model[e.model_id] -= 1
            if self._per_model[e.model_id] <= 0:
                del self._per_model[e.model_id]
            self._sink([e.model_id])
        return e

    def _best_priority(self, model_id: str) -> str:
        waiting = [e.priority for e in self._waiting.values() if e.model_id == model_id]
        return min(waiting, key=priority_rank) if waiting else normalise_priority(None)

    async def _ensure(self, model_id: str, priority: str, raise_errors: bool) -> dict[str, Any] | None:
        try:
            return await self._ensure_download(model_id, priority)
        except MavailError as exc:
            if raise_errors:
                raise
            log.warning("queue: cannot start the download of %s: %s", model_id, exc.message)
            return None

    # --- fallback.queue ---------------------------------------------------------
    async def enqueue(self, model_id: str, request: dict[str, Any], priority: str | None = None,
                      max_wait_time_minutes: float | None = None, session: Session | None = None) -> dict[str, Any]:
        """Queue `request` for `model_id`; start its download when needed; release at once if it is ready."""
        self._catalog.spec(model_id)
        prio = normalise_priority(priority)
        if not isinstance(request, dict):
            raise InvalidParams("request must be an object", field="request")
        wait_min = float(max_wait_time_minutes if max_wait_time_minutes is not None else self._settings.get("fallback.queue_max_wait_minutes"))
        if not wait_min > 0:
            raise InvalidParams("max_wait_time_minutes must be positive", field="max_wait_time_minutes")
        if wait_min > MAX_WAIT_MINUTES:
            raise InvalidParams(f"max_wait_time_minutes must be at most {MAX_WAIT_MINUTES:g}", field="max_wait_time_minutes",
                                value=wait_min)
        text = json.dumps(request, separators=(",", ":"))
        ready = self._status.availability_status(model_id) in READY
        if not ready:
            await self._ensure(model_id, prio, raise_errors=True)  # an error (no space, no source) refuses the request
        now = self._clock.time()
        try:
            iso(now + wait_min * 60.0)  # everything that can fail happens before the row exists
        except (OverflowError, ValueError, OSError):
            raise InvalidParams("max_wait_time_minutes gives an expiry that is not a date", field="max_wait_time_minutes",
                                value=wait_min) from None
        self._seq += 1
        e = QueuedRequest("queue_" + secrets.token_hex(8), self._seq, model_id, request, prio, now, now + wait_min * 60.0,
                          getattr(session, "id", None))
        await self._db.write(lambda c: c.execute(
            "INSERT INTO fallback_queue (queue_id, seq, model_id, request, priority, created_at, expires_at, session_id, status) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'waiting')",
            (e.queue_id, e.seq, model_id, text, prio, now, e.expires_at, e.session_id)))
        self._add(e)
        if session is not None:
            self._sessions[e.queue_id] = session
            session.on_close(lambda qid=e.queue_id: self._sessions.pop(qid, None))
        assert self._wake is not None
        self._wake.set()
        log.info("queue: %s for %s (priority %s, max wait %.1f min)", e.queue_id, model_id, prio, wait_min)
        entry = self._describe(e, self._positions())
        if self._status.availability_status(model_id) in READY:  # ready now, or became ready while we queued
            await self.release(model_id)
            entry.update(status="ready", position=0, estimated_wait_seconds=0.0, estimated_wait_time_minutes=0.0,
                         estimated_start_time=iso(self._clock.time()))
        return {"success": True, **entry}

    # --- fallback.queue_list / queue_cancel ------------------------------------
    def _positions(self) -> dict[str, tuple[int, int]]:
        pos: dict[str, tuple[int, int]] = {}
        per: Counter[str] = Counter()
        for i, e in enumerate(self.ordered(), 1):
            per[e.model_id] += 1
            pos[e.queue_id] = (i, per[e.model_id])
        return pos

    def _describe(self, e: QueuedRequest, positions: dict[str, tuple[int, int]]) -> dict[str, Any]:
        status = self._status.availability_status(e.model_id) if self._catalog.get(e.model_id) else "unknown"
        eta = 0.0 if status in READY else self._eta(e.model_id)
        now = self._clock.time()
        pos, model_pos = positions.get(e.queue_id, (0, 0))
        return {
            "queue_id": e.queue_id,
            "model_id": e.model_id,
            "status": "waiting",
            "priority": e.priority,
            "position": pos,
            "model_position": model_pos,
            "availability_status": status,
            "estimated_wait_seconds": None if eta is None else round(eta, 1),
            "estimated_wait_time_minutes": None if eta is None else round(eta / 60.0, 2),
            "estimated_start_time": None if eta is None else iso(now + eta),
            "queued_at": iso(e.created_at),
            "expires_at": iso(e.expires_at),
            "expires_in_seconds": round(max(0.0, e.expires_at - now), 1),
            "will_expire_first": eta is not None and now + eta > e.expires_at,
            "request": e.request,
        }

    def list(self, model_id: str | None = None) -> dict[str, Any]:
        """Every waiting request in queue order with current positions and estimates."""
        positions = self._positions()
        items = [self._describe(e, positions) for e in self.ordered() if model_id is None or e.model_id == model_id]
        return {"queue": items, "total": len(items)}

    async def cancel(self, queue_id: str) -> dict[str, Any]:
        """Cancel a waiting request (the model's download is left alone)."""
        e = self._waiting.get(queue_id)
        if e is None:
            row = await self._db.fetchone("SELECT status FROM fallback_queue WHERE queue_id = ?", (queue_id,))
            if row is None:
                raise NotFound(f"no queued request {queue_id!r}", field="queue_id")
            raise InvalidState(f"queued request {queue_id!r} is already {row[0]}", queue_id=queue_id, status=row[0])
        if not await self._finish([e], "cancelled"):
            raise InvalidState(f"queued request {queue_id!r} was released or expired meanwhile", queue_id=queue_id)
        return {"success": True, "queue_id": queue_id, "model_id": e.model_id, "status": "cancelled"}

    # --- release and expiry -----------------------------------------------------
    async def _finish(self, entries: list[QueuedRequest], status: str) -> list[QueuedRequest]:
        """Mark entries `status` in the database and drop them from the waiting set; return those still waiting."""
        assert self._lock is not None
        async with self._lock:
            live = [e for e in entries if e.queue_id in self._waiting]
            if not live:
                return []
            now = self._clock.time()
            await self._db.write(lambda c: c.executemany(
                "UPDATE fallback_queue SET status = ?, finished_at = ? WHERE queue_id = ? AND status = 'waiting'",
                [(status, now, e.queue_id) for e in live]))
            for e in live:
                self._remove(e.queue_id)
            return live

    def _deliver(self, e: QueuedRequest, event: Event) -> None:
        self._events.publish(event)
        session = self._sessions.pop(e.queue_id, None)
        if session is None:
            return
        subs = getattr(session, "subscriptions", {}) or {}
        if any(s.wants(event) for s in subs.values()):
            return  # the connection already gets it through its subscription
        session.notify(event)

    async def release(self, model_id: str) -> int:
        """Release every request waiting for `model_id` (now ready), in queue order; return how many."""
        waiting = [e for e in self.ordered() if e.model_id == model_id]
        if not waiting:
            return 0
        released = await self._finish(waiting, "ready")
        if not released:
            return 0
        try:
            st = self._status.model_status(model_id)
            path, version = st["path"], st["version"]
        except MavailError:
            path = version = None
        now = self._clock.time()
        for e in released:
            self._deliver(e, make_event("queued_request_ready", queue_id=e.queue_id, model_id=model_id, version=version, path=path,
                                        priority=e.priority, request=e.request, waited_seconds=round(now - e.created_at, 3)))
        log.info("queue: %d request(s) for %s released", len(released), model_id)
        return len(released)

    async def _expire_due(self) -> None:
        now = self._clock.time()
        due = [e for e in self.ordered() if e.expires_at <= now]
        if not due:
            return
        expired = await self._finish(due, "expired")
        for e in expired:
            status = self._status.availability_status(e.model_id) if self._catalog.get(e.model_id) else "unknown"
            eta = None if status in READY else self._eta(e.model_id)
            self._deliver(e, make_event("queued_request_expired", queue_id=e.queue_id, model_id=e.model_id, priority=e.priority,
                                        request=e.request, waited_seconds=round(now - e.created_at, 3),
                                        availability_status=status, estimated_wait_seconds=None if eta is None else round(eta, 1)))
            log.info("queue: %s for %s expired", e.queue_id, e.model_id)

    async def _expiry_loop(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await self._expire_due()
            except Exception:
                log.exception("queue: expiry failed")
            now = self._clock.time()
            nxt = min((e.expires_at for e in self._waiting.values()), default=None)
            timeout = 60.0 if nxt is None else min(60.0, max(0.005, nxt - now))
            self._wake.clear()
            await wait_event(self._wake, timeout)

    def on_download_status(self, model_id: str, version: Any, status: str) -> None:
        """Download listener, a safety net beside model_availability_change: a completed download rescans and releases."""
        if status == "completed" and self.has_waiting(model_id):
            self._tasks.spawn(self._recheck(model_id), name=f"queue-recheck-{model_id}")

    async def _recheck(self, model_id: str) -> None:
        await self._presence.refresh([model_id])
        if self._status.availability_status(model_id) in READY:
            await self.release(model_id)

    async def _watch(self) -> None:
        sub = self._sub
        while sub is not None and not sub.closed:
            batch = await sub.next_batch()
            if not batch:
                return
            for ev in batch:
                mid = ev.params.get("model_id")
                if ev.params.get("new_status") in READY and isinstance(mid, str) and self.has_waiting(mid):
                    try:
                        await self.release(mid)
                    except Exception:
                        log.exception("queue: releasing requests for %s failed", mid)
