"""Words and figures a person reads in the TUI, at 80x24 and 120x35, against a real engine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mavail.rpc.client import AsyncClient
from mavail.tui import format as fmt
from mavail.tui import words
from mavail.tui.app import create_app
from tests.helpers import install_files, model_toml, running_engine, synthetic_bytes
from tests.tui_helpers import screen_text, until

MIB = 1024 * 1024
SIZES = [(80, 24), (120, 35)]
RAW_BYTES = re.compile(r"\d{4,} bytes")


def test_plurals_sizes_and_engine_sentences():
    assert words.plural(1, "day") == "1 day" and words.plural(0, "day") == "0 days" and words.plural(3, "model") == "3 models"
    assert fmt.rate(0) == "0B/s" and fmt.rate(None) == "-" and fmt.rate(2.5) == "2.5M/s"
    assert words.readable("a.bin: 1 piece(s) of 8388608 bytes do not match (8388608 bytes)") == "a.bin: 1 piece of 8.0M do not match (8.0M)"
    issue = {"type": "changed_bytes", "severity": "critical", "file": "a.bin", "recommendation": "integrity_fix",
             "message": "a.bin: 1 piece(s) of 8388608 bytes do not match (8388608 bytes)",
             "details": {"broken_pieces": [3], "broken_bytes": 8388608, "piece_size": 8388608}}
    assert words.issue_sentence(issue) == "a.bin: 1 piece of 8.0M does not match (8.0M to fetch again)"
    assert words.issue_label(issue) == "1 broken piece"
    assert words.advice([issue], {"mavail.repair": "R"}) == ["press R to repair the broken piece of a.bin"]
    assert words.advice([issue], {"mavail.repair": "F9"}) == ["press F9 to repair the broken piece of a.bin"]


def health_home(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("[downloads]\npiece_size_mb = 1\n[health]\nscheduler_tick_s = 3600\n")
    data = [("model.bin", synthetic_bytes("ti2v", 3 * MIB))]
    (home / "catalog.toml").write_text("".join(model_toml(m, data) for m in ("wan2.2-ti2v-5b", "wan2.2-t2v-a14b", "ltx-video-2b")))
    install_files(home, "ltx-video-2b", data)
    return install_files(home, "wan2.2-ti2v-5b", data)


@pytest.mark.parametrize("size", SIZES)
async def test_health_tab_words_before_and_after_a_check_finds_a_broken_piece(home: Path, size: tuple[int, int]):
    d = health_home(home)
    async with running_engine(home) as (engine, sock):
        app = create_app(sock, keymap={})
        app.animation_level = "none"  # tab switches without the underline animation
        async with app.run_test(size=size) as pilot:
            await pilot.press("3")
            pane = app.pane("health")
            await until(pilot, lambda: pane.loaded and "wan2.2-t2v-a14b" in screen_text(app))
            text = screen_text(app)
            assert "no model checked yet" in text and "1.00" not in text and "score" not in text
            row = next(line for line in text.splitlines() if "wan2.2-t2v-a14b" in line)
            assert "missing" in row and "not checked" not in row  # not installed: nothing to check
            async with AsyncClient(sock) as c:
                await c.call("health.check", model_id="wan2.2-ti2v-5b")  # records the pieces of the hand-copied files
                with open(d / "model.bin", "r+b") as fh:
                    fh.seek(2 * MIB + 5)
                    fh.write(b"\x00\x01")
                res = await c.call("health.check", model_id="wan2.2-ti2v-5b", check_type="full")
                assert res["result"]["overall_health"] == "corrupted"
            await pilot.press("f5")
            await until(pilot, lambda: str(pane.table.cell("wan2.2-ti2v-5b", "health")) == "corrupted")
            assert pane.table.select("wan2.2-ti2v-5b")
            await until(pilot, lambda: "press R to repair the broken piece of model.bin" in screen_text(app))
            text = screen_text(app)
            row = next(line for line in text.splitlines() if "wan2.2-ti2v-5b" in line)
            assert "corrupted" in row and "1 broken piece" in row, row
            assert "model.bin: 1 piece of 1.0M does not match" in text
            assert "health.repair" not in text and not RAW_BYTES.search(text) and "piece(s)" not in text
            assert "score 0." in text or "score 1." in text  # a figure only once one was measured


@pytest.mark.parametrize("size", SIZES)
async def test_models_downloads_and_update_words_with_a_finished_a_failed_and_a_missing_model(home: Path, size: tuple[int, int]):
    from mavail.testing.mirror import Mirror, Synthetic

    with Mirror() as mirror:
        mirror.default_faults.throttle_bps = 8 * MIB
        home.mkdir(parents=True)
        good = mirror.add_model("wan2.2-ti2v-5b", {"model.safetensors": Synthetic("ti2v", 2 * MIB)})
        (home / "catalog.toml").write_text(good + model_toml("hunyuanvideo", [("m.bin", b"x" * 1000)])
                                           + model_toml("cogvideox-5b", [("m.bin", b"y" * 1000)]))
        (home / "config.toml").write_text("[storage]\nmin_free_gb = 0.0\n[downloads]\nmax_retries = 0\nretry_base_s = 0.01\n")
        async with running_engine(home) as (engine, sock):
            app = create_app(sock, keymap={})
            app.animation_level = "none"  # tab switches without the underline animation
            async with app.run_test(size=size) as pilot:
                models = app.pane("models")
                await until(pilot, lambda: models.loaded and "3 models · 3 missing · nothing on disk yet" in screen_text(app))
                async with AsyncClient(sock) as c:
                    await c.call("downloads.start", model_id="wan2.2-ti2v-5b")
                    await c.call("downloads.start", model_id="hunyuanvideo")
                await until(pilot, lambda: str(models.table.cell("wan2.2-ti2v-5b", "status")) == "available", timeout=15)
                # the summary follows the finished download: the model's bytes are on disk
                await until(pilot, lambda: "1 available" in screen_text(app) and "2.0M on disk" in screen_text(app), timeout=10)
                await until(pilot, lambda: "3 models · 1 available · 1 missing · 1 failed" in screen_text(app))
                row = next(line for line in screen_text(app).splitlines() if "wan2.2-ti2v-5b" in line)
                assert "available" in row, row  # the status column grew with the word
                await pilot.press("2")
                dl = app.pane("downloads")
                await until(pilot, lambda: dl.loaded and str(dl.table.cell("hunyuanvideo", "status")) == "failed", timeout=15)
                await until(pilot, lambda: "1 failed" in screen_text(app))
                assert "availab " not in screen_text(app)
                text = screen_text(app)
                assert "active" not in text.splitlines()[3], text  # a failed download is not counted as active
                assert re.search(r"\b0/s\b", text) is None
                await pilot.press("1")
                assert models.table.select("cogvideox-5b")
                await pilot.press("u")
                await until(pilot, lambda: "cogvideox-5b is not installed: press enter to download it" in screen_text(app))
                assert "from ?" not in screen_text(app)


@pytest.mark.parametrize("size", [(80, 60), (120, 35)])
async def test_help_shows_every_key_description_and_binding_id_uncut(home: Path, size: tuple[int, int]):
    from mavail.tui.actions import ACTIONS
    from mavail.tui.screens.help import HelpScreen

    home.mkdir(parents=True)
    (home / "catalog.toml").write_text(model_toml("m", [("a.bin", b"x" * 100)]))
    async with running_engine(home) as (engine, sock):
        app = create_app(sock, keymap={"mavail.pause": "P"})
        app.animation_level = "none"  # tab switches without the underline animation
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: app.pane("models").loaded)
            await pilot.press("question_mark")
            await until(pilot, lambda: isinstance(app.screen, HelpScreen) and "mavail.pause" in screen_text(app))
            seen = ""
            for _ in range(6):  # page through the list
                seen += screen_text(app) + "\n"
                await pilot.press("pagedown")
                await pilot.pause(0.05)
            seen += screen_text(app)
            flat = " ".join(seen.replace("│", " ").replace("█", " ").split())
            for a in ACTIONS:
                assert a.id in seen, a.id  # each binding id in full, on screen
                words_of = a.description.split()
                assert all(w in flat for w in words_of), a.description  # wrapped, never cut
            assert '[keys]' in seen and '"mavail.pause" = "P"' in seen
            rows = [line for line in seen.splitlines() if "mavail.priority_" in line]
            assert any(" + " in r and "priority_up" in r for r in rows) and any(" - " in r and "priority_down" in r for r in rows)
            assert any(" P " in line and "mavail.pause" in line for line in seen.splitlines())  # the remapped key


@pytest.mark.parametrize("size", SIZES)
async def test_footer_shows_the_tabs_keys_and_titles_show_filter_and_sort(home: Path, size: tuple[int, int]):
    home.mkdir(parents=True)
    (home / "catalog.toml").write_text("".join(model_toml(m, [("a.bin", b"x" * 100)]) for m in
                                               ("wan2.2-ti2v-5b", "wan2.2-t2v-a14b", "ltx-video-2b")))
    async with running_engine(home) as (engine, sock):
        app = create_app(sock, keymap={})
        app.animation_level = "none"  # tab switches without the underline animation
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: app.pane("models").loaded and "3 models" in screen_text(app))
            footer = screen_text(app).splitlines()[-1]
            assert "Get" in footer and "Pause" not in footer and "Clean" not in footer, footer
            await pilot.press("3")
            await until(pilot, lambda: "Repair" in screen_text(app).splitlines()[-1])
            assert "Pause" not in screen_text(app).splitlines()[-1]
            await pilot.press("2")
            await until(pilot, lambda: "Pause" in screen_text(app).splitlines()[-1])
            await pilot.press("1", "slash", "w", "a", "n", "enter")
            await until(pilot, lambda: "Models /wan" in screen_text(app) and "2 of 3 models match /wan" in screen_text(app))
            await pilot.press("s", "s")
            await until(pilot, lambda: "Models /wan ↓Model" in screen_text(app))
            await pilot.press("s")
            await until(pilot, lambda: "Models /wan ↑Status" in screen_text(app))
            await pilot.press("escape")
            await until(pilot, lambda: "Models ↑Status" in screen_text(app) and "3 models" in screen_text(app))


@pytest.mark.parametrize("size", SIZES)
async def test_usage_shows_thirty_days_as_thirty_columns(home: Path, size: tuple[int, int]):
    import time as _time

    home.mkdir(parents=True)
    (home / "catalog.toml").write_text(model_toml("wan2.2-ti2v-5b", [("a.bin", b"x" * 100)]))
    now = _time.time()
    midnight = now - now % 86400
    events = [{"model_id": "wan2.2-ti2v-5b", "generation_time_s": 90.0, "success": True,
               "timestamp": _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(midnight - day * 86400 + 3600 + k))}
              for day in range(1, 30) for k in range(day % 4)]  # 0..3 uses a day, none today
    async with running_engine(home) as (engine, sock):
        async with AsyncClient(sock) as c:
            await c.call("analytics.record_batch", events=events)
        app = create_app(sock, keymap={})
        app.animation_level = "none"  # tab switches without the underline animation
        async with app.run_test(size=size) as pilot:
            await pilot.press("6")
            pane = app.pane("usage")
            await until(pilot, lambda: pane.loaded and "wan2.2-ti2v-5b" in pane.table.keys())
            cell = str(pane.table.cell("wan2.2-ti2v-5b", "trend"))
            assert len(cell) == 30 and "█" in cell
            days = [d["uses"] for d in pane.table.raw("wan2.2-ti2v-5b")["last_30_days_usage"]][-30:]
            assert [cell[i] == "▁" for i in range(30)] == [d == 0 for d in days]  # every day its own column
            assert cell in screen_text(app)


async def test_system_tab_draws_the_last_minutes_and_says_no_nvidia_gpu_cleanly(home: Path):
    home.mkdir(parents=True)
    (home / "catalog.toml").write_text(model_toml("m", [("a.bin", b"x" * 100)]))
    async with running_engine(home) as (engine, sock):
        app = create_app(sock, keymap={})
        app.animation_level = "none"
        async with app.run_test(size=SIZES[0]) as pilot:
            await pilot.press("7")
            pane = app.pane("system")
            await until(pilot, lambda: pane.history.samples >= 3, timeout=15)
            for size in SIZES:
                await pilot.resize_terminal(*size)
                spark_w = size[0] - 2 - 14 - 34
                await until(pilot, lambda: any(len(line.rstrip()) > spark_w + 40 for line in screen_text(app).splitlines()
                                               if line.strip().startswith("CPU")) or size[0] == 80)
                text = screen_text(app)
                for label in ("CPU", "Memory", "Disk read", "Disk write", "Net receive", "Net send", "Models disk"):
                    assert label in text, label
                cpu_line = next(line for line in text.splitlines() if line.strip().startswith("CPU"))
                assert sum(1 for ch in cpu_line if ch in "▁▂▃▄▅▆▇█") >= 2, cpu_line  # a bar per sample
                assert len(cpu_line.rstrip()) <= size[0]
                read_line = next(line for line in text.splitlines() if "Disk read" in line)
                assert re.search(r"\d(B|K|M|G)/s", read_line), read_line  # a rate with its unit
                info = await engine.system_info()
                if not info["gpus"]:  # this machine: no NVIDIA GPU
                    assert "no NVIDIA GPU: " in " ".join(text.split()) and "NVMLError" not in text and "Traceback" not in text
                    assert not pane.table.display


def test_gpu_rows_from_a_system_info_answer():
    from mavail.tui.widgets.system import SystemHistory, gpu_cells, gpu_note

    g = {"index": 0, "name": "NVIDIA H200", "total_mb": 143771.0, "used_mb": 71885.5, "free_mb": 71885.5, "utilization_percent": 87.0}
    info = {"cpu": {"percent": 10.0}, "memory": {"percent": 40.0}, "gpus": [g], "sampled_monotonic_s": 1.0}
    h = SystemHistory()
    for used, util in ((10_000.0, 0.0), (71885.5, 87.0)):
        h.add({**info, "gpus": [{**g, "used_mb": used, "utilization_percent": util}]})
    cells = gpu_cells(g, h.values("gpu0.vram", 16), h.values("gpu0.util", 16))
    assert cells[1] == "NVIDIA H200" and "70.2G/140G" in str(cells[2]) and str(cells[4]) == "87%"
    assert str(cells[3]).strip() and str(cells[5]).endswith("▇")
    assert str(gpu_note(info)).startswith("1 NVIDIA GPU through NVML")
    assert str(gpu_note({"gpus": [], "gpu_error": "NVML unavailable: NVMLError_LibraryNotFound: NVML Shared Library Not Found"})) \
        .startswith("no NVIDIA GPU: the NVIDIA driver library (NVML) is not installed")


@pytest.mark.parametrize("size", SIZES)
async def test_storage_shows_where_the_space_goes_against_the_disk_and_the_ceiling(home: Path, size: tuple[int, int]):
    home.mkdir(parents=True)
    big = [("w.bin", synthetic_bytes("big", 3 * MIB))]
    small = [("w.bin", synthetic_bytes("small", 1 * MIB))]
    (home / "catalog.toml").write_text(model_toml("wan2.2-t2v-a14b", big) + model_toml("ltx-video-2b", small))
    install_files(home, "wan2.2-t2v-a14b", big)
    install_files(home, "ltx-video-2b", small)
    (home / "config.toml").write_text("[storage]\nmax_gb = 0.01\nmin_free_gb = 0.0\n")
    async with running_engine(home) as (engine, sock):
        app = create_app(sock, keymap={})
        app.animation_level = "none"  # tab switches without the underline animation
        async with app.run_test(size=size) as pilot:
            await pilot.press("5")
            pane = app.pane("storage")
            await until(pilot, lambda: pane.loaded and "of max" in screen_text(app))
            text = screen_text(app)
            lines = text.splitlines()
            at = next(i for i, line in enumerate(lines) if line.strip().startswith("Disk"))
            disk = lines[at] + (lines[at + 1] if lines[at + 1].startswith("       ") else "")
            assert "models 4.0M" in disk and "free" in disk and "other" in disk and ("█" in disk or "░" in disk), disk
            tiers = next(line for line in text.splitlines() if line.strip().startswith("Models ") and "hot" in line)
            assert "hot" in tiers and "warm" in tiers and "cold" in tiers and "of max 10.2M" in tiers, tiers
            assert "2 models on disk" in text
            share = {k: str(pane.table.cell(k, "share")) for k in pane.table.keys()}
            big_pct = int(share["wan2.2-t2v-a14b"].split()[-1].rstrip("%"))
            small_pct = int(share["ltx-video-2b"].split()[-1].rstrip("%"))
            assert 70 <= big_pct <= 80 and 20 <= small_pct <= 30 and big_pct + small_pct in (99, 100, 101), share
            assert share["wan2.2-t2v-a14b"].count("█") > share["ltx-video-2b"].count("█")
            for line in text.splitlines()[:8]:
                assert len(line.rstrip()) <= size[0]


def test_message_board_one_message_per_action_whichever_comes_first():
    from mavail.tui.messages_line import MessageBoard

    t = [100.0]
    board = MessageBoard(lambda: None, clock=lambda: t[0])
    board.say("m: paused", model_id="m")
    t[0] += 0.3
    board.say("m: downloading → paused", model_id="m", follows=True)
    assert [n.text for n in board.log] == ["m: downloading → paused"]
    t[0] += 30
    board.say("n: queued → downloading", model_id="n", follows=True)  # before the action: not its consequence
    t[0] += 0.2
    board.begin("n")
    board.say("n: downloading → paused", model_id="n", follows=True)  # the event first, then the action's answer
    t[0] += 0.2
    board.say("n: paused", model_id="n")
    assert [n.text for n in board.log][1:] == ["n: queued → downloading", "n: downloading → paused"]
    t[0] += 30
    board.say("INVALID_STATE: cannot pause", "error", model_id="n")
    board.say("something else")
    assert [s for s, _ in board.lines()] == ["error", "information"]
    board.expire(board.info)
    assert board.lines() == [("error", "INVALID_STATE: cannot pause")]  # errors do not fade
    assert board.dismiss() and board.lines() == []
