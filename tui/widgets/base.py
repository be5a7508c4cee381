"""Pane: the base of every tab; reloads from the engine, shows 'not available' when the engine lacks its methods."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.visual import VisualType
from textual.widgets import Static

from mavail.rpc.client import CallTimeout, EngineUnavailable, RpcError
from mavail.tui.client import error_text
from mavail.tui.widgets.live_table import LiveTable

if TYPE_CHECKING:
    from mavail.tui.app import MavailApp

STATUS_STYLE = {
    "available": "green", "completed": "green", "healthy": "green",
    "downloading": "cyan", "verifying": "cyan", "queued": "blue", "updating": "cyan", "checking": "cyan",
    "paused": "yellow", "degraded": "yellow", "missing": "dim",
    "corrupted": "bold red", "failed": "bold red", "cancelled": "dim", "unknown": "dim",
}


def status_text(status: str | None) -> Text:
    """A status word in its colour."""
    s = (status or "unknown").lower()
    return Text(s, style=STATUS_STYLE.get(s, ""))


def show(static: Static, content: VisualType) -> None:
    """Put `content` in `static` unless it shows that already (each update lays the whole screen out again)."""
    if static.content != content:
        static.update(content)


class Pane(Vertical):
    """One tab's content.

    Subclasses set `REQUIRES` (the methods they need), build their widgets in
    `body()`, fetch in `fetch()` and apply live events in `on_events()`. The
    pane shows a clear "not available from this engine" state when the engine
    does not offer `REQUIRES`, and keeps its last data, marked stale, while
    the engine is unreachable.
    """

    DEFAULT_CSS = """
    Pane { height: 1fr; }
    Pane > .unavailable { height: auto; padding: 1 2; color: $warning; display: none; }
    Pane.-unavailable > .unavailable { display: block; }
    Pane.-unavailable > .body { display: none; }
    Pane > .summary { height: auto; max-height: 4; padding: 0 1; }
    Pane > .detail { height: auto; max-height: 3; padding: 0 1; color: $text-muted; }
    """

    TITLE: ClassVar[str] = ""
    REQUIRES: ClassVar[tuple[str, ...]] = ()
    RESYNC_S: ClassVar[float] = 30.0
    """Slow periodic resync while the pane is shown (events carry the fast changes)."""
    SHOWN_RELOAD_S: ClassVar[float] = 2.0
    """A tab shown again is fetched when it was last fetched longer ago than this."""
    FLEET: ClassVar[bool] = False
    """Whether the pane shows every engine's rows (else only the first engine's, when several are followed)."""

    table: LiveTable | None = None
    """The pane's main table, the target of filter and sort (None if it has none)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.loaded = False
        """True once a fetch succeeded."""
        self.loads = 0
        """Successful fetches so far."""
        self._dirty: set[str] = set()
        self._dirty_all = False
        self._flush_scheduled = False

    @property
    def mavail(self) -> "MavailApp":
        """The app, typed."""
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static("", classes="unavailable")
        yield from self.body()

    def body(self) -> ComposeResult:
        """The pane's widgets; give the top-level ones class `body`."""
        yield from ()

    # --- loading -----------------------------------------------------------
    def missing_methods(self) -> list[str]:
        """Methods of `REQUIRES` the connected engine does not offer (a fleet pane: that no connected engine offers)."""
        if self.FLEET and self.mavail.fleet.multi:
            offered = set().union(*(s.link.methods for s in self.mavail.fleet.slots))
            return [m for m in self.REQUIRES if m not in offered]
        return [m for m in self.REQUIRES if m not in self.mavail.link.methods]

    def title(self) -> str:
        """The tab's title when shown: with several engines, a pane that shows only the first engine names it."""
        fleet = self.mavail.fleet
        if self.FLEET or not fleet.multi:
            return self.TITLE
        return f"{self.TITLE} ({fleet.display(0)})"

    def engine_changed(self, engine: int) -> None:
        """Engine `engine` came or went (a fleet pane marks its rows)."""

    @property
    def on_screen(self) -> bool:
        """Whether this pane's tab is the one shown."""
        try:
            return self.mavail.main.active_pane() is self
        except NoMatches:
            return False

    def shown(self) -> None:
        """The pane's tab came into view: bring up to date what was left alone while it was hidden (subclasses)."""

    def reload(self) -> None:
        """Fetch the pane's data in a worker (a newer reload cancels an older one)."""
        self.run_worker(self._reload, group="reload", exclusive=True, exit_on_error=False)

    async def _reload(self) -> None:
        link = self.mavail.link
        if not (self.mavail.fleet.any_connected() if self.FLEET else link.connected):
            return
        missing = self.missing_methods()
        unavailable = self.query_one(".unavailable", Static)
        if missing:
            self.add_class("-unavailable")
            version = link.engine_version or "?"
            unavailable.update(
                f"{self.TITLE} is not available from this engine (mavail {version}): "
                f"it does not offer {', '.join(missing)}.\nNothing is shown rather than made-up figures."
            )
            return
        self.remove_class("-unavailable")
        try:
            await self.fetch()
        except (RpcError, CallTimeout) as exc:
            self.mavail.report_error(error_text(exc))
            return
        except EngineUnavailable:
            return
        self.loaded = True
        self.loads += 1

    async def fetch(self) -> None:
        """Get the pane's data from the engine and show it (subclasses)."""

    def view_changed(self) -> None:
        """The filter or sort of the pane's table changed (subclasses recount what they show)."""

    # --- live events -------------------------------------------------------
    def on_events(self, events: list[dict[str, Any]]) -> None:
        """Apply engine events (`{"method": type, "params": {...}}`), newest last (subclasses)."""

    def mark_dirty(self, model_id: str | None = None) -> None:
        """Ask for a refetch of one model (or everything) soon; many marks make one fetch."""
        if model_id is None:
            self._dirty_all = True
        else:
            self._dirty.add(model_id)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.set_timer(0.3, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        ids, self._dirty = self._dirty, set()
        everything, self._dirty_all = self._dirty_all, False
        if everything:
            self.reload()
        elif ids:
            self.run_worker(self._refetch(sorted(ids)), group="refetch", exit_on_error=False)

    async def _refetch(self, model_ids: list[str]) -> None:
        try:
            await self.refetch(model_ids)
        except (RpcError, CallTimeout, EngineUnavailable):
            pass

    async def refetch(self, model_ids: list[str]) -> None:
        """Refetch only these models (default: everything)."""
        await self._reload()

    # --- selection ---------------------------------------------------------
    def selected_model(self) -> str | None:
        """The model id of the selected row, if the pane has one."""
        if self.table is None:
            return None
        key = self.table.selected_key
        if key is None:
            return None
        raw = self.table.raw(key) or {}
        return raw.get("model_id", key)

    def selected_raw(self) -> dict[str, Any]:
        """The record behind the selected row ({} if none)."""
        if self.table is None or self.table.selected_key is None:
            return {}
        return self.table.raw(self.table.selected_key) or {}

    def focus_main(self) -> None:
        """Give focus to the pane's main widget."""
        if self.table is not None:
            self.table.focus()
