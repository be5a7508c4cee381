"""Why a download attempt was retried, as one word of a small fixed set (a label that metrics can carry)."""

from __future__ import annotations

import httpx

from mavail.core.downloads.transfer import (ConnectionBroken, DeadUrl, HttpStatus, LocationExpired, ShortRead, Stalled,
                                            TooSlow)
from mavail.core.errors import IntegrityError

__all__ = ["RETRY_REASONS", "retry_reason"]

RETRY_REASONS = ("stalled", "too_slow", "short_read", "connection", "location_expired", "dead_url", "http_429", "http_4xx",
                 "http_5xx", "integrity", "timeout", "other")
"""Every value `retry_reason` returns."""

_BY_TYPE: tuple[tuple[type[BaseException], str], ...] = (
    (Stalled, "stalled"), (TooSlow, "too_slow"), (ShortRead, "short_read"), (ConnectionBroken, "connection"),
    (LocationExpired, "location_expired"), (DeadUrl, "dead_url"), (IntegrityError, "integrity"),
    (httpx.TimeoutException, "timeout"), (httpx.TransportError, "connection"),
)


def retry_reason(exc: BaseException | None) -> str:
    """The reason a transfer retried after `exc`: one of RETRY_REASONS (HTTP statuses grouped, so the set stays small)."""
    if isinstance(exc, HttpStatus):
        return "http_429" if exc.status == 429 else "http_5xx" if exc.status >= 500 else "http_4xx"
    for cls, reason in _BY_TYPE:
        if isinstance(exc, cls):
            return reason
    return "other"
