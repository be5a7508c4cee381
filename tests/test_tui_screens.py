"""Every tab of the demo (real engine, real mirrors, downloads running) at 80x24 and 120x35, dark and light:
the screen text has none of the wording or layout defects people reported."""

from __future__ import annotations

import re

from mavail.tui.actions import TABS
from mavail.tui.app import create_app
from mavail.tui.demo import Demo
from tests.tui_helpers import screen_text, until

BAD = {
    "a plural left to the reader": re.compile(r"\w\(s\)"),
    "a raw byte count": re.compile(r"\b\d{4,} bytes\b"),
    "a rate without its unit": re.compile(r"(?<![\w.])0/s\b"),
    "a wrong plural": re.compile(r"\b1 (days|models|items|requests|checks|repairs|downloads|pieces|files|issues)\b|\b0 days\b"),
    "a method name": re.compile(r"\b(health|downloads|models|storage)\.(repair|check|start|pause|update|cleanup)\b"),
    "an unknown version": re.compile(r"from \? to"),
    "a toast": re.compile(r"^\s*▌"),
}


def defects(text: str) -> list[str]:
    return [f"{what}: {m.group(0)!r} in {line!r}" for line in text.splitlines() for what, rx in BAD.items() if (m := rx.search(line))]


async def test_every_tab_of_the_demo_reads_right_at_80x24_dark_and_120x35_light():
    with Demo(throttle_mbps=2.0) as demo:
        app = create_app(demo.socket, keymap={})
        app.animation_level = "none"
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.pane("models").loaded and "downloading" in screen_text(app), timeout=20)
            for size, theme in (((80, 24), "textual-dark"), ((120, 35), "textual-light")):
                await pilot.resize_terminal(*size)
                app.theme = theme
                for i, name in enumerate(TABS, 1):
                    await pilot.press(str(i))
                    pane = app.pane(name)
                    await until(pilot, lambda: pane.loaded, timeout=15)
                    await pilot.pause(0.1)
                    text = screen_text(app)
                    lines = text.splitlines()
                    assert len(lines) == size[1] and not defects(text), (name, defects(text), text)
                    assert all(len(line) <= size[0] for line in lines)
                    assert "History" in lines[1], lines[1]  # every tab's name fits
                    assert "? help · ctrl+p commands" in lines[0], lines[0]  # the keys fit; a long socket path is cut
                    assert lines[0].rstrip().endswith(("…", ".sock")), lines[0]  # cut with an ellipsis, never wrapped away
                    assert "Quit" in lines[-1] and "Help" in lines[-1], lines[-1]  # the footer fits
                await pilot.press("question_mark")
                await until(pilot, lambda: "Binding id" in screen_text(app))
                assert not defects(screen_text(app))
                await pilot.press("escape")
