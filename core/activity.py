"""Who is working on which model right now: downloads, checks, repairs, updates, cleanups.

Services `hold` a model while they work on it; others ask `reasons(model_id)`
before acting (a cleanup never removes a model being downloaded or checked, a
scheduled check skips a model being repaired). It is in memory: after a
restart nothing is in progress until a service says so again.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from mavail.core.status import StatusSink


def _no_sink(model_ids: Sequence[str] | None) -> None:
    """The sink of an activity set that nobody composes statuses from."""


class Activity:
    """A reference-counted set of (model_id, reason) pairs.

    Status fields derive from it (health reads a model as corrupted only
    while it is not being downloaded), so every acquire and release is
    reported to `status_sink` with the model's id.
    """

    def __init__(self, status_sink: StatusSink | None = None) -> None:
        self._held: Counter[tuple[str, str]] = Counter()
        self._sink: StatusSink = status_sink or _no_sink

    def acquire(self, model_id: str, reason: str) -> None:
        """Mark `model_id` busy for `reason` (e.g. "downloading", "checking", "repairing")."""
        self._held[(model_id, reason)] += 1
        self._sink([model_id])

    def release(self, model_id: str, reason: str) -> None:
        """Undo one `acquire`."""
        key = (model_id, reason)
        self._held[key] -= 1
        if self._held[key] <= 0:
            del self._held[key]
        self._sink([model_id])

    @contextmanager
    def hold(self, model_id: str, reason: str) -> Iterator[None]:
        """`with activity.hold(mid, "checking"):` marks the model busy for the block."""
        self.acquire(model_id, reason)
        try:
            yield
        finally:
            self.release(model_id, reason)

    def reasons(self, model_id: str) -> set[str]:
        """Why `model_id` is busy now (empty when idle)."""
        return {r for (m, r), n in self._held.items() if m == model_id and n > 0}

    def busy(self, model_id: str, *reasons: str) -> bool:
        """Whether `model_id` is busy (for any of `reasons`, when given)."""
        held = self.reasons(model_id)
        return bool(held & set(reasons)) if reasons else bool(held)

    def model_fields(self, model_id: str) -> dict[str, Any]:
        """Status field `activity`: what is working on the model now (downloading, checking, repairing, ...), sorted."""
        return {"activity": sorted(self.reasons(model_id))}
