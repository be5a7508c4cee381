"""Pilot tests of the TUI against a real engine with real downloads and queued requests."""

from __future__ import annotations

import re
from pathlib import Path

from mavail.rpc.client import AsyncClient
from tests.helpers import running_engine
from tests.tui_helpers import screen_text, until
from mavail.tui.app import create_app


async def test_download_progresses_in_the_table_and_p_r_pause_and_resume(home: Path):
    from mavail.testing.mirror import MIB, Mirror, Synthetic

    with Mirror() as mirror:
        mirror.default_faults.throttle_bps = 1024 * 1024
        home.mkdir(parents=True)
        (home / "catalog.toml").write_text(mirror.add_model("wan2.2-ti2v-5b", {"model.safetensors": Synthetic("ti2v", 24 * MIB)}))
        (home / "config.toml").write_text('[storage]\nmin_free_gb = 0.0\n[downloads]\nretry_base_s = 0.05\n')
        async with running_engine(home) as (engine, sock):
            app = create_app(sock, keymap={})
            async with app.run_test(size=(80, 24)) as pilot:
                # ready when the Models table holds the row (what the screen shows is asserted below)
                await until(pilot, lambda: app.pane("models").loaded and "wan2.2-ti2v-5b" in app.pane("models").table.keys())
                await pilot.press("enter")  # download the selected model
                await pilot.press("2")
                table = app.pane("downloads").table
                assert table is not None
                seen: set[str] = set()

                def progressing() -> bool:
                    cell = table.cell("wan2.2-ti2v-5b", "bytes")
                    if cell is not None and not str(cell).startswith("0B/"):
                        seen.add(str(cell))
                    return len(seen) >= 2

                await until(pilot, progressing, timeout=20)
                assert "downloading" in screen_text(app) and "%" in screen_text(app)
                async with AsyncClient(sock) as c:
                    assert table.select("wan2.2-ti2v-5b")
                    await pilot.press("p")
                    await until(pilot, lambda: engine.downloads.progress("wan2.2-ti2v-5b")["status"] == "paused")
                    assert (await c.call("downloads.progress", model_id="wan2.2-ti2v-5b"))["status"] == "paused"
                    await until(pilot, lambda: str(table.cell("wan2.2-ti2v-5b", "status")) == "paused")
                    await pilot.press("r")
                    await until(pilot, lambda: engine.downloads.progress("wan2.2-ti2v-5b")["status"] in ("queued", "downloading"))
                    assert (await c.call("downloads.progress", model_id="wan2.2-ti2v-5b"))["status"] in ("queued", "downloading")
                    await until(pilot, lambda: str(table.cell("wan2.2-ti2v-5b", "status")) == "downloading")


async def test_queue_tab_shows_a_waiting_request_and_c_cancels_it_after_yes(home: Path):
    from mavail.testing.mirror import MIB, Mirror, Synthetic
    from mavail.tui.screens.confirm import ConfirmScreen

    with Mirror() as mirror:
        mirror.default_faults.throttle_bps = 64 * 1024  # the model stays "not ready" for the whole test
        home.mkdir(parents=True)
        (home / "catalog.toml").write_text(mirror.add_model("wan2.2-t2v-a14b", {"model.safetensors": Synthetic("t2v", 8 * MIB)}))
        (home / "config.toml").write_text('[storage]\nmin_free_gb = 0.0\n')
        async with running_engine(home) as (engine, sock):
            async with AsyncClient(sock) as c:
                q = await c.call("fallback.queue", model_id="wan2.2-t2v-a14b", request={"prompt": "a red fox"})
                app = create_app(sock, keymap={})
                async with app.run_test(size=(80, 24)) as pilot:
                    await pilot.press("4")
                    pane = app.pane("queue")
                    await until(pilot, lambda: pane.table is not None and q["queue_id"] in pane.table.keys())
                    assert "wan2.2-t2v-a14b" in screen_text(app)
                    await pilot.press("c")
                    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
                    await pilot.press("n")
                    await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
                    assert (await c.call("fallback.queue_list"))["total"] == 1
                    await pilot.press("c")
                    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
                    await pilot.press("y")
                    await until(pilot, lambda: q["queue_id"] not in pane.table.keys())
                    assert (await c.call("fallback.queue_list"))["total"] == 0


async def test_x_shows_the_plan_and_deletes_nothing_until_confirmed(home: Path):
    import os
    import time

    from tests.helpers import install_files, model_toml, synthetic_bytes
    from mavail.tui.screens.confirm import ConfirmScreen

    home.mkdir(parents=True)
    data = [("model.safetensors", synthetic_bytes("old", 64 * 1024))]
    (home / "catalog.toml").write_text(model_toml("old-model", data) + model_toml("new-model", data))
    old_dir = install_files(home, "old-model", data)
    new_dir = install_files(home, "new-model", data)
    long_ago = time.time() - 90 * 86400
    for p in (old_dir / "model.safetensors", old_dir, old_dir.parent):
        os.utime(p, (long_ago, long_ago))
    async with running_engine(home) as (engine, sock):
        app = create_app(sock, keymap={})
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("5")
            await until(pilot, lambda: app.pane("storage").loaded)
            # the line under the table announces what x then plans
            await until(pilot, lambda: "a cleanup would remove 1 item (old-model)" in screen_text(app))
            await pilot.press("x")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), timeout=15)
            plan = app.screen.body  # type: ignore[attr-defined]
            assert "models/old-model" in plan and "Nothing has been deleted yet" in plan and "models/new-model" not in plan
            assert "models/old-model" in screen_text(app)
            assert (old_dir / "model.safetensors").exists()
            await pilot.press("n")
            await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
            assert (old_dir / "model.safetensors").exists() and (new_dir / "model.safetensors").exists()
            await pilot.press("x")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), timeout=15)
            await pilot.press("y")
            await until(pilot, lambda: not (old_dir / "model.safetensors").exists(), timeout=15)
            assert (new_dir / "model.safetensors").exists()
            await until(pilot, lambda: any("Cleanup removed 1 item" in n.text for n in app.board.log))


async def test_one_message_per_action_merged_with_its_event_errors_stay_and_nothing_covers_the_detail_line(home: Path):
    from mavail.testing.mirror import MIB, Mirror, Synthetic

    with Mirror() as mirror:
        mirror.default_faults.throttle_bps = 512 * 1024
        home.mkdir(parents=True)
        (home / "catalog.toml").write_text(mirror.add_model("hunyuanvideo", {"model.safetensors": Synthetic("hy", 16 * MIB)}))
        (home / "config.toml").write_text('[storage]\nmin_free_gb = 0.0\n')
        async with running_engine(home) as (engine, sock):
            app = create_app(sock, keymap={})
            app.info_timeout_s = 0.5
            async with app.run_test(size=(80, 24)) as pilot:
                async with AsyncClient(sock) as c:
                    await c.call("downloads.start", model_id="hunyuanvideo")
                await pilot.press("2")
                table = app.pane("downloads").table
                await until(pilot, lambda: str(table.cell("hunyuanvideo", "status")) == "downloading", timeout=15)
                assert table.select("hunyuanvideo")
                await until(pilot, lambda: any("queued → downloading" in n.text for n in app.board.log))
                before = len(app.board.log)
                await pilot.press("p")
                await until(pilot, lambda: any("downloading → paused" in n.text for n in app.board.log[before:]))
                await pilot.pause(0.3)  # let any late event about the pause arrive
                mine = [n.text for n in app.board.log[before:]]
                assert mine == ["hunyuanvideo: downloading → paused"], mine  # one message: the action merged with its event
                assert not app._notifications  # no pop-up ever covers the tables
                lines = screen_text(app).splitlines()
                assert any("hunyuanvideo: " in line and "retries" in line for line in lines), "\n".join(lines)  # the detail line
                async with AsyncClient(sock) as c:
                    await c.call("downloads.cancel", model_id="hunyuanvideo")
                await pilot.press("1")
                assert app.pane("models").table.select("hunyuanvideo")
                await pilot.press("p")  # no download to pause any more: the engine refuses
                await until(pilot, lambda: app.board.error is not None)
                assert app.board.error.text == "INVALID_STATE: cannot pause a download that is cancelled"
                error = app.board.error.text
                await until(pilot, lambda: error in screen_text(app) and "esc dismisses" in screen_text(app))
                app.notify("something else happened")
                await until(pilot, lambda: "something else happened" in screen_text(app))
                await until(pilot, lambda: "something else happened" not in screen_text(app))  # information fades
                assert error in screen_text(app)  # the error stays until read
                await pilot.press("escape")
                await until(pilot, lambda: error not in screen_text(app))


async def test_history_tab_shows_what_finished_before_the_engine_restarted(home: Path):
    from mavail.testing.mirror import MIB, Mirror, Synthetic
    from tests.helpers import model_toml, wait_until

    with Mirror() as mirror:
        home.mkdir(parents=True)
        good = mirror.add_model("wan2.2-ti2v-5b", {"model.safetensors": Synthetic("ti2v", 2 * MIB)})
        (home / "catalog.toml").write_text(good + model_toml("hunyuanvideo", [("m.bin", b"x" * 1000)]))
        (home / "config.toml").write_text('[storage]\nmin_free_gb = 0.0\n[downloads]\nmax_retries = 0\n')
        async with running_engine(home) as (engine, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="wan2.2-ti2v-5b")
            await c.call("downloads.start", model_id="hunyuanvideo")
            await wait_until(lambda: engine.downloads.progress("wan2.2-ti2v-5b")["status"] == "completed", timeout=15)
            await wait_until(lambda: engine.downloads.progress("hunyuanvideo")["status"] == "failed", timeout=15)
            await c.call("health.check", model_id="wan2.2-ti2v-5b", check_type="full")
        async with running_engine(home) as (engine, sock):
            for size in ((80, 24), (120, 35)):
                app = create_app(sock, keymap={})
                async with app.run_test(size=size) as pilot:
                    await pilot.press("9")
                    pane = app.pane("history")
                    await until(pilot, lambda: pane.loaded and len(pane.table.keys()) >= 3)
                    text = screen_text(app)
                    assert re.search(r"2 finished downloads · \d+ checks? · 0 repairs · 1 failed", text), text
                    rows = [line for line in text.splitlines() if "wan2.2-ti2v-5b" in line or "hunyuanvideo" in line]
                    assert any("download" in r and "completed" in r and "2.0M" in r for r in rows), rows
                    assert any("check" in r and "completed" in r and "healthy" in r for r in rows), rows
                    assert any("download" in r and "failed" in r and "m.bin: cannot…" in r for r in rows), rows
                    key = next(k for k in pane.table.keys() if k.startswith("hunyuanvideo/"))
                    assert pane.table.select(key)
                    await until(pilot, lambda: "hunyuanvideo 1.0.0: download failed" in screen_text(app)
                                and "m.bin: cannot connect to 127.0.0.1:" in " ".join(screen_text(app).split()))
                    assert "downloaded" not in screen_text(app)  # a failed download's size is not what it fetched


async def test_downloads_draw_measured_speed_per_download_and_a_chart_with_the_limit(home: Path):
    from mavail.testing.mirror import MIB, Mirror, Synthetic

    with Mirror() as mirror:
        mirror.default_faults.throttle_bps = 1024 * 1024
        home.mkdir(parents=True)
        (home / "catalog.toml").write_text(mirror.add_model("wan2.2-i2v-a14b", {"model.safetensors": Synthetic("i2v", 40 * MIB)}))
        (home / "config.toml").write_text('[storage]\nmin_free_gb = 0.0\n[downloads]\nparallel_min_size_mb = 1024.0\n')
        async with running_engine(home) as (engine, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="wan2.2-i2v-a14b")
            app = create_app(sock, keymap={})
            app.animation_level = "none"
            async with app.run_test(size=(80, 24)) as pilot:
                await pilot.press("2")
                pane = app.pane("downloads")
                await until(pilot, lambda: pane.loaded and pane.table.select("wan2.2-i2v-a14b"))
                # bars appear as bytes arrive: at least three measured seconds at about 1 MiB/s
                await until(pilot, lambda: sum(1 for v in pane._trend("wan2.2-i2v-a14b") if v > 0.3) >= 3, timeout=15)
                for size, trend_col in (((80, 24), "trend"), ((120, 35), "trend_wide")):
                    await pilot.resize_terminal(*size)
                    await until(pilot, lambda: pane.table.select("wan2.2-i2v-a14b")
                                and str(pane.table.cell("wan2.2-i2v-a14b", trend_col)) in screen_text(app))
                    cell = str(pane.table.cell("wan2.2-i2v-a14b", trend_col))
                    assert any(ch in cell for ch in "▂▃▄▅▆▇█"), cell
                    text = screen_text(app)
                    assert "speed, last " in text and "limit" not in text
                    assert "Quit" in text.splitlines()[-1]  # the footer fits
                    assert "M/s" in text and "of 40.0M" in text
                await c.call("downloads.set_limit", model_id="wan2.2-i2v-a14b", bandwidth_limit_mbps=4)
                pane.reload()
                await until(pilot, lambda: "limit 4.0M/s" in screen_text(app) and "╌" in screen_text(app))
