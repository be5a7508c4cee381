"""Encodings kept between calls: each model's status is encoded once per change, not once per call.

`models.status` of every model is the largest answer the engine gives (about a
kilobyte a model). The status board gives each model a revision that grows at
every change; the encoding of a model's status is kept with the revision it was
made at and reused, as an `orjson.Fragment`, until the revision moves.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

import orjson


class RevisedStatuses(Protocol):
    """What the cache reads: composed statuses and their revisions (`StatusBoard`)."""

    @property
    def caching(self) -> bool:
        """Whether revisions follow every change (the board caches composed statuses)."""

    def model_status(self, model_id: str) -> dict[str, Any]:
        """One model's status."""

    def revision(self, model_id: str) -> int:
        """A number that grows whenever the model's status may have changed."""

    def revisions_known(self) -> set[str] | dict[str, int]:
        """The ids the board tracks (the catalog's)."""


class StatusEncodings:
    """Per board: model id -> (revision, encoded status)."""

    _per_board: "weakref.WeakKeyDictionary[Any, StatusEncodings]" = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self._cache: dict[str, tuple[int, orjson.Fragment]] = {}

    @classmethod
    def of(cls, board: Any) -> "StatusEncodings":
        """The cache of one status board."""
        found = cls._per_board.get(board)
        if found is None:
            found = cls._per_board[board] = cls()
        return found

    def prune(self, board: RevisedStatuses) -> None:
        """Drop the encodings of models the board no longer knows."""
        known = board.revisions_known()
        self._cache = {m: v for m, v in self._cache.items() if m in known}

    def encoded(self, board: RevisedStatuses, model_id: str) -> Any:
        """The model's status as an orjson Fragment (or the status itself when the board does not track changes)."""
        if not board.caching:
            return board.model_status(model_id)
        rev = board.revision(model_id)
        hit = self._cache.get(model_id)
        if hit is not None and hit[0] == rev:
            return hit[1]
        # copied to a bytes object of its own size: orjson's output keeps its larger working buffer (about 8 KiB)
        if model_id not in self._cache and len(self._cache) > 2 * len(board.revisions_known()):
            self.prune(board)
        frag = orjson.Fragment(memoryview(orjson.dumps(board.model_status(model_id), option=orjson.OPT_NON_STR_KEYS)).tobytes())
        self._cache[model_id] = (rev, frag)
        return frag

    def encoded_many(self, board: RevisedStatuses, model_ids: list[str]) -> list[Any]:
        """`encoded` of each model in order: the loop of one page or of the whole board, lookups hoisted."""
        if not board.caching:
            return [board.model_status(m) for m in model_ids]
        cache, revision, out = self._cache, board.revision, []
        for m in model_ids:
            hit = cache.get(m)
            out.append(hit[1] if hit is not None and hit[0] == revision(m) else self.encoded(board, m))
        return out
