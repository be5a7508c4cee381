"""EditSettingScreen: type a new value for one setting; the engine's validation message is shown in place."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from mavail.tui.widgets.settings import parse_value, show_value

# save(key, value) -> None on success, or the error message to show
Saver = Callable[[str, Any], Awaitable[str | None]]


class EditSettingScreen(ModalScreen[bool]):
    """Edit one setting: enter saves through config.update, escape leaves it unchanged."""

    DEFAULT_CSS = """
    EditSettingScreen { align: center middle; }
    EditSettingScreen > Vertical { width: 70; max-width: 100%; height: auto; border: thick $accent;
        background: $surface; padding: 0 1; }
    EditSettingScreen #edit-error { color: $error; height: auto; }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="edit.cancel")]

    def __init__(self, key: str, value: Any, save: Saver) -> None:
        super().__init__()
        self.key = key
        """The setting, `section.name`."""
        self.value = value
        """Its value when the dialog opened (gives the type)."""
        self.save = save

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"{self.key} (now {show_value(self.value)})")
            yield Input(show_value(self.value), id="edit-input")
            yield Static("", id="edit-error")
            yield Static("enter: save · esc: cancel", classes="hint")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        error = self.query_one("#edit-error", Static)
        try:
            value = parse_value(event.value, self.value)
        except ValueError:
            kind = {bool: "true or false", int: "a whole number", float: "a number", list: "numbers"}.get(type(self.value), "text")
            error.update(f"INVALID_PARAMS: {self.key} needs {kind}")
            return
        message = await self.save(self.key, value)
        if message:
            error.update(message)
            return
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)
