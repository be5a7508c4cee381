"""TUI widgets with a stub engine link: live tables by key, unavailable tabs, filter, sort, errors, keys, confirm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mavail.rpc.client import CallTimeout, EngineUnavailable, RpcError
from mavail.tui import format as fmt
from mavail.tui.app import MavailApp, load_keymap
from mavail.tui.client import error_text
from mavail.tui.screens.confirm import ConfirmScreen
from mavail.tui.widgets.live_table import LiveTable

from tests.tui_helpers import StubLink, screen_text, until


def status(mid: str, st: str = "missing", **kw: Any) -> dict[str, Any]:
    return {"model_id": mid, "availability_status": st, "version": "1.0.0", "size_bytes": 1 << 30, **kw}


def make_app(answers: dict[str, Any], methods: set[str] | None = None, **kw: Any) -> tuple[MavailApp, StubLink]:
    link = StubLink(answers, methods)
    app = MavailApp(link=link, keymap=kw.pop("keymap", {}), drain_interval_s=0.01, **kw)
    link.app = app
    return app, link


def models_answer(*statuses: dict[str, Any]) -> dict[str, Any]:
    counts = {f"{st}_models": sum(1 for s in statuses if s["availability_status"] == st)
              for st in ("available", "downloading", "queued", "missing", "corrupted")}
    return {"models": {s["model_id"]: s for s in statuses}, "summary": {"total_models": len(statuses), **counts}}


async def test_models_table_updates_rows_by_key_without_refill():
    state = {"rows": [status("a"), status("b", "available"), status("c")]}
    app, link = make_app({"models.status": lambda **p: models_answer(*state["rows"]) if not p else status(p["model_id"], "downloading")})
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.pane("models")
        await until(pilot, lambda: pane.loaded)
        table = pane.table
        assert table is not None and table.keys() == ["a", "b", "c"]
        table.move_cursor(row=2)
        # a resync where one row changed, one is gone and one is new
        state["rows"] = [status("a", "available"), status("c"), status("d")]
        before = pane.loads
        pane.reload()
        await until(pilot, lambda: pane.loads > before)
        assert [str(k.value) for k in table.rows] == ["a", "c", "d"]
        assert str(table.cell("a", "status")) == "available"
        assert table.updates >= 1
        assert table.selected_key == "c"  # the cursor stayed on its row: nothing was cleared
        # a live event updates the cell at once, then the model is refetched by id
        link.push("model_availability_change", model_id="c", old_status="missing", new_status="queued")
        await until(pilot, lambda: str(table.cell("c", "status")) in ("queued", "downloading"))
        await until(pilot, lambda: ("models.status", {"model_id": "c"}) in link.calls)


async def test_progress_events_supersede_and_update_downloads_row():
    active = {"active_downloads": [{"model_id": "m", "status": "downloading", "progress_percent": 10.0, "priority": "normal",
                                    "downloaded_bytes": 10, "total_bytes": 100, "speed_mbps": 1.0, "eta_seconds": 9}],
              "total_active": 1}
    app, link = make_app({"models.status": models_answer(status("m", "downloading")), "downloads.active": active,
                          "downloads.progress": {}})
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.pane("downloads")
        await until(pilot, lambda: pane.loaded)
        for pct in (20.0, 30.0, 40.0, 55.0):
            link.push("model_download_progress", model_id="m", status="downloading", progress_percent=pct)
        assert len(app._inbox) == 1  # the newest progress event replaced the pending ones
        await until(pilot, lambda: "55%" in str(pane.table.cell("m", "progress")))
        await pilot.press("2")
        await until(pilot, lambda: "55%" in screen_text(app))


async def test_tab_without_engine_methods_says_not_available():
    app, _ = make_app({"models.status": models_answer(status("a"))})
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.pane("models").loaded)
        for key, name, method in (("3", "Health", "health.status"), ("4", "Queue", "fallback.queue_list"),
                                  ("5", "Storage", "storage.info"), ("6", "Usage", "analytics.usage")):
            await pilot.press(key)
            await until(pilot, lambda: "not available from this engine" in screen_text(app))
            text = screen_text(app)
            assert f"{name} is not available" in text and method in text


async def test_filter_and_sort_keep_every_row_in_the_source():
    rows = [status("wan2.2-t2v-a14b", size_bytes=3), status("wan2.2-i2v-a14b", size_bytes=1), status("ltx-video", size_bytes=2)]
    app, _ = make_app({"models.status": models_answer(*rows)})
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.pane("models")
        await until(pilot, lambda: pane.loaded)
        await pilot.press("slash")
        for ch in "wan":
            await pilot.press(ch)
        table = pane.table
        assert table is not None
        await until(pilot, lambda: table.row_count == 2)
        await pilot.press("escape")
        await until(pilot, lambda: table.row_count == 3)
        await pilot.press("s")  # by id
        assert [str(k.value) for k in sorted(table.rows, key=table.get_row_index)][0] == "ltx-video"
        await pilot.press("s", "s")  # id descending, then status
        await pilot.press("s", "s", "s")  # status desc, version asc, version desc
        await pilot.press("s")  # size ascending
        order = [str(k.value) for k in sorted(table.rows, key=table.get_row_index)]
        assert order == ["wan2.2-i2v-a14b", "ltx-video", "wan2.2-t2v-a14b"]


async def test_engine_errors_show_the_contract_message():
    err = RpcError(-32002, "a download of 'm' is already running", {"code": "CONFLICT", "details": {"model_id": "m"}})
    app, link = make_app({"models.status": models_answer(status("m")), "downloads.start": err})
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.pane("models").loaded)
        await pilot.press("enter")
        await until(pilot, lambda: any("CONFLICT: a download of 'm' is already running" in n.text for n in app.board.log))
        assert ("downloads.start", {"model_id": "m"}) in link.calls


async def test_destructive_action_asks_and_does_nothing_on_no():
    app, link = make_app({"models.status": models_answer(status("m", "downloading")), "downloads.cancel": {"success": True}})
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.pane("models").loaded)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Cancel the download of m?" in screen_text(app)
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        assert not any(m == "downloads.cancel" for m, _ in link.calls)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: ("downloads.cancel", {"model_id": "m", "keep_partial": False}) in link.calls)


async def test_remapped_key_help_palette_and_light_theme():
    app, link = make_app({"models.status": models_answer(status("m", "downloading")), "downloads.pause": {"message": "paused"}},
                         keymap={"mavail.pause": "P"})
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.pane("models").loaded)
        await pilot.press("p")
        await pilot.pause()
        assert not any(m == "downloads.pause" for m, _ in link.calls)
        await pilot.press("P")
        await until(pilot, lambda: any(m == "downloads.pause" for m, _ in link.calls))
        await pilot.press("question_mark")
        await until(pilot, lambda: "mavail.pause" in screen_text(app))
        await pilot.press("escape")
        await pilot.press("t")
        assert app.theme == "textual-light"
        await pilot.press("ctrl+p")
        for ch in "resume":
            await pilot.press(ch)
        await until(pilot, lambda: "Resume the selected" in screen_text(app))


def test_keymap_file(tmp_path: Path):
    p = tmp_path / "keymap.toml"
    p.write_text('[keys]\n"mavail.pause" = "P"\n"nope" = "z"\n')
    keys, error = load_keymap(p)
    assert keys == {"mavail.pause": "P"} and error and "nope" in error
    assert load_keymap(tmp_path / "missing.toml") == ({}, None)


def test_error_text_and_formatting():
    assert error_text(RpcError(-32602, "max_concurrent must be at most 64", {"code": "INVALID_PARAMS", "details": {"field": "downloads.max_concurrent"}})) \
        == "INVALID_PARAMS: max_concurrent must be at most 64 [downloads.max_concurrent]"
    assert error_text(EngineUnavailable("x")).startswith("DISCONNECTED")
    assert error_text(CallTimeout("x")).startswith("TIMEOUT")
    assert fmt.size(1536 * 1024 * 1024) == "1.5G" and fmt.duration(185) == "3m05s" and fmt.bar(0.5, 4) == "██░░"
    assert fmt.sparkline([0, 1, 2]) == "▁▅█"


async def test_live_table_direct():
    from textual.app import App, ComposeResult

    from mavail.tui.widgets.live_table import Column

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield LiveTable([Column("id", "Id"), Column("v", "V", sort=lambda r: r["v"])])

    async with One().run_test(size=(40, 10)) as pilot:
        t = pilot.app.query_one(LiveTable)
        t.sync({k: ((k, str(v)), {"v": v}) for k, v in (("a", 3), ("b", 1))})
        t.upsert("a", ("a", "4"), {"v": 4})
        assert t.updates == 1 and t.cell("a", "v") == "4"
        t.upsert("a", ("a", "4"), {"v": 4})
        assert t.updates == 1  # unchanged cells are not touched
        t.remove("b")
        assert t.keys() == ["a"] and t.row_count == 1
        # cells are shown as they are, never read as markup or emoji codes
        t.sync({"org/[beta]:ok:": (("org/[beta]:ok:", "[b]1[/b] :smile:"), {"v": 1})})
        await pilot.pause()
        assert "org/[beta]:ok:  [b]1[/b] :smile:" in screen_text(pilot.app)


async def test_rows_drawn_before_a_column_widens_are_drawn_again_at_the_new_width():
    from textual.app import App, ComposeResult
    from textual.geometry import Region

    from mavail.tui.widgets.live_table import Column

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield LiveTable([Column("id", "Model"), Column("status", "Status")])

    async with One().run_test(size=(60, 10)) as pilot:
        t = pilot.app.query_one(LiveTable)
        await pilot.pause()
        # the rows arrive and the screen draws them before the table has measured its columns (the table measures when
        # its queue is idle; the screen draws on its own timer, which may come first): the cursor row is drawn at the
        # widths of the headers
        t.sync({f"bench-model-{i}": ((f"bench-model-{i}", "missing"), {}) for i in range(3)})
        t.render_lines(Region(0, 0, t.size.width, t.size.height))
        await until(pilot, lambda: t.columns["id"].content_width == len("bench-model-0"))
        await pilot.pause()
        lines = screen_text(pilot.app).splitlines()
        assert "bench-model-0  missing" in lines[1], lines[:4]
        # a cell that outgrows its column, drawn before the column is measured again
        t.upsert("bench-model-0", ("bench-model-0", "downloading"), {})
        t.render_lines(Region(0, 0, t.size.width, t.size.height))
        await until(pilot, lambda: t.columns["status"].content_width == len("downloading"))
        await pilot.pause()
        lines = screen_text(pilot.app).splitlines()
        assert "bench-model-0  downloading" in lines[1], lines[:4]
        assert "bench-model-1  missing" in lines[2], lines[:4]


class CountingTable(LiveTable):
    """A LiveTable that counts the cells drawn for it (where a cell is drawn: LiveTable._draw_cell, else
    DataTable._render_cell)."""

    drawn = 0


@pytest.fixture
def counted_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    from textual.widgets import DataTable

    draw, draw_text = DataTable._render_cell, LiveTable._draw_cell

    def counting(self: Any, row_index: int, *args: Any, **kw: Any) -> Any:
        if isinstance(self, CountingTable) and row_index >= 0:  # a row's cell, not the header's
            CountingTable.drawn += 1
        return draw(self, row_index, *args, **kw)

    def counting_text(self: Any, *args: Any) -> Any:
        lines = draw_text(self, *args)
        if lines is not None and isinstance(self, CountingTable):
            CountingTable.drawn += 1
        return lines

    monkeypatch.setattr(DataTable, "_render_cell", counting)
    monkeypatch.setattr(LiveTable, "_draw_cell", counting_text)


async def test_a_changed_cell_draws_its_row_only_and_a_tab_shown_again_draws_nothing_it_drew(counted_cells: None):
    from textual.app import App, ComposeResult
    from textual.containers import Vertical

    from mavail.tui.widgets.live_table import Column

    class Two(App[None]):
        CSS = "#b { display: none; } Screen.-alert LiveTable > .datatable--cursor { background: #ff0000; }"

        def compose(self) -> ComposeResult:
            with Vertical(id="a"):
                yield CountingTable([Column("id", "Model"), Column("status", "Status"), Column("prog", "Prog")], id="t")
            with Vertical(id="b"):
                yield LiveTable([Column("id", "Other")], id="u")

    async with Two().run_test(size=(60, 20)) as pilot:
        t = pilot.app.query_one("#t", CountingTable)
        t.sync({f"m{i:04d}": ((f"m{i:04d}", "missing", ""), {}) for i in range(1000)})
        t.focus()
        await until(pilot, lambda: "m0017" in screen_text(pilot.app))
        await pilot.pause()
        assert CountingTable.drawn > 0
        CountingTable.drawn = 0
        t.upsert("m0003", ("m0003", "queued", "4%"), {})  # no column grows (that draws every row again)
        await until(pilot, lambda: "m0003  queued   4%" in screen_text(pilot.app))
        assert 1 <= CountingTable.drawn <= 3, CountingTable.drawn  # that row's cells, not the 18 rows on screen
        # another "tab" shown and this one shown again (the table is resized and loses and gets focus back)
        pilot.app.query_one("#a").display = False
        pilot.app.query_one("#b").display = True
        pilot.app.query_one("#u", LiveTable).focus()
        await pilot.pause()
        CountingTable.drawn = 0
        pilot.app.query_one("#b").display = False
        pilot.app.query_one("#a").display = True
        t.focus()
        await until(pilot, lambda: "m0003  queued   4%" in screen_text(pilot.app) and t.has_focus)
        await pilot.pause()
        assert CountingTable.drawn == 0, CountingTable.drawn
        # styles that change only the cursor's colours (kept out of what DataTable keys its drawn cells by) draw it again
        pilot.app.screen.add_class("-alert")
        await pilot.pause()
        cursor_row = pilot.app.screen._compositor.render_strips()[1]
        assert "m0000" in cursor_row.text
        assert {str(seg.style.bgcolor.name) for seg in cursor_row if seg.style and seg.style.bgcolor and seg.text.strip()} == {"#ff0000"}


async def test_a_sort_draws_no_cell_again_and_a_click_selects_the_row_it_lands_on(counted_cells: None):
    from textual.app import App, ComposeResult

    from mavail.tui.widgets.live_table import Column

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield CountingTable([Column("id", "Model"), Column("n", "N", sort=lambda r: r["n"])])

    async with One().run_test(size=(40, 12)) as pilot:
        t = pilot.app.query_one(CountingTable)
        t.sync({f"m{i}": ((f"m{i}", str(9 - i)), {"n": 9 - i}) for i in range(10)})
        await until(pilot, lambda: "m9" in screen_text(pilot.app))
        await pilot.pause()
        CountingTable.drawn = 0
        t.cycle_sort()  # by id: the order it had
        t.cycle_sort()  # by id, descending
        t.cycle_sort()  # by N, ascending: m9 first
        await until(pilot, lambda: screen_text(pilot.app).splitlines()[1].startswith(" m9 "))
        await pilot.pause()
        assert CountingTable.drawn <= 4, CountingTable.drawn  # the cursor's row in its new place, not all ten
        lines = screen_text(pilot.app).splitlines()
        for y in (3, 6):
            await pilot.click(CountingTable, offset=(2, y))
            await pilot.pause()
            assert t.selected_key == lines[y].split()[0], (y, t.selected_key, lines[y])


async def test_a_table_scrollbar_is_drawn_in_whole_cells_never_as_block_glyphs():
    from textual.app import App, ComposeResult

    from mavail.tui.widgets.live_table import Column

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield LiveTable([Column("id", "Setting"), Column("v", "Value")])

    async with One().run_test(size=(40, 12)) as pilot:
        t = pilot.app.query_one(LiveTable)
        t.sync({f"setting.{i:02d}": ((f"setting.{i:02d}", str(i)), {}) for i in range(47)})
        await until(pilot, lambda: t.show_vertical_scrollbar)
        for row in range(0, 47, 3):
            t.move_cursor(row=row)
            await pilot.pause()
            strips = pilot.app.screen._compositor.render_strips()
            edge = ["".join(s.text for s in strip)[-2:] for strip in strips[1:]]
            # a thumb whose ends fall inside a cell used to end in eighth blocks (▂▂ beside a row), read as a chart
            assert all(cell == "  " for cell in edge), (row, edge)
            styles = {str(strip.crop(38, 40)._segments[0].style) for strip in strips[1:]}
            assert len(styles) >= 2, styles  # the thumb is still drawn, in its colour beside the track's


async def test_every_settings_row_says_what_it_means_in_full_at_80_columns():
    from mavail.core.config import Config

    config = Config(None, environ={})
    answer = {"settings": config.as_nested(), "schema": config.describe()}
    app, link = make_app({"models.status": models_answer(), "config.update": {},
                          "config.get": lambda **p: answer if p.get("schema") else answer["settings"]})
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("8")
        pane = app.pane("settings")
        await until(pilot, lambda: pane.loaded)
        table = pane.table
        assert table is not None and set(table.keys()) == set(answer["schema"]) - {"rpc.token"}
        assert ("config.get", {"schema": True}) in link.calls  # the meanings are the engine's, not the TUI's own
        shown: dict[str, str] = {}
        for row in [*range(0, table.row_count, 5), table.row_count - 1]:  # the rows scroll past, the scrollbar drawn
            table.move_cursor(row=row)
            await pilot.pause()
            for line in screen_text(app).splitlines():
                words = line.split()
                if words and words[0] in answer["schema"]:
                    shown[words[0]] = line
        assert set(shown) == set(table.keys())
        for key, line in shown.items():
            meaning = answer["schema"][key]["short"]
            assert meaning and str(table.cell(key, "doc")) == meaning, key
            assert f" {meaning} " in line + " ", (key, line)  # in full, not cut at the column's edge


async def test_cleanup_shows_the_dry_run_plan_and_deletes_only_after_yes():
    def cleanup(**p: Any) -> dict[str, Any]:
        if p.get("dry_run"):
            return {"plan_id": "plan_1", "planned_savings_gb": 12.5, "models_preserved": ["wan2.2-ti2v-5b"],
                    "plan": [{"kind": "model", "model_id": m, "path": f"models/{m}", "size_bytes": 1 << 30, "reason": "unused 45 days"}
                             for m in ("old-a", "old-b")]}
        return {"models_removed": ["old-a", "old-b"], "space_freed_gb": 12.5}

    app, link = make_app({"models.status": models_answer(status("old-a", "available")), "storage.cleanup": cleanup})
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.pane("models").loaded)
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        text = screen_text(app)
        assert "models/old-a" in text and "models/old-b" in text and "12.5G" in text and "Nothing has been deleted yet" in text
        assert [p for m, p in link.calls if m == "storage.cleanup"] == [{"cleanup_type": "auto", "dry_run": True}]
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        assert all(p.get("dry_run") for m, p in link.calls if m == "storage.cleanup")
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: ("storage.cleanup", {"plan_id": "plan_1", "dry_run": False}) in link.calls)


async def test_health_alerts_and_availability_changes_become_notifications():
    app, link = make_app({"models.status": models_answer(status("m", "downloading"))})
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.pane("models").loaded)
        link.push("model_health_alert", model_id="m", alert_type="corruption_detected", severity="warning",
                  message="3 pieces do not match their sha256")
        link.push("model_availability_change", model_id="m", old_status="downloading", new_status="available")
        await until(pilot, lambda: len(app.board.log) >= 2)
        texts = [(n.text, n.severity) for n in app.board.log]
        assert ("Health alert: m: 3 pieces do not match their sha256", "warning") in texts
        assert any("m: downloading → available" in t for t, _ in texts)
        await until(pilot, lambda: str(app.pane("models").table.cell("m", "status")) == "available")


async def test_models_summary_follows_live_changes():
    rows = [status("a"), status("b", "available")]
    app, link = make_app({"models.status": lambda **p: models_answer(*rows) if not p else status(p["model_id"], "available")})
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.pane("models")
        await until(pilot, lambda: pane.loaded)
        await until(pilot, lambda: "2 models · 1 available · 1 missing" in screen_text(app))
        rows[0] = status("a", "available")
        link.push("model_availability_change", model_id="a", old_status="missing", new_status="available")
        await until(pilot, lambda: "2 models · 2 available" in screen_text(app) and "missing" not in screen_text(app))


async def test_health_tab_shows_unchecked_models_as_not_checked():
    """Null scores (never checked, missing, removed) read "not checked" / "–", never a number, and nothing crashes on them."""
    from mavail.tui.widgets.health import health_cells
    from mavail.tui.widgets.models import health_cell

    unchecked = {"model_id": "m", "overall_health": "unknown", "integrity_score": None, "performance_score": None, "last_check": None,
                 "issues": None}
    cells = health_cells(unchecked)
    assert str(cells[2]) == "not checked" and str(cells[3]) == "–"
    assert str(health_cell(status("m", "available", integrity_score=None, verified=False, last_health_check="2026-01-01T00:00:00Z"))) == "unchecked"
    answer = {"models": {"m": unchecked, "ok": {"overall_health": "healthy", "integrity_score": 1.0, "performance_score": None,
                                                "last_check": None, "issues": []}},
              "system_health": {"overall_score": None, "checked_models": 0, "healthy_models": 0, "degraded_models": 0,
                                "corrupted_models": 0, "last_system_check": None}}
    app, _ = make_app({"models.status": models_answer(status("m")), "health.status": answer})
    async with app.run_test(size=(100, 24)) as pilot:
        await pilot.press("3")
        pane = app.pane("health")
        await until(pilot, lambda: pane.loaded)
        assert str(pane.table.cell("m", "integrity")) == "not checked" and str(pane.table.cell("ok", "integrity")) == "1.00"
        pane.table.cycle_sort()
        pane.table.cycle_sort()
        pane.table.cycle_sort()  # by integrity, nulls last
        await until(pilot, lambda: "no model checked yet" in screen_text(app))


async def test_downloads_show_the_current_files_retries_against_the_per_file_limit():
    row = {"model_id": "m", "status": "downloading", "progress_percent": 10.0, "priority": "normal", "downloaded_bytes": 10,
           "total_bytes": 100, "speed_mbps": 1.0, "eta_seconds": 9, "retry_count": 2, "max_retries": 8,
           "total_retries": 30, "current_file": "w.bin"}
    app, link = make_app({"models.status": models_answer(status("m", "downloading")),
                          "downloads.active": {"active_downloads": [row], "total_active": 1}, "downloads.progress": {}})
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.pane("downloads")
        await until(pilot, lambda: pane.loaded)
        assert str(pane.table.cell("m", "retries")) == "2/8"
        await pilot.press("2")
        await until(pilot, lambda: "2/8 retries on w.bin" in screen_text(app) and "30 in all" in screen_text(app))
        link.push("model_download_progress", model_id="m", status="downloading", progress_percent=20.0, retry_count=3,
                  max_retries=8, total_retries=31)
        await until(pilot, lambda: str(pane.table.cell("m", "retries")) == "3/8")


async def test_the_theme_in_use_follows_a_theme_change_and_a_theme_registered_again():
    from textual.theme import Theme

    app, _ = make_app({"models.status": models_answer()})
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.current_theme.name == app.theme
        app.theme = "textual-light"
        await pilot.pause()
        assert app.current_theme.name == "textual-light" and not app.current_theme.dark
        mine = Theme("textual-light", primary="#ff0000", dark=False)
        app.register_theme(mine)
        assert app.current_theme is mine


async def test_a_full_models_load_leaves_what_is_alive_out_of_the_collectors_full_passes():
    import gc

    link = StubLink({"models.status": models_answer(status("a"), status("b"))})
    app = MavailApp(link=link, keymap={}, settle_gc=True)
    link.app = app
    gc.unfreeze()
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.pane("models").loaded)
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # this test process runs many apps: their garbage must stay collectable
    app2, _ = make_app({"models.status": models_answer(status("a"))})
    async with app2.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app2.pane("models").loaded)
        assert gc.get_freeze_count() == 0  # only the TUI's own process (run_tui) asks for it


async def test_cells_drawn_by_the_table_are_the_segments_datatable_draws():
    from rich.segment import Segment
    from rich.text import Text
    from textual.app import App, ComposeResult
    from textual.widgets import DataTable

    from mavail.tui.widgets.live_table import Column

    cells = [
        "plain", Text("styled", style="bold cyan"), Text.assemble(("two", "red"), " ", ("spans", "on blue")),
        "a\ttab", "cut at the column width, well past it", "漢字と😀 wide", "", Text("ellipsis here and more", overflow="ellipsis"),
        Text("right", justify="right"), Text("wraps at spaces, not cut", no_wrap=False), Text("on red", style="on red"),
        Text("first line\nsecond line"),
    ]

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield LiveTable([Column("id", "Id"), Column("v", "Value", width=14), Column("w", "Wide")])

    async with One().run_test(size=(70, 20)) as pilot:
        t = pilot.app.query_one(LiveTable)
        t.sync({f"r{i}": ((f"r{i}", c, c), {}) for i, c in enumerate(cells)})
        await pilot.pause()
        t.hover_coordinate = t.hover_coordinate.__class__(3, 1)
        for row in range(len(cells)):
            for column in (1, 2):
                width = t.ordered_columns[column].get_render_width(t)
                for cursor, hover in ((False, False), (True, False), (False, True)):
                    ours = t._draw_cell(row, column, t.rich_style, width, cursor, hover)
                    theirs = DataTable._render_cell(t, row, column, t.rich_style, width, cursor, hover)
                    assert ours is not None
                    assert [list(Segment.simplify(line)) for line in ours] == [list(Segment.simplify(line)) for line in theirs], \
                        (cells[row], column, cursor, hover)
