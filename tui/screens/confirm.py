"""ConfirmScreen: a modal yes/no question with an optional plan; destructive actions go through it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from mavail.tui.widgets.scrollbars import use_whole_cell_scrollbars


class ConfirmScreen(ModalScreen[bool]):
    """Ask before doing something that cannot be undone; dismisses with True only on an explicit yes."""

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 76; max-width: 100%; height: auto; max-height: 90%;
        border: thick $warning; background: $surface; padding: 0 1; }
    ConfirmScreen .title { text-style: bold; }
    ConfirmScreen VerticalScroll { height: auto; max-height: 14; }
    ConfirmScreen Horizontal { height: auto; align-horizontal: right; }
    ConfirmScreen Button { margin: 0 1; min-width: 12; }
    """

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, title: str, body: str = "", yes_label: str = "Yes", danger: bool = True) -> None:
        super().__init__()
        self.title_text = title
        """The question."""
        self.body = body
        """What will happen (the plan), shown under the question."""
        self.yes_label = yes_label
        self.danger = danger

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, classes="title", id="confirm-title")
            with VerticalScroll():
                yield Static(self.body, id="confirm-body")
            yield Static("y: yes · n/esc: no", classes="hint")
            with Horizontal():
                yield Button("No", id="no")
                yield Button(self.yes_label, id="yes", variant="error" if self.danger else "primary")

    def on_mount(self) -> None:
        use_whole_cell_scrollbars(self.query_one(VerticalScroll))
        self.query_one("#no", Button).focus()

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")
