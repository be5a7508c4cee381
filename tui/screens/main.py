"""MainScreen: the connection line, one tab per area, the filter box and the footer; owns the action keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from rich.text import Text
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Input, Static, TabbedContent, TabPane

from mavail.tui.actions import ACTIONS, TABS, ScreenActions, footer_keys
from mavail.tui.widgets.base import Pane
from mavail.tui.widgets.downloads import DownloadsPane
from mavail.tui.widgets.health import HealthPane
from mavail.tui.widgets.history import HistoryPane
from mavail.tui.widgets.models import ModelsPane
from mavail.tui.widgets.queue import QueuePane
from mavail.tui.widgets.settings import SettingsPane
from mavail.tui.widgets.storage import StoragePane
from mavail.tui.widgets.system import SystemPane
from mavail.tui.widgets.usage import UsagePane

if TYPE_CHECKING:
    from mavail.tui.app import MavailApp

PANES: dict[str, type[Pane]] = {
    "models": ModelsPane, "downloads": DownloadsPane, "health": HealthPane, "queue": QueuePane,
    "storage": StoragePane, "usage": UsagePane, "system": SystemPane, "settings": SettingsPane, "history": HistoryPane,
}
assert tuple(PANES) == TABS


class MainScreen(ScreenActions, Screen[None]):
    """Everything the user sees between dialogs."""

    app: "MavailApp"

    DEFAULT_CSS = """
    MainScreen #conn { height: 1; padding: 0 1; background: $success-darken-2; color: $text; text-wrap: nowrap; text-overflow: ellipsis; }
    MainScreen #conn.-down { background: $error; text-style: bold; }
    MainScreen #filter { dock: bottom; display: none; height: 3; }
    MainScreen #msg { height: auto; max-height: 2; padding: 0 1; display: none; }
    MainScreen #keys { height: 1; padding: 0 1; background: $panel; }
    MainScreen #msg.-shown { display: block; }
    MainScreen #filter.-shown { display: block; }
    MainScreen TabbedContent { height: 1fr; }
    MainScreen TabPane { padding: 0; }
    """

    BINDINGS = [a.binding() for a in ACTIONS] + [Binding("escape", "close_filter", "Close filter", show=False, id="mavail.filter_close")]

    def compose(self) -> ComposeResult:
        yield Static("connecting to the engine…", id="conn")
        with TabbedContent(id="tabs", initial="models"):
            for name, cls in PANES.items():
                with TabPane(cls.TITLE, id=name):
                    yield cls(id=f"pane-{name}")
        yield Static("", id="msg")
        yield Input(placeholder="filter by model id · enter keeps it · esc clears", id="filter")
        yield Static("", id="keys")

    def on_mount(self) -> None:
        if self.app.fleet.multi:
            self.show_titles()
        self.active_pane().focus_main()
        self.show_keys()
        self.show_messages(self.app.board.lines())  # what was said before the screen was there
        self.app.start_link()

    # --- footer and tab titles -------------------------------------------------
    def show_keys(self) -> None:
        """The footer: the keys that act on the shown tab (remapped keys as the user set them)."""
        text = Text()
        for key, label in footer_keys(self.active_name(), self.app.keymap_overrides):
            if text:
                text.append("  ")
            text.append(key, style="bold")
            text.append(f" {label}")
        room = max(10, self.size.width - 2)
        for extra in ("  1-9 tabs  ^p commands", "  ^p commands"):
            if len(text) + len(extra) <= room:
                text.append(extra, style="dim")
                break
        text.truncate(room)
        self.query_one("#keys", Static).update(text)

    def on_resize(self) -> None:
        self.show_keys()

    def show_view(self, name: str) -> None:
        """Put tab `name`'s active filter and sort (column and direction) in its title."""
        pane = self.pane(name)
        table = pane.table
        label = pane.title() if name == self.active_name() else pane.TITLE  # a long title only where it is read
        if table is not None:
            if table.filter_text:
                label += f" /{table.filter_text}"
            if table.sort_index is not None:
                label += f" {'↓' if table.sort_reverse else '↑'}{table.spec[table.sort_index].label}"
        try:
            self.query_one("#tabs", TabbedContent).get_tab(name).label = label
        except NoMatches:
            pass
        pane.view_changed()

    def show_titles(self) -> None:
        """Every tab's title again (an engine's name can change once it reports its host)."""
        for name in PANES:
            self.show_view(name)

    # --- panes ---------------------------------------------------------------
    def pane(self, name: str) -> Pane:
        """The pane of tab `name`."""
        return self.query_one(f"#pane-{name}", Pane)

    def panes(self) -> list[Pane]:
        """Every pane, in tab order."""
        return [self.pane(n) for n in PANES]

    def active_name(self) -> str:
        """The id of the shown tab."""
        return self.query_one("#tabs", TabbedContent).active or "models"

    def active_pane(self) -> Pane:
        return self.pane(self.active_name())

    def action_tab(self, name: str) -> None:
        self.query_one("#tabs", TabbedContent).active = name
        self.active_pane().focus_main()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.show_keys()
        if self.app.fleet.multi:
            self.show_titles()
        pane = self.active_pane()
        input_ = self.query_one("#filter", Input)
        if pane.table is not None and input_.value != pane.table.filter_text:
            input_.value = pane.table.filter_text
        self.app.pane_shown(pane)

    # --- connection line -----------------------------------------------------
    def show_connection(self, connected: bool, text: str) -> None:
        """Update the top line: green when connected, red DISCONNECTED otherwise."""
        try:
            line = self.query_one("#conn", Static)
        except NoMatches:  # not composed yet, or shutting down
            return
        line.set_class(not connected, "-down")
        line.update(text)

    # --- message line --------------------------------------------------------
    def show_messages(self, lines: list[tuple[str, str]]) -> None:
        """Show the message board's lines under the tab (an error first, in red, until escape dismisses it)."""
        box = self.query_one("#msg", Static)
        text = Text()
        style = {"error": "bold red", "warning": "yellow"}
        for i, (severity, line) in enumerate(lines):
            if i:
                text.append("\n")
            text.append(line, style=style.get(severity, ""))
            if severity == "error":
                text.append(" · esc dismisses", style="dim")
        box.update(text)
        box.set_class(bool(lines), "-shown")

    # --- filter --------------------------------------------------------------
    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("-shown")
        table = self.active_pane().table
        box.value = table.filter_text if table is not None else ""
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            table = self.active_pane().table
            if table is not None:
                table.set_filter(event.value)
                self.show_view(self.active_name())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            event.input.remove_class("-shown")
            self.active_pane().focus_main()

    def action_close_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.has_class("-shown"):
            box.value = ""
            box.remove_class("-shown")
            self.active_pane().focus_main()
        elif (table := self.active_pane().table) is not None and table.filter_text and not self.app.board.error:
            table.set_filter("")
            self.show_view(self.active_name())
        else:
            self.app.board.dismiss()
