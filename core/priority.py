"""Request and download priorities: one type, the names the wire accepts, and one normaliser.

The order is critical, high, normal, low (most urgent first). The wire also
accepts `medium` as another name for `normal`.
"""

from __future__ import annotations

from enum import Enum

from mavail.core.errors import InvalidParams

__all__ = ["PRIORITIES", "PRIORITY_ALIASES", "PRIORITY_INPUT", "Priority", "normalise_priority", "priority_rank"]


class Priority(str, Enum):
    """A priority; the value is its wire name and members are declared most urgent first."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for the most urgent; queues order by it."""
        return _RANK[self]


_RANK = {p: i for i, p in enumerate(Priority)}

PRIORITIES: tuple[str, ...] = tuple(p.value for p in Priority)
"""The canonical wire names, most urgent first."""

PRIORITY_ALIASES: dict[str, Priority] = {"medium": Priority.NORMAL}
"""Other names the wire accepts for a priority."""

PRIORITY_INPUT: tuple[str, ...] = ("critical", "high", "normal", "medium", "low")
"""Every name a request may give (the canonical names and the aliases), for parameter schemas."""

assert set(PRIORITY_INPUT) == set(PRIORITIES) | set(PRIORITY_ALIASES)


def normalise_priority(priority: str | None) -> str:
    """The canonical wire name of `priority` (None and `medium` are `normal`); InvalidParams otherwise."""
    if priority is None:
        return Priority.NORMAL.value
    alias = PRIORITY_ALIASES.get(priority) if isinstance(priority, str) else None
    if alias is not None:
        return alias.value
    try:
        return Priority(priority).value
    except ValueError:
        raise InvalidParams(f"priority must be one of {', '.join(PRIORITY_INPUT)}", field="priority",
                            allowed=list(PRIORITY_INPUT)) from None


def priority_rank(priority: str) -> int:
    """The queue rank of a canonical priority name (0 is the most urgent)."""
    return _RANK[Priority(priority)]
