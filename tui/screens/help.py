"""HelpScreen: every key with what it does and its binding id (what a keymap remaps), wrapped to fit 80 columns."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from mavail.tui.actions import ACTIONS, shown_keys
from mavail.tui.widgets.scrollbars import use_whole_cell_scrollbars


def help_table(overrides: dict[str, str] | None = None) -> Table:
    """Key, what it does, binding id: one row per action; descriptions wrap, keys and ids never do."""
    keys = shown_keys(overrides)
    table = Table(box=None, expand=True, padding=(0, 1), show_edge=False)
    table.add_column("Key", no_wrap=True, style="bold", min_width=6)
    table.add_column("What it does", ratio=1, overflow="fold")
    table.add_column("Binding id", no_wrap=True, style="dim")
    for a in ACTIONS:
        table.add_row(keys[a.id], a.description, a.id)
    return table


class HelpScreen(ModalScreen[None]):
    """The key reference; any of escape, q or ? closes it."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 80; max-width: 100%; height: 90%; border: round $accent; background: $surface; }
    HelpScreen VerticalScroll { height: 1fr; }
    HelpScreen Static { padding: 0 1; height: auto; }
    """

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close", id="help.close")]

    def compose(self) -> ComposeResult:
        overrides = getattr(self.app, "keymap_overrides", {})
        with Vertical():
            yield Static(Text.from_markup("[b]mavail keys[/b] · ctrl+p: every action by name · esc closes"))
            with VerticalScroll(id="help-scroll"):
                yield Static(help_table(overrides), id="help-table")
                yield Static(Text("Remap keys in $MAVAIL_TUI_KEYMAP or ~/.config/mavail/keymap.toml, by binding id:\n"
                                  '  [keys]\n  "mavail.pause" = "P"'), id="help-remap")

    def on_mount(self) -> None:
        scroll = self.query_one("#help-scroll", VerticalScroll)
        use_whole_cell_scrollbars(scroll)
        scroll.focus()

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)
