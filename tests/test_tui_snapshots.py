"""Pictures of every tab on the demo's data at 80x24 and 120x35, dark and light: a change of layout shows as an
image diff against the SVGs in tests/__snapshots__/ (update them with `--snapshot-update` after an intended change).

The app runs on the demo's recorded engine answers (tests/tui_demo_answers.py), so each run draws the same screen;
the live samplers (download speeds, system figures) are paused and given fixed samples instead of the wall clock's.
The pilot tests (tests/test_tui_pilot.py, tests/test_tui_screens.py) keep driving the TUI against a real engine.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from mavail.tui import charts
from mavail.tui.actions import TABS
from mavail.tui.app import DARK_THEME, LIGHT_THEME, MavailApp
from mavail.tui.widgets.downloads import DownloadsPane
from mavail.tui.widgets.system import SystemHistory, SystemPane
from tests.tui_demo_answers import SYSTEM_SAMPLES, answers
from tests.tui_helpers import StubLink, until

SIZES = ((80, 24), (120, 35))
THEMES = (DARK_THEME, LIGHT_THEME)
SPEED_SAMPLES = 120


def demo_app() -> MavailApp:
    """The TUI on the demo's recorded answers, offering the methods the demo's engine offered."""
    canned = answers()
    hello = canned["session.hello"]()
    link = StubLink(canned, methods=set(hello["methods"]))
    link.engine_version = hello["engine_version"]
    app = MavailApp(link=link, keymap={})
    link.app = app
    app.animation_level = "none"
    return app


def canned_speeds(mbps: float, n: int = SPEED_SAMPLES) -> charts.Series:
    """A download's speed over the last `n` seconds: ramping up to its recorded speed, then a fixed wobble."""
    series = charts.Series(size=600)
    for i in range(n):
        ramp = min(1.0, (i + 1) / 8)
        series.add(mbps * ramp * (0.9 + 0.1 * math.sin(i / 3)))
    return series


async def reloads_done(pilot: Any, app: MavailApp) -> None:
    await until(pilot, lambda: not any(w.group == "reload" and not w.is_finished for w in app.workers))


async def fixed_samples(pilot: Any, app: MavailApp, tab: str) -> None:
    """Replace what the once-a-second samplers measured so far with fixed samples, and stop them."""
    pane = app.pane(tab)
    if isinstance(pane, DownloadsPane):
        pane.sampler.pause()
        await reloads_done(pilot, app)
        assert pane.table is not None
        pane.speeds = {}
        for key in pane.table.keys():
            raw = pane.table.raw(key) or {}
            if raw.get("status") == "downloading":
                pane.speeds[key] = (charts.ByteRate(), canned_speeds(float(raw.get("speed_mbps") or 0.0)))
        pane._sample()  # draws the rows and the chart; a fresh byte counter adds no sample to a running download
    elif isinstance(pane, SystemPane):
        pane.sampler.pause()
        await reloads_done(pilot, app)
        pane.history = SystemHistory()
        app.link.answers["system.info"] = answers()["system.info"]
        for _ in range(SYSTEM_SAMPLES):
            await pane.fetch()


@pytest.mark.parametrize("theme", THEMES, ids=("dark", "light"))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("tab", TABS)
def test_tab_picture(snap_compare: Any, tab: str, size: tuple[int, int], theme: str) -> None:
    app = demo_app()

    async def show_tab(pilot: Any) -> None:
        app.theme = theme
        await until(pilot, lambda: app.pane("models").loaded and app.pane("downloads").loaded)
        await pilot.press(str(TABS.index(tab) + 1))
        pane = app.pane(tab)
        await until(pilot, lambda: app.main.active_name() == tab and pane.loaded and pane.size.width > 0)
        # a tab fetched before it was laid out draws its charts at a guessed width: fetch it again at its own
        await reloads_done(pilot, app)
        loads = pane.loads
        pane.reload()
        await until(pilot, lambda: pane.loads > loads)
        await fixed_samples(pilot, app, tab)
        await reloads_done(pilot, app)

    assert snap_compare(app, terminal_size=size, run_before=show_tab)
