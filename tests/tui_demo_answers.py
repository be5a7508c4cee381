"""The demo's engine answers, recorded once, for screens that must not change between runs (snapshot tests).

`capture()` runs `mavail demo` (real mirrors, real engine), waits until its first download has finished, and
records each answer the TUI's tabs ask for; temporary paths become a fixed home. `answers()` reads the recording
back for a `StubLink` as seen an hour after the recording: every time stamp keeps its age then, rounded to whole
minutes, plus an hour and half a minute, so "1h03m ago" reads the same on any day and however long a run takes
(within half a minute); `system.info` answers its recorded samples in turn.
Record again (after a change of the engine's answers) with `.venv/bin/python -m tests.tui_demo_answers`.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

RECORDING = Path(__file__).parent / "data" / "tui_demo_answers.json"
FIXED_HOME = "/home/demo/.local/share/mavail"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?$")
CALLS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("session.hello", {}), ("models.status", {}), ("downloads.active", {}), ("health.status", {}),
    ("fallback.queue_list", {}), ("storage.info", {}), ("analytics.usage", {"period": "month", "include_series": True}),
    ("config.get", {"schema": True}), ("history.list", {"limit": 200}),
)
SYSTEM_SAMPLES = 12
LATER_S = 3600
"""The screens show the recording as an hour later: ages of an hour and more read in minutes, not seconds."""


def _walk(value: Any, leaf: Any) -> Any:
    if isinstance(value, dict):
        return {k: _walk(v, leaf) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, leaf) for v in value]
    return leaf(value)


def capture(path: Path = RECORDING, timeout_s: float = 90.0) -> None:
    """Run the demo until its first download is complete and record the answers of every tab."""
    from mavail.rpc.client import Client
    from mavail.tui.demo import AUTOSTART, Demo

    with Demo() as demo:
        with Client(demo.socket, timeout=10) as c:
            deadline = time.monotonic() + timeout_s
            while not c.call("models.status", model_id=AUTOSTART[0])["is_available"]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{AUTOSTART[0]} did not finish downloading in {timeout_s:g} s")
                time.sleep(0.5)
            recorded: dict[str, Any] = {"captured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
            recorded["answers"] = {m: c.call(m, **p) for m, p in CALLS}
            samples = []
            for _ in range(SYSTEM_SAMPLES):
                samples.append(c.call("system.info"))
                time.sleep(1.0)
            recorded["system.info"] = samples
        home = str(demo.home)

    def fix(v: Any) -> Any:
        return v.replace(home, FIXED_HOME) if isinstance(v, str) else v

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_walk(recorded, fix), indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _steady_ages(value: Any, captured: datetime, now: datetime) -> Any:
    def shift(v: Any) -> Any:
        if not (isinstance(v, str) and ISO.match(v)):
            return v
        t = datetime.fromisoformat(v.replace("Z", "+00:00"))
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        age = (captured - t).total_seconds()
        steady = (round(abs(age) / 60) * 60 + LATER_S + 30) * (1 if age >= 0 else -1)
        return (now - timedelta(seconds=steady)).strftime("%Y-%m-%dT%H:%M:%SZ")

    return _walk(value, shift)


def answers(path: Path = RECORDING) -> dict[str, Any]:
    """Canned answers for `StubLink`, by method (time stamps re-aged against the clock at each call)."""
    recorded = json.loads(path.read_text(encoding="utf-8"))
    captured = datetime.fromisoformat(recorded["captured_at"].replace("Z", "+00:00"))
    out: dict[str, Any] = {}
    for method, answer in recorded["answers"].items():
        out[method] = lambda _a=answer, **_: _steady_ages(_a, captured, datetime.now(timezone.utc))
    samples = recorded["system.info"]
    state = {"next": 0}

    def system_info(**_: Any) -> dict[str, Any]:
        i = min(state["next"], len(samples) - 1)
        state["next"] += 1
        return samples[i]

    out["system.info"] = system_info
    return out


if __name__ == "__main__":
    capture()
    print(f"recorded {RECORDING}")
