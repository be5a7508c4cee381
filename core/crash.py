"""Crash points for the kill-the-engine tests: `point(name)` kills the process with SIGKILL when
`MAVAIL_CRASH_AT` names it, so a test can stop the engine at an exact step of a repair, an update
switch or a cleanup, and check what a restarted engine finds.

Unset (always, outside those tests) it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

NAMES = ("repair.committed", "repair.mid_apply", "update.before_switch", "update.in_switch", "update.after_switch",
         "storage.after_journal", "storage.after_move", "storage.before_delete")


def point(name: str) -> None:
    """Die here, at once and without cleanup, if `MAVAIL_CRASH_AT` is `name`."""
    if os.environ.get("MAVAIL_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
