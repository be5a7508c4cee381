"""systemd's readiness protocol (`sd_notify`): tell the service manager the engine is ready, or stopping.

A unit of `Type=notify` sets `NOTIFY_SOCKET` to a datagram socket (a path, or
`@name` in the abstract namespace); each message is `KEY=value` lines. Without
the variable every call does nothing, so the engine runs the same by hand.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping

log = logging.getLogger("mavail.engine")


def sd_notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `message` (e.g. "READY=1\\nSTATUS=...") to `$NOTIFY_SOCKET`; False when there is none or it fails."""
    target = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not target:
        return False
    address = "\0" + target[1:] if target.startswith("@") else target
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message.encode(), address)
        return True
    except OSError as exc:
        log.warning("could not notify the service manager at %s: %s", target, exc)
        return False
