"""Pilot tests of the TUI against a real engine on a temporary socket."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path


from tests.helpers import install_files, model_toml, running_engine, start_engine_process, synthetic_bytes
from tests.tui_helpers import screen_text, until
from mavail.tui.app import create_app
from mavail.tui.screens.edit import EditSettingScreen


def write_catalog(home: Path, ids: list[str]) -> list[tuple[str, bytes]]:
    home.mkdir(parents=True, exist_ok=True)
    data = [("model.bin", synthetic_bytes("x", 4096))]
    (home / "catalog.toml").write_text("".join(model_toml(m, data) for m in ids))
    return data


async def test_models_and_settings_against_a_real_engine(home: Path):
    data = write_catalog(home, ["wan2.2-ti2v-5b", "wan2.2-t2v-a14b"])
    install_files(home, "wan2.2-ti2v-5b", data)
    async with running_engine(home) as (engine, sock):
        app = create_app(sock, keymap={})
        async with app.run_test(size=(80, 24)) as pilot:
            # one condition over one render: a read between two renders can catch the table mid-update
            await until(pilot, lambda: all(w in screen_text(app) for w in ("wan2.2-t2v-a14b", "wan2.2-ti2v-5b", "available", "missing", "connected")))
            # Settings: a bad value shows the engine's message, a good one is saved through config.update
            await pilot.press("8")
            await until(pilot, lambda: app.pane("settings").loaded)
            table = app.pane("settings").table
            assert table is not None and table.select("downloads.max_concurrent")
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, EditSettingScreen))
            await pilot.press("ctrl+a", "ctrl+k", "9", "9", "9", "enter")
            await until(pilot, lambda: "INVALID_PARAMS" in screen_text(app))
            assert "at most 64" in screen_text(app)
            assert engine.config.get("downloads.max_concurrent") == 3
            await pilot.press("ctrl+a", "ctrl+k", "5", "enter")
            await until(pilot, lambda: engine.config.get("downloads.max_concurrent") == 5)
            await until(pilot, lambda: table.cell("downloads.max_concurrent", "value") == "5")


async def test_engine_killed_shows_disconnected_and_reconnects(home: Path):
    write_catalog(home, ["m1"])
    sock = home.parent / "e.sock"
    proc = start_engine_process(home, sock)
    try:
        app = create_app(sock, keymap={}, min_backoff_s=0.05, max_backoff_s=0.3)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.pane("models").loaded)
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
            await until(pilot, lambda: "DISCONNECTED" in screen_text(app))
            assert "m1" in screen_text(app)  # the last data stays on screen, no crash
            proc = await asyncio.to_thread(start_engine_process, home, sock)
            await until(pilot, lambda: app.connected and "DISCONNECTED" not in screen_text(app), timeout=15)
            assert app.link.connections == 2
            before = app.pane("models").loads
            await pilot.press("f5")
            await until(pilot, lambda: app.pane("models").loads > before)
    finally:
        proc.kill()
        proc.wait(10)


async def test_health_tab_and_h_runs_a_real_check(home: Path):
    data = write_catalog(home, ["wan2.2-ti2v-5b"])
    install_files(home, "wan2.2-ti2v-5b", data)  # copied in by hand: never verified
    async with running_engine(home) as (engine, sock):
        app = create_app(sock, keymap={})
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("3")
            pane = app.pane("health")
            await until(pilot, lambda: pane.loaded and pane.table is not None and "wan2.2-ti2v-5b" in pane.table.keys())
            assert pane.table.select("wan2.2-ti2v-5b")
            await pilot.press("h")
            await until(pilot, lambda: any("health check healthy" in n.text for n in app.board.log), timeout=15)
            await until(pilot, lambda: str(pane.table.cell("wan2.2-ti2v-5b", "health")) == "healthy")


async def test_engine_with_a_token(home: Path, monkeypatch):
    write_catalog(home, ["m1"])
    (home / "config.toml").write_text('[rpc]\ntoken = "s3cret"\n')
    async with running_engine(home) as (engine, sock):
        app = create_app(sock, keymap={}, min_backoff_s=0.05, max_backoff_s=0.2)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: "UNAUTHORIZED" in screen_text(app) and "DISCONNECTED" in screen_text(app))
        monkeypatch.setenv("MAVAIL_RPC_TOKEN", "s3cret")
        app = create_app(sock, keymap={})
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: "m1" in screen_text(app) and app.connected)
