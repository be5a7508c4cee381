"""The mavail TUI application: app factory, engine link wiring, live event inbox, command palette, run_tui."""

from __future__ import annotations

import gc
import os
import time
import tomllib
from functools import partial
from pathlib import Path
from typing import Any

from textual.app import App
from textual.css.query import NoMatches
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.theme import Theme

from mavail.tui.actions import ACTIONS
from mavail.tui.client import EngineLink
from mavail.tui.fleet import EngineSpec, Fleet, Slot, user_config_file
from mavail.tui.messages import ConnectionChanged, EventsPending
from mavail.tui.messages_line import MessageBoard
from mavail.tui.words import readable
from mavail.tui.screens.edit import EditSettingScreen
from mavail.tui.screens.main import MainScreen
from mavail.tui.widgets.base import Pane

LIGHT_THEME = "textual-light"
DARK_THEME = "textual-dark"
NOTIFY_EVENTS = ("model_health_alert", "model_availability_change", "download_failed", "queued_request_ready",
                 "queued_request_expired", "storage_warning")


class ActionCommands(Provider):
    """The command palette: every action of the main screen by name, with its key."""

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for a in ACTIONS:
            text = f"{a.label}: {a.description}"
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), partial(self._run, a.action), help=f"key {a.key_display or a.key}")

    async def discover(self) -> Hits:
        for a in ACTIONS:
            yield DiscoveryHit(f"{a.label}: {a.description}", partial(self._run, a.action), help=f"key {a.key_display or a.key}")

    async def _run(self, action: str) -> None:
        app = self.app
        if isinstance(app, MavailApp):
            await app.main.run_action(action)


def default_keymap_path() -> Path:
    """Where a user's key remapping lives: $MAVAIL_TUI_KEYMAP, else $XDG_CONFIG_HOME/mavail/keymap.toml."""
    return user_config_file("MAVAIL_TUI_KEYMAP", "keymap.toml")


def load_keymap(path: Path | None) -> tuple[dict[str, str], str | None]:
    """`{binding id: key}` from the `[keys]` table of `path`, and an error message if it could not be read."""
    if path is None or not path.exists():
        return {}, None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return {}, f"keymap {path} ignored: {exc}"
    keys = data.get("keys", {})
    known = {a.id for a in ACTIONS}
    bad = [k for k in keys if k not in known or not isinstance(keys[k], str)]
    if bad:
        return {k: v for k, v in keys.items() if k not in bad}, f"keymap {path}: unknown or invalid entries {', '.join(bad)}"
    return dict(keys), None


class MavailApp(App[int]):
    """The TUI: one main screen of tabs over a self-healing link to the engine."""

    TITLE = "mavail"
    COMMANDS = App.COMMANDS | {ActionCommands}
    ENABLE_COMMAND_PALETTE = True

    def __init__(self, socket_path: str | Path | None = None, link: Any = None, keymap: dict[str, str] | None = None,
                 min_backoff_s: float = 0.2, max_backoff_s: float = 5.0, drain_interval_s: float = 0.5,
                 engines: list[EngineSpec] | None = None, settle_gc: bool = False) -> None:
        super().__init__()
        self.settle_gc = settle_gc
        """Whether `rows_settled` keeps what is alive out of the garbage collector's full passes (the TUI's own
        process: run_tui; a test process runs many apps and would keep each one's garbage)."""
        if "TEXTUAL_ANIMATIONS" not in os.environ:
            # the tabs' underline slides to a tab shown or retitled (each sort) in some 20 frames of the whole
            # screen, as much work as the switch itself and in front of the next key; Textual's own variable
            # turns animations back on
            self.animation_level = "none"
        if link is not None:
            self.fleet = Fleet([Slot(EngineSpec(Path(socket_path or "")), link)])
        else:
            self.fleet = Fleet.connect(engines or [EngineSpec(Path(socket_path or ""))], self._on_engine_event, self._on_link_state,
                                       min_backoff_s=min_backoff_s, max_backoff_s=max_backoff_s)
        """Every engine followed (one, unless several sockets were given)."""
        self.link: EngineLink = self.fleet.slots[0].link
        """The connection to the first engine, which the tabs other than Models and Downloads show (a stub in widget tests)."""
        self.keymap_overrides: dict[str, str] = dict(keymap or {})
        """Keys the user remapped, by binding id."""
        if self.keymap_overrides:
            self.set_keymap(self.keymap_overrides)
        self.drain_interval_s = drain_interval_s
        self._inbox: dict[Any, dict[str, Any]] = {}
        self._seq = 0
        self._drain_scheduled = False
        self.events_seen = 0
        """Engine events received (tests and benchmarks read it)."""
        self.connected = False
        """Whether the engine answers (with several engines: whether any does); mirrors the top line."""
        self._last_load: dict[str, float] = {}
        self.board = MessageBoard(self._messages_changed)
        """What the TUI has told the user: shown in the message line, never as pop-ups over the tables."""
        self.info_timeout_s = 5.0
        """How long information stays on the message line (errors stay until dismissed)."""
        self.main = MainScreen()
        self._details: dict[int, str] = {}
        """Each engine's last connection detail (several engines)."""
        self._lost: set[int] = set()
        """Engines that were connected and are gone (several engines): told once, until they are back."""

    def rows_settled(self) -> None:
        """A full load of the Models tab is done: its rows live as long as the table. The collector's full passes
        walk every object (60 ms with 1,000 models, and a key press waits for them); with `settle_gc` they leave
        out from now on what is alive now."""
        if self.settle_gc:
            gc.freeze()

    # --- theme -----------------------------------------------------------------
    @property
    def current_theme(self) -> Theme:
        """The theme in use, looked up once per theme name: Textual's look-up copies the table of every registered
        theme, and drawing a frame asks for the theme thousands of times (a tenth of a frame's time)."""
        cached: tuple[str, Theme] | None = getattr(self, "_current_theme", None)
        if cached is None or cached[0] != self.theme:
            cached = (self.theme, App.current_theme.fget(self))  # type: ignore[attr-defined]
            self._current_theme = cached
        return cached[1]

    def register_theme(self, theme: Theme) -> None:
        """Register a theme (Textual's), forgetting the theme in use in case it is the one replaced."""
        super().register_theme(theme)
        self._current_theme = None

    def unregister_theme(self, theme_name: str) -> None:
        """Unregister a theme (Textual's), forgetting the theme in use in case it is the one removed."""
        super().unregister_theme(theme_name)
        self._current_theme = None

    # --- lifecycle -----------------------------------------------------------
    def on_mount(self) -> None:
        self.push_screen(self.main)
        self.set_interval(1.0, self._resync_tick)

    def start_link(self) -> None:
        """Start following the engine (the main screen calls this once it is mounted)."""
        if not any(w.group == "link" and not w.is_finished for w in self.workers):
            for slot in self.fleet.slots:
                self.run_worker(slot.link.run, group="link", exit_on_error=False)

    def pane(self, name: str) -> Pane:
        """The pane of tab `name` on the main screen."""
        return self.main.pane(name)

    def report_error(self, text: str, model_id: str | None = None) -> None:
        """Show an engine error (its contract code and message); it stays until dismissed."""
        self.notify(text, severity="error", model_id=model_id)

    def notify(self, message: str, *, title: str = "", severity: Any = "information", timeout: float | None = None,
               markup: bool = True, model_id: str | None = None, follows: bool = False) -> None:
        """Say something on the message line (one line per action; an event it causes updates that line)."""
        text = f"{title}: {message}" if title else str(message)
        note = self.board.say(text, str(severity), model_id, follows)
        if severity != "error":
            self.set_timer(timeout or self.info_timeout_s, partial(self.board.expire, note))

    def _messages_changed(self) -> None:
        try:
            self.main.show_messages(self.board.lines())
        except NoMatches:  # the main screen is not there (starting or shutting down)
            pass

    def toggle_light_theme(self) -> None:
        """Switch between the default dark theme and the light one."""
        self.theme = DARK_THEME if self.theme == LIGHT_THEME else LIGHT_THEME

    # --- connection ----------------------------------------------------------
    def _on_link_state(self, connected: bool, detail: str, engine: int = 0) -> None:
        self.post_message(ConnectionChanged(connected, detail, engine))

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        try:
            self._connection_changed(message)
        except NoMatches:  # the main screen is not there (starting or shutting down)
            pass

    def _connection_changed(self, message: ConnectionChanged) -> None:
        if self.fleet.multi:
            self._fleet_connection_changed(message)
            return
        was = self.connected
        self.connected = message.connected
        if message.connected:
            # the keys first: on a narrow terminal the line is cut in the socket path, not in them
            self.main.show_connection(True, f"● connected · ? help · ctrl+p commands · {message.detail}")
            self._last_load.clear()
            for pane in {self.pane("models"), self.pane("downloads"), self.main.active_pane()}:
                self._load(pane)
            if was is False and self.link.connections > 1:
                self.notify("Reconnected to the engine.")
        else:
            self.main.show_connection(
                False, f"✖ DISCONNECTED · {message.detail} · retrying (attempt {self.link.attempts + 1}) · ctrl+r now")
            if was:
                self.notify("Lost the engine; reconnecting with backoff.", severity="warning")

    def _fleet_connection_changed(self, message: ConnectionChanged) -> None:
        """Several engines: the top line names the ones down; their rows are marked, the others stay live."""
        i, fleet = message.engine, self.fleet
        link, name = fleet.slots[i].link, fleet.display(i)
        was_any = self.connected
        self.connected = fleet.any_connected()
        self._details[i] = message.detail
        if message.connected:
            self._last_load.clear()
            for pane in {self.pane("models"), self.pane("downloads"), self.main.active_pane()}:
                self._load(pane)
            if link.connections > 1 and i in self._lost:
                self.notify(f"Reconnected to {name}.")
            self._lost.discard(i)
        elif i not in self._lost and link.connections > 0:
            self._lost.add(i)
            self.notify(f"Lost {name}; reconnecting with backoff.", severity="warning")
        down = fleet.down()
        if not down:
            names = ", ".join(fleet.describe(j) for j in range(len(fleet.slots)))
            self.main.show_connection(True, f"● {len(fleet.slots)} engines connected · ? help · ctrl+p commands · {names}")
        else:
            gone = " · ".join(f"✖ {fleet.display(j)} DISCONNECTED · {self._details.get(j, 'connecting')} · "
                              f"retrying (attempt {fleet.slots[j].link.attempts + 1})" for j in down)
            up = len(fleet.slots) - len(down)
            self.main.show_connection(False, f"{gone} · {up} of {len(fleet.slots)} connected · ctrl+r now")
        for pane in (self.pane("models"), self.pane("downloads")):
            pane.engine_changed(i)
        self.main.show_titles()
        if was_any and not self.connected:
            self.notify("Lost every engine; reconnecting with backoff.", severity="warning")

    # --- live events: an inbox drained a few times a second -----------------
    def _on_engine_event(self, event: dict[str, Any], engine: int = 0) -> None:
        self.events_seen += 1
        params = event.get("params") or {}
        if self.fleet.multi:
            event = {**event, "engine": engine}
        if event.get("method") == "model_download_progress":
            key: Any = ("p", engine, params.get("model_id"))
            self._inbox.pop(key, None)  # a newer progress event supersedes the pending one
        else:
            self._seq += 1
            key = ("e", self._seq)
        self._inbox[key] = event
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self.post_message(EventsPending())

    def on_events_pending(self, message: EventsPending) -> None:
        self.set_timer(self.drain_interval_s, self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        events = list(self._inbox.values())
        self._inbox.clear()
        if not events or not self.main.is_attached:
            return
        try:
            panes = self.main.panes()
        except NoMatches:  # shutting down
            return
        first = [e for e in events if not e.get("engine")]  # the one engine the other tabs show
        with self.batch_update():
            for pane in panes:
                pane.on_events(events if pane.FLEET else first)
        self._notify_events([e for e in events if e.get("method") in NOTIFY_EVENTS])

    def _notify_events(self, events: list[dict[str, Any]]) -> None:
        if len(events) > 4:
            self.notify(f"{len(events)} model changes; see the Models and Health tabs.", timeout=4)
            return
        for ev in events:
            p = ev.get("params") or {}
            kind = ev.get("method")
            mid = p.get("model_id", "?")
            if self.fleet.multi:
                mid = f"{mid} on {self.fleet.display(int(ev.get('engine') or 0))}"
            if kind == "model_health_alert":
                sev = "error" if p.get("severity") in ("error", "critical") else "warning"
                self.notify(f"{mid}: {readable(str(p.get('message') or p.get('alert_type')))}", title="Health alert", severity=sev,
                            timeout=8, model_id=mid, follows=True)
            elif kind == "model_availability_change":
                sev = "error" if p.get("new_status") in ("corrupted", "failed") else "information"
                self.notify(f"{mid}: {p.get('old_status')} → {p.get('new_status')}", severity=sev, model_id=mid, follows=True)
            elif kind == "download_failed":
                self.notify(f"{mid}: {p.get('error_code')}: {p.get('message')}", title="Download failed", severity="error",
                            model_id=mid, follows=True)
            elif kind == "queued_request_ready":
                self.notify(f"{mid}: queued request {p.get('queue_id')} is ready", model_id=mid, follows=True)
            elif kind == "queued_request_expired":
                self.notify(f"{mid}: queued request {p.get('queue_id')} expired", severity="warning", model_id=mid, follows=True)
            elif kind == "storage_warning":
                self.notify(readable(str(p.get("message") or "storage is running low")), title="Storage", severity="warning", timeout=8,
                            follows=True)

    # --- slow resync ---------------------------------------------------------
    def _load(self, pane: Pane) -> None:
        self._last_load[pane.id or ""] = time.monotonic()
        pane.reload()

    def pane_shown(self, pane: Pane) -> None:
        """A tab came into view: fetch it unless it was fetched a moment ago, once the tab is drawn (the key that
        showed it is answered first)."""
        pane.shown()
        if self.fleet.any_connected() and time.monotonic() - self._last_load.get(pane.id or "", 0.0) > pane.SHOWN_RELOAD_S:
            self._last_load[pane.id or ""] = time.monotonic()
            self.call_after_refresh(self._load, pane)

    def _resync_tick(self) -> None:
        if not self.fleet.any_connected() or not self.main.is_attached or not isinstance(self.screen, MainScreen):
            return
        try:
            pane = self.main.active_pane()
        except NoMatches:
            return
        if time.monotonic() - self._last_load.get(pane.id or "", 0.0) >= pane.RESYNC_S:
            self._load(pane)

    # --- settings ------------------------------------------------------------
    def edit_setting(self, key: str, value: Any) -> None:
        """Open the editor for one setting; the engine validates and saves."""

        async def save(k: str, v: Any) -> str | None:
            from mavail.rpc.client import CallTimeout, EngineUnavailable, RpcError
            from mavail.tui.client import error_text

            try:
                res = await self.link.call("config.update", patch={k: v})
            except (RpcError, CallTimeout, EngineUnavailable) as exc:
                return error_text(exc)
            note = " (applies after an engine restart)" if res.get("restart_required") else " (applied)"
            self.notify(f"{k} = {v}{note}")
            self.pane("settings").mark_dirty()
            return None

        self.push_screen(EditSettingScreen(key, value, save))


def create_app(socket_path: str | Path | None = None, **kw: Any) -> MavailApp:
    """Build the app (tests call this too); applies the user's keymap unless one is given."""
    if "keymap" not in kw:
        keymap, error = load_keymap(default_keymap_path())
        kw["keymap"] = keymap
        app = MavailApp(socket_path, **kw)
        if error:
            app.call_later(app.notify, error, severity="warning", timeout=8)
        return app
    return MavailApp(socket_path, **kw)


def run_tui(socket_path: str | Path | None = None, engines: list[EngineSpec] | None = None) -> int:
    """Run the TUI attached to the engine at `socket_path` (or to every one of `engines`) until the user quits; the exit status."""
    app = create_app(socket_path, engines=engines, settle_gc=True)
    result = app.run()
    return int(result or 0) if app.return_code in (None, 0) else int(app.return_code or 1)
