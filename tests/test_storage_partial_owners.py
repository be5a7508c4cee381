"""Partial data a cleanup must not take: a download started after the dry run, the engine's own repair folders."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mavail.rpc.client import AsyncClient
from tests.helpers import model_toml, synthetic_bytes
from tests.test_analytics import DAY, FakeClock, clocked_engine


def _age(paths: list[Path], when: float) -> None:
    for p in paths:
        os.utime(p, (when, when))


def _plant(home: Path, rel: str, now: float) -> Path:
    p = home / "partial" / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(synthetic_bytes(rel, 5000))
    q, chain = p, []
    while q != home / "partial":
        chain.append(q)
        q = q.parent
    _age(chain, now - 30 * DAY)
    return p


async def test_a_download_started_after_the_dry_run_keeps_its_partial_data(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "catalog.toml").write_text(model_toml("m1", [("w.bin", b"x" * 10)]))
    now = time.time() + 60 * DAY
    part = _plant(home, "m1/1.0.0/w.bin.part", now)
    async with clocked_engine(home, FakeClock(now)) as (eng, sock), AsyncClient(sock) as c:
        dry = await c.call("storage.cleanup", dry_run=True)
        assert [i["path"] for i in dry["plan"]] == ["partial/m1"]
        eng.activity.acquire("m1", "downloading")  # its download starts now
        try:
            res = await c.call("storage.cleanup", plan_id=dry["plan_id"])
        finally:
            eng.activity.release("m1", "downloading")
        assert res["partial_removed"] == [] and "m1" in res["models_preserved"], res
        assert part.exists()


async def test_the_engines_own_partial_folders_cannot_be_a_model_id_and_stay_while_a_repair_runs(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "catalog.toml").write_text(model_toml("redownload", [("w.bin", b"x" * 10)]) + model_toml("repair", [("w.bin", b"y" * 10)])
                                       + model_toml("m2", [("w.bin", b"z" * 10)]))
    now = time.time() + 60 * DAY
    async with clocked_engine(home, FakeClock(now)) as (eng, sock), AsyncClient(sock) as c:
        for d in (eng.health.redownload_dir, eng.health.repair_dir):
            assert d.parent == home / "partial" and d.name not in eng.catalog.models and d.name.startswith((".", "_")), d
        data = _plant(home, f"{eng.health.redownload_dir.name}/k/data", now)
        eng.activity.acquire("m2", "repairing")
        try:
            info = await c.call("storage.info")
            parts = {p["name"]: p["orphaned"] for p in info["partial_downloads"]["entries"]}
            assert parts == {eng.health.redownload_dir.name: False}, parts
            dry = await c.call("storage.cleanup", dry_run=True)
            assert dry["plan"] == [], dry["plan"]
        finally:
            eng.activity.release("m2", "repairing")
        assert data.exists()


async def test_repair_folders_of_earlier_versions_move_to_their_new_names_unless_a_model_has_that_id(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "catalog.toml").write_text(model_toml("repair", [("w.bin", b"y" * 10)]))
    (home / "partial" / "redownload" / "k").mkdir(parents=True)
    (home / "partial" / "redownload" / "k" / "data").write_bytes(b"fetched")
    (home / "partial" / "repair" / "1.0.0").mkdir(parents=True)  # the partial data of the model "repair"
    async with clocked_engine(home, FakeClock(time.time())) as (_eng, _sock):
        assert (home / "partial" / ".redownload" / "k" / "data").read_bytes() == b"fetched"
        assert not (home / "partial" / "redownload").exists()
        assert (home / "partial" / "repair" / "1.0.0").is_dir() and not (home / "partial" / ".repair").exists()
