"""One TUI over several engines: every engine's rows with their engine, actions on the right engine, a lost engine marked."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

from mavail.rpc.cli import build_parser, main, tui_engines
from mavail.rpc.client import AsyncClient
from mavail.testing.mirror import MIB, Mirror, Synthetic
from mavail.tui.app import create_app
from mavail.tui.fleet import EngineSpec, Fleet, Slot
from tests.helpers import install_files, model_toml, running_engine, start_engine_process, synthetic_bytes
from tests.tui_helpers import StubLink, screen_text, until


def two_homes(root: Path) -> tuple[Path, Path]:
    a, b = root / "a", root / "b"
    for h in (a, b):
        h.mkdir(parents=True)
        (h / "config.toml").write_text("[storage]\nmin_free_gb = 0.0\n")
    return a, b


# --- which engines -----------------------------------------------------------
def test_repeated_socket_flags_give_one_engine_each(tmp_path: Path):
    args = build_parser().parse_args(["tui", "--socket", "/run/a.sock", "--socket", "/tmp/gpu2.sock", "--token", "t"])
    assert args.socket == ["/run/a.sock", "/tmp/gpu2.sock"]
    assert tui_engines(args) == [EngineSpec(Path("/run/a.sock"), token="t"), EngineSpec(Path("/tmp/gpu2.sock"), token="t")]
    one = build_parser().parse_args(["tui", "--socket", "/run/a.sock", "--config", str(tmp_path / "absent.toml")])
    assert tui_engines(one) == [EngineSpec(Path("/run/a.sock"))]


def test_the_engines_list_of_tui_toml_and_its_errors(tmp_path: Path, capsys):
    cfg = tmp_path / "tui.toml"
    cfg.write_text('[[engines]]\nname = "local"\nsocket = "/run/user/1000/mavail/engine.sock"\n\n'
                   '[[engines]]\nname = "gpu2"\nsocket = "/tmp/gpu2.sock"\ntoken = "s3cret"\n')
    args = build_parser().parse_args(["tui", "--config", str(cfg)])
    assert tui_engines(args) == [EngineSpec(Path("/run/user/1000/mavail/engine.sock"), "local"),
                                 EngineSpec(Path("/tmp/gpu2.sock"), "gpu2", "s3cret")]
    # flags win over the file; no flag and no file: the one default socket, as before
    assert [s.socket for s in tui_engines(build_parser().parse_args(["tui", "--config", str(cfg), "--socket", "/x.sock"]))] == [Path("/x.sock")]
    home = tmp_path / "h"
    alone = tui_engines(build_parser().parse_args(["tui", "--home", str(home), "--config", str(tmp_path / "none.toml")]))
    assert len(alone) == 1 and alone[0].name == ""
    cfg.write_text('[[engines]]\nname = "gpu2"\n')
    assert main(["tui", "--config", str(cfg)]) == 1
    assert "engines entry 1 needs a socket" in capsys.readouterr().err
    assert main(["tui", "--socket", "/a.sock", "--socket", "/a.sock"]) == 1
    assert "given twice" in capsys.readouterr().err


def test_the_engine_column_names_a_host_only_when_it_tells_engines_apart():
    def stub(host: str | None) -> StubLink:
        link = StubLink({})
        link.host = host  # type: ignore[attr-defined]
        link.connected = True
        return link

    fleet = Fleet([Slot(EngineSpec(Path("/tmp/a.sock")), stub("gpu1")), Slot(EngineSpec(Path("/tmp/b.sock")), stub("gpu2")),
                   Slot(EngineSpec(Path("/tmp/c.sock"), "farm"), stub("gpu2"))])
    assert [fleet.display(i) for i in range(3)] == ["gpu1", "gpu2", "farm"]
    fleet.slots[0].link.host = "gpu2"
    assert [fleet.display(i) for i in range(3)] == ["/tmp/a.sock", "/tmp/b.sock", "farm"]
    assert str(fleet.cells(0, ("m", "ok"), width=8)[1]) == "…/a.sock"  # a path keeps its end
    fleet.slots[2].spec = EngineSpec(Path("/tmp/c.sock"), "render-farm")
    assert str(fleet.cells(2, ("m", "ok"), width=8)[1]) == "render-…"
    fleet.slots[2].link.connected = False
    assert str(fleet.cells(2, ("m", "ok"), width=8)[1]) == "✖ rende…"  # an unreachable engine is marked
    assert fleet.key(1, "m") == "m@1" and fleet.owner("m@1") == 1 and fleet.owner("m") == 0
    single = Fleet([Slot(EngineSpec(Path("/tmp/a.sock")), stub("gpu1"))])
    assert single.key(0, "m") == "m" and single.columns([]) == []  # one engine: today's rows and columns


# --- live, two real engines ----------------------------------------------------
async def test_both_engines_models_appear_with_their_engine(home: Path):
    a, b = two_homes(home.parent)
    data = [("model.bin", synthetic_bytes("x", 4096))]
    (a / "catalog.toml").write_text(model_toml("only-on-a", data) + model_toml("shared", data))
    (b / "catalog.toml").write_text(model_toml("only-on-b", data) + model_toml("shared", data))
    install_files(b, "shared", data)
    async with running_engine(a) as (_, sock_a), running_engine(b) as (_, sock_b):
        app = create_app(keymap={}, engines=[EngineSpec(sock_a, "alpha"), EngineSpec(sock_b, "beta")])
        async with app.run_test(size=(120, 35)) as pilot:
            table = app.pane("models").table
            assert table is not None
            await until(pilot, lambda: app.pane("models").loaded and len(table.keys()) == 4)
            assert sorted(table.keys()) == ["only-on-a@0", "only-on-b@1", "shared@0", "shared@1"]
            assert [str(table.cell(k, "engine")) for k in ("only-on-a@0", "shared@0", "shared@1", "only-on-b@1")] == \
                ["alpha", "alpha", "beta", "beta"]
            # the same model is missing on one engine and available on the other
            assert str(table.cell("shared@0", "status")) == "missing" and str(table.cell("shared@1", "status")) == "available"
            await until(pilot, lambda: all(w in screen_text(app) for w in ("Engine", "alpha", "beta", "only-on-b", "2 engines connected")))
            assert f"on {socket.gethostname()}" in screen_text(app)  # each engine's host, from session.hello
            assert "Health (alpha)" not in screen_text(app)
            await pilot.press("3")
            await until(pilot, lambda: "Health (alpha)" in screen_text(app))  # a tab showing one engine says which


async def test_p_pauses_the_download_on_the_engine_of_the_selected_row_only(home: Path):
    a, b = two_homes(home.parent)
    with Mirror() as mirror:
        mirror.default_faults.throttle_bps = 512 * 1024  # both downloads run for the whole test
        catalog = mirror.add_model("wan2.2-ti2v-5b", {"model.safetensors": Synthetic("ti2v", 32 * MIB)})
        for h in (a, b):
            (h / "catalog.toml").write_text(catalog)
        async with running_engine(a) as (ea, sock_a), running_engine(b) as (eb, sock_b):
            app = create_app(keymap={}, engines=[EngineSpec(sock_a), EngineSpec(sock_b)])
            async with app.run_test(size=(120, 35)) as pilot, AsyncClient(sock_a) as ca, AsyncClient(sock_b) as cb:
                for c in (ca, cb):
                    await c.call("downloads.start", model_id="wan2.2-ti2v-5b")
                await pilot.press("2")
                table = app.pane("downloads").table
                assert table is not None
                await until(pilot, lambda: all(str(table.cell(f"wan2.2-ti2v-5b@{i}", "status")) == "downloading" for i in (0, 1)),
                            timeout=15)
                assert table.select("wan2.2-ti2v-5b@1")
                await pilot.press("p")
                await until(pilot, lambda: eb.downloads.progress("wan2.2-ti2v-5b")["status"] == "paused")
                assert (await cb.call("downloads.progress", model_id="wan2.2-ti2v-5b"))["status"] == "paused"
                assert (await ca.call("downloads.progress", model_id="wan2.2-ti2v-5b"))["status"] == "downloading"
                await until(pilot, lambda: str(table.cell("wan2.2-ti2v-5b@1", "status")) == "paused")
                assert str(table.cell("wan2.2-ti2v-5b@0", "status")) == "downloading"
                # and resume goes to the same engine
                await pilot.press("r")
                await until(pilot, lambda: eb.downloads.progress("wan2.2-ti2v-5b")["status"] in ("queued", "downloading"))
                assert ea.downloads.progress("wan2.2-ti2v-5b")["status"] == "downloading"


async def test_a_stopped_engine_is_marked_and_the_other_stays_live(home: Path):
    a, b = two_homes(home.parent)
    with Mirror() as mirror:
        catalog = mirror.add_model("small", {"model.safetensors": Synthetic("s", 256 * 1024)})
        (a / "catalog.toml").write_text(catalog)
        (b / "catalog.toml").write_text(catalog)
        sock_b = home.parent / "b.sock"
        proc = await asyncio.to_thread(start_engine_process, b, sock_b)
        try:
            async with running_engine(a) as (_, sock_a):
                app = create_app(keymap={}, engines=[EngineSpec(sock_a, "alpha"), EngineSpec(sock_b, "beta")],
                                 min_backoff_s=0.05, max_backoff_s=0.3)
                async with app.run_test(size=(120, 35)) as pilot:
                    table = app.pane("models").table
                    assert table is not None
                    await until(pilot, lambda: sorted(table.keys()) == ["small@0", "small@1"])
                    proc.send_signal(signal.SIGKILL)
                    await asyncio.to_thread(proc.wait, 10)
                    await until(pilot, lambda: "beta DISCONNECTED" in screen_text(app))
                    assert "1 of 2 connected" in screen_text(app) and "alpha DISCONNECTED" not in screen_text(app)
                    assert str(table.cell("small@1", "engine")) == "✖ beta" and str(table.cell("small@0", "engine")) == "alpha"
                    assert app.connected and app.fleet.slots[0].link.connected
                    # alpha's rows still follow its events: a download there shows up
                    async with AsyncClient(sock_a) as c:
                        await c.call("downloads.start", model_id="small")
                    await until(pilot, lambda: str(table.cell("small@0", "status")) == "available", timeout=15)
                    assert "small@1" in table.keys()  # beta's last rows stay, marked
                    # an action on beta's row says beta is unreachable instead of reaching alpha
                    assert table.select("small@1")
                    await pilot.press("h")
                    await until(pilot, lambda: "DISCONNECTED: beta cannot be reached" in screen_text(app))
                    proc = await asyncio.to_thread(start_engine_process, b, sock_b)
                    await until(pilot, lambda: "2 engines connected" in screen_text(app), timeout=15)
                    await until(pilot, lambda: str(table.cell("small@1", "engine")) == "beta")
                    assert app.fleet.slots[1].link.connections == 2
        finally:
            proc.kill()
            proc.wait(10)


async def test_one_engine_has_no_engine_column(home: Path):
    data = [("model.bin", synthetic_bytes("x", 4096))]
    home.mkdir(parents=True)
    (home / "catalog.toml").write_text(model_toml("m1", data))
    async with running_engine(home) as (_, sock):
        app = create_app(keymap={}, engines=[EngineSpec(sock)])
        async with app.run_test(size=(120, 35)) as pilot:
            table = app.pane("models").table
            await until(pilot, lambda: table is not None and table.keys() == ["m1"])
            assert [c.key for c in table.spec][:2] == ["id", "status"]
            assert "Engine" not in screen_text(app) and "Health (" not in screen_text(app)
