"""The narrow ports services depend on, instead of the engine.

The composition root (`core.engine`) builds the parts that implement them and
passes each service only the ports it needs: a catalog view, a presence view,
the status board's read side and its sink, the task spawner, leases, activity,
settings, the database, the clock, the event emitter and the tally of counts. A service never
imports another service; where one needs another's figure, the engine passes
it a bound method or a small callable.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Callable, Mapping, Protocol, Sequence

from mavail.core.catalog import ModelSpec
from mavail.core.inventory import ModelPresence
from mavail.core.status import StatusSink
from mavail.core.tasks import Spawner

__all__ = ["BusyView", "CatalogView", "Emit", "LeaseView", "PresenceView", "Settings", "Spawner", "StatusSink", "StatusView", "TallySink"]

Emit = Callable[..., None]
"""`emit(event_type, **params)`: publish an event to subscribers (`EventBus.emit`)."""


class CatalogView(Protocol):
    """The catalog in force (`LiveCatalog`)."""

    @property
    def models(self) -> Mapping[str, ModelSpec]:
        """Every entry by id, in catalog order."""

    @property
    def error(self) -> str | None:
        """Why the catalog files were refused at start, if they were."""

    def get(self, model_id: str) -> ModelSpec | None:
        """The entry, or None."""

    def spec(self, model_id: str) -> ModelSpec:
        """The entry, or ModelNotFound."""

    def ids(self) -> list[str]:
        """Every id in catalog order."""


class PresenceView(Protocol):
    """What is on disk (`Presence`)."""

    def presence(self, model_id: str) -> ModelPresence | None:
        """The last scan of the model."""

    def installed_version(self, model_id: str) -> str | None:
        """The installed version in use, or None."""

    def version_in_use(self, model_id: str) -> str:
        """The installed version in use, else the catalog's."""

    async def refresh(self, model_ids: list[str] | None = None) -> None:
        """Rescan (all, or these models) off the loop."""

    def bytes_on_disk(self) -> int:
        """Bytes of catalog files found on disk."""


class StatusView(Protocol):
    """The read side of the status board (`StatusBoard`)."""

    def model_status(self, model_id: str) -> dict[str, Any]:
        """One model's composed status (shared; do not mutate)."""

    def availability_status(self, model_id: str) -> str:
        """One model's availability."""


class LeaseView(Protocol):
    """Who is using which model (`LeaseManager`)."""

    def is_leased(self, model_id: str, version: str | None = None) -> bool:
        """Whether any lease holds the model (that version)."""

    def leases_for(self, model_id: str) -> Sequence[Any]:
        """The model's active leases."""

    async def wait_released(self, model_id: str, version: str | None = None) -> None:
        """Return once no lease holds the model (that version)."""

    def leased_elsewhere(self, model_id: str, version: str | None = None) -> list[str]:
        """Why other engines sharing the model store hold the model (that version); empty when none do."""

    async def refresh_elsewhere(self) -> None:
        """Read the other engines' leases again."""

    def removing(self, model_id: str, version: str | None = None) -> AbstractContextManager[None]:
        """Hold the intent to remove or replace: refused (Conflict) under a lease; acquires refuse meanwhile."""

    def replacing(self, model_id: str) -> AbstractContextManager[None]:
        """Hold the intent to replace a file of the model: acquires refuse (Conflict) meanwhile."""


class BusyView(Protocol):
    """Which model is busy and why (`Activity`)."""

    def hold(self, model_id: str, reason: str) -> AbstractContextManager[None]:
        """Mark the model busy for the block."""

    def acquire(self, model_id: str, reason: str) -> None:
        """Mark busy until `release`."""

    def release(self, model_id: str, reason: str) -> None:
        """Undo one `acquire`."""

    def reasons(self, model_id: str) -> set[str]:
        """Why the model is busy now."""

    def busy(self, model_id: str, *reasons: str) -> bool:
        """Whether the model is busy (for any of `reasons`)."""


class Settings(Protocol):
    """The configuration (`Config`)."""

    def get(self, key: str) -> Any:
        """A setting's value by dotted key."""

    def on_change(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call `callback(changed)` after every successful update."""



class TallySink(Protocol):
    """Where a service counts what happens (`core.tally.Tally`); safe to call from any thread."""

    def add(self, name: str, labels: tuple[str, ...] = (), n: float = 1) -> None:
        """Add `n` to the count `name` for `labels`."""
