"""Engine events and their fan-out to subscribers through bounded, non-blocking buffers."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from mavail.core.timeutil import iso_now

log = logging.getLogger("mavail.events")

EVENT_TYPES = (
    "model_download_progress",
    "model_availability_change",
    "model_health_alert",
    "fallback_suggestion",
    "queued_request_ready",
    "queued_request_expired",
    "download_failed",
    "storage_warning",
    "config_changed",
)

# What each events.notification_level lets through to subscribers (None: every type).
LEVELS: dict[str, frozenset[str] | None] = {
    "all": None,
    "changes": frozenset(EVENT_TYPES) - {"model_download_progress"},
    "alerts": frozenset({"download_failed", "model_health_alert", "storage_warning", "queued_request_expired"}),
    "none": frozenset(),
}


def admitted(level: str, event_type: str) -> bool:
    """Whether subscribers get events of `event_type` at notification level `level`."""
    allowed = LEVELS.get(level)
    return allowed is None or event_type in allowed


# Event types where a newer event for the same model makes an older, undelivered one worthless.
SUPERSEDABLE = frozenset({"model_download_progress"})


@dataclass(frozen=True)
class Event:
    """One notification: `type` is the JSON-RPC method, `params` its object."""

    type: str
    params: dict[str, Any]

    @property
    def model_id(self) -> str | None:
        """The model the event is about, if any."""
        mid = self.params.get("model_id", self.params.get("requested_model"))
        return mid if isinstance(mid, str) else None


def make_event(event_type: str, **params: Any) -> Event:
    """Build an event with `type` and `timestamp` filled in, as every event message has them."""
    params.setdefault("timestamp", iso_now())
    params["type"] = event_type
    return Event(event_type, params)


class Subscription:
    """A subscriber's buffer: bounded, never blocks the publisher.

    Pending progress events for one model collapse into the newest; any other
    event is kept. If `max_pending` events that cannot be dropped pile up, the
    subscription is marked `overflowed` and stops taking events: the owner
    closes it rather than lose a status change silently.
    """

    _ids = itertools.count(1)

    def __init__(self, types: Iterable[str] | None, model_ids: Iterable[str] | None, max_pending: int = 10_000) -> None:
        self.id = f"sub_{next(self._ids)}"
        self.types = frozenset(types) if types else None
        self.model_ids = frozenset(model_ids) if model_ids else None
        self.max_pending = max_pending
        self._pending: OrderedDict[Any, Event] = OrderedDict()
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self.overflowed = False
        self.closed = False
        self.dropped_superseded = 0

    def wants(self, event: Event) -> bool:
        """Whether the subscription's filters admit `event`."""
        if self.types is not None and event.type not in self.types:
            return False
        if self.model_ids is not None and event.model_id not in self.model_ids:
            return False
        return True

    def offer(self, event: Event) -> None:
        """Queue `event` without blocking."""
        if self.closed or self.overflowed:
            return
        if event.type in SUPERSEDABLE:
            key: Any = ("s", event.type, event.model_id)
            if self._pending.pop(key, None) is not None:
                self.dropped_superseded += 1
        else:
            key = ("e", next(self._seq))
            if len(self._pending) >= self.max_pending:
                self.overflowed = True
                self._wakeup.set()
                return
        self._pending[key] = event
        self._wakeup.set()

    async def next_batch(self) -> list[Event]:
        """Wait for events and take all that are pending, oldest first."""
        while not self._pending:
            if self.closed or self.overflowed:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()
        batch = list(self._pending.values())
        self._pending.clear()
        return batch

    def close(self) -> None:
        """Stop taking events and wake the reader."""
        self.closed = True
        self._wakeup.set()


class EventBus:
    """Publishes events to every matching subscription; `publish` never blocks or raises.

    `level()` names the notification level in force (see LEVELS); events it does not admit reach no subscriber."""

    def __init__(self, level: Callable[[], str] | None = None) -> None:
        self._subs: dict[str, Subscription] = {}
        self._level = level or (lambda: "all")

    def subscribe(self, types: Iterable[str] | None = None, model_ids: Iterable[str] | None = None, max_pending: int = 10_000) -> Subscription:
        """Create and register a subscription."""
        sub = Subscription(types, model_ids, max_pending)
        self._subs[sub.id] = sub
        return sub

    def unsubscribe(self, sub_id: str) -> bool:
        """Close and forget a subscription; False if unknown."""
        sub = self._subs.pop(sub_id, None)
        if sub is None:
            return False
        sub.close()
        return True

    def publish(self, event: Event) -> None:
        """Offer `event` to every subscription that wants it, when the notification level admits it."""
        if not admitted(self._level(), event.type):
            return
        for sub in list(self._subs.values()):
            try:
                if sub.wants(event):
                    sub.offer(event)
            except Exception:  # pragma: no cover - a subscriber bug must not stop the engine
                log.exception("subscriber %s failed to take an event", sub.id)

    def emit(self, event_type: str, **params: Any) -> Event:
        """Build and publish an event in one step; return it."""
        event = make_event(event_type, **params)
        self.publish(event)
        return event

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are registered."""
        return len(self._subs)
