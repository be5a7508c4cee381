"""HelpScreen: every key with what it does, its binding id, and how to remap it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from mavail.tui.actions import ACTIONS


class HelpScreen(ModalScreen[None]):
    """The key reference; any of escape, q or ? closes it."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 78; max-width: 100%; height: 90%; border: thick $accent; background: $surface; }
    HelpScreen DataTable { height: 1fr; }
    HelpScreen Static { padding: 0 1; height: auto; }
    """

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close", id="help.close")]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("[b]mavail keys[/b] · ctrl+p: command palette (every action by name) · esc closes")
            yield DataTable(cursor_type="row", id="help-table")
            yield Static(
                "Remap keys in $MAVAIL_TUI_KEYMAP or ~/.config/mavail/keymap.toml:\n"
                '  [keys]\n  "mavail.pause" = "P"'
            )

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("Key", "Action", "Binding id")
        keymap = getattr(self.app, "keymap_overrides", {})
        for a in ACTIONS:
            key = keymap.get(a.id) or a.key_display or a.key
            table.add_row(key, a.description, a.id)
        table.focus()

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)
