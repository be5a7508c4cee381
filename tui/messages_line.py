"""MessageBoard: what the TUI tells the user, one line per user action, shown in a line of its own (never over the tables).

A user action says what it did once; the engine event it causes (a pause makes
the model's status change) updates that same line instead of adding another.
Errors stay on the line until the user dismisses them (escape) and are not
pushed away by later information, which shows on a second line beside them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

MERGE_S = 10.0
"""How long after a user action an event about the same model is taken as its consequence."""



@dataclass
class Note:
    """One message: its text, severity (information | warning | error), the model it is about, when, and whether it
    follows from an earlier user action (an engine event or the action's outcome) rather than announcing one."""

    text: str
    severity: str = "information"
    model_id: str | None = None
    at: float = field(default_factory=time.monotonic)
    follows: bool = False


class MessageBoard:
    """The current error (sticky) and the current information line, plus a log of every note."""

    def __init__(self, on_change: Callable[[], None], clock: Callable[[], float] = time.monotonic, log_size: int = 200) -> None:
        self.on_change = on_change
        self.clock = clock
        self.log_size = log_size
        self.log: list[Note] = []
        """Every note shown, oldest first (the last `log_size`)."""
        self.error: Note | None = None
        """The error being shown until dismissed."""
        self.info: Note | None = None
        """The information or warning being shown."""
        self._action: Note | None = None
        self._begun: dict[str, float] = {}

    def begin(self, model_id: str) -> None:
        """A user action on `model_id` starts now: an event about it from now on is its consequence, even one that
        arrives before the action's own answer."""
        self._begun[model_id] = self.clock()

    def say(self, text: str, severity: str = "information", model_id: str | None = None, follows: bool = False) -> Note:
        """Show `text`; one that `follows` a recent user action on the same model replaces that action's line."""
        now = self.clock()
        note = Note(text, severity, model_id, now, follows)
        action = self._action
        merged = (follows and model_id is not None and action is not None and action.model_id == model_id
                  and now - action.at < MERGE_S)
        begun = self._begun.pop(model_id, None) if model_id is not None and not follows else None
        early = (begun is not None and severity != "error" and bool(self.log) and self.log[-1].follows
                 and self.log[-1].model_id == model_id and self.log[-1].at >= begun)
        if early:  # the event already said what the action did: keep that one message
            self._action = self.log[-1]
            return self.log[-1]
        if merged and self.log and self.log[-1] is action:
            self.log[-1] = note  # the consequence supersedes the announcement: one message for one action
        else:
            self.log.append(note)
            del self.log[:-self.log_size]
        if not follows:
            self._action = note
        elif merged:
            self._action = note
        if severity == "error":
            self.error = note
            if self.info is not None and model_id is not None and self.info.model_id == model_id:
                self.info = None  # the error is what became of that line
        else:
            self.info = note
        self.on_change()
        return note

    def expire(self, note: Note) -> None:
        """Clear `note` from the information line if it is still the one shown (errors never expire)."""
        if self.info is note:
            self.info = None
            self.on_change()

    def dismiss(self) -> bool:
        """Clear the error line; True if there was one."""
        if self.error is None:
            return False
        self.error = None
        self.on_change()
        return True

    def lines(self) -> list[tuple[str, str]]:
        """(severity, text) to show, the error first."""
        out = []
        if self.error is not None:
            out.append(("error", self.error.text))
        if self.info is not None:
            out.append((self.info.severity, self.info.text))
        return out
