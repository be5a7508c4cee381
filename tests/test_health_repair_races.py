"""Repairs racing users and link swaps: a lease never lands between the check and the replace; chmod never follows a link."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from pathlib import Path

import pytest

import mavail.core.health.repair as repair_mod
from mavail.core import safefs
from mavail.rpc.client import AsyncClient, RpcError
from mavail.testing.mirror import Mirror
from tests.helpers import running_engine
from tests.test_health_repair import BIG, SMALL, setup


@pytest.fixture
def mirror():
    with Mirror() as m:
        yield m


async def test_no_lease_is_granted_while_a_redownload_replaces_the_file(home: Path, mirror: Mirror, monkeypatch: pytest.MonkeyPatch):
    d = setup(home, mirror)
    started, release = threading.Event(), threading.Event()
    real = safefs.replace

    def held_replace(h: Path, src: Path, dst: Path, create_parents: bool = False) -> None:
        if dst.name == "model.bin":
            started.set()
            assert release.wait(20)
        real(h, src, dst, create_parents)

    monkeypatch.setattr(safefs, "replace", held_replace)
    async with running_engine(home) as (_eng, sock), AsyncClient(sock) as c, AsyncClient(sock) as user:
        await c.call("health.check", model_id="m1")
        repair = asyncio.create_task(c.call("health.repair", model_id="m1", repair_type="redownload", force_repair=True))
        try:
            assert await asyncio.to_thread(started.wait, 20), "the redownload never reached its replace"
            with pytest.raises(RpcError) as ei:
                await user.call("models.acquire", model_id="m1")
            assert ei.value.name == "CONFLICT", ei.value.to_dict()
        finally:
            release.set()
        res = await repair
        assert res["success"], res
        lease = await user.call("models.acquire", model_id="m1")  # granted again once the replace is over
        await user.call("models.release", lease_id=lease["lease_id"])
        assert (d / "unet/model.bin").read_bytes() == BIG


def test_fix_permissions_never_follows_a_link_swapped_in_after_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "home"
    base = home / "models" / "m1" / "1.0.0"
    base.mkdir(parents=True)
    (base / "vae.bin").write_bytes(SMALL)
    os.chmod(base / "vae.bin", 0o000)
    outside = tmp_path / "outside"
    outside.write_bytes(b"x")
    os.chmod(outside, 0o400)
    real_stat, real_fstat = os.stat, os.fstat
    swapped = []

    def swap() -> None:  # right after the check: the file becomes a link to something outside
        if not swapped:
            swapped.append(1)
            os.unlink(base / "vae.bin")
            os.symlink(outside, base / "vae.bin")

    def swapping_stat(name, *a, **kw):  # type: ignore[no-untyped-def]
        st = real_stat(name, *a, **kw)
        if name == "vae.bin":
            swap()
        return st

    def swapping_fstat(fd):  # type: ignore[no-untyped-def]
        st = real_fstat(fd)
        swap()
        return st

    monkeypatch.setattr(os, "stat", swapping_stat)
    monkeypatch.setattr(os, "fstat", swapping_fstat)
    try:
        repair_mod.fix_permissions(base, "vae.bin", home)
    except Exception:
        pass  # refusing is right; what matters is the target
    monkeypatch.undo()
    assert swapped
    assert os.path.islink(base / "vae.bin")
    assert stat.S_IMODE(outside.stat().st_mode) == 0o400
