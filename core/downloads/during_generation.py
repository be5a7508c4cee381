"""Downloads give way to generations: while any lease is held they pause or slow down, and go on when the last one ends.

A lease (`models.acquire`) is how a generation says it is running. With
`downloads.during_generation = "pause"` every download is held queued (a
running one stops and keeps its bytes); with `"throttle"` all downloads
together are capped at `downloads.during_generation_mbps`; with `"continue"`
nothing changes. The gate acts only through the download manager's
`restrain`, so nothing is persisted: after a restart no lease is held and the
downloads run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from mavail.core.ports import Settings

log = logging.getLogger("mavail.downloads")


@dataclass(frozen=True)
class GateState:
    """What the gate is doing: the mode set, whether it acts now, the leases held, and the cap in force (MiB/s, 0 = none)."""

    mode: str
    active: bool
    leases: int
    limit_mbps: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (`downloads.active`'s `during_generation`)."""
        return {"mode": self.mode, "active": self.active, "leases": self.leases, "limit_mbps": self.limit_mbps}


class GenerationGate:
    """Watches the number of leases held and restrains the downloads while there is any."""

    def __init__(self, settings: Settings, leases_held: Callable[[], int], restrain: Callable[[bool, float], None]) -> None:
        """`leases_held()` counts every live lease; `restrain(hold, cap_mbps)` is the download manager's."""
        self._settings = settings
        self._leases_held = leases_held
        self._restrain = restrain
        self._applied: tuple[bool, float] = (False, 0.0)
        settings.on_change(self._on_config)

    def _on_config(self, changed: dict[str, Any]) -> None:
        if any(k.startswith("downloads.during_generation") for k in changed):
            self.leases_changed()

    def state(self) -> GateState:
        """The mode and what it does right now."""
        mode = str(self._settings.get("downloads.during_generation"))
        held = self._leases_held()
        active = held > 0 and mode != "continue"
        cap = float(self._settings.get("downloads.during_generation_mbps")) if active and mode == "throttle" else 0.0
        return GateState(mode, active, held, cap)

    def leases_changed(self) -> None:
        """Call on every change of the leases (and of the settings): hold, cap or free the downloads to match."""
        st = self.state()
        want = (st.active and st.mode == "pause", st.limit_mbps)
        if want != self._applied:
            self._applied = want
            log.info("downloads %s", "paused while a generation runs" if want[0] else
                     f"capped at {want[1]:g} MiB/s while a generation runs" if want[1] else "go on: no generation runs")
            self._restrain(*want)
