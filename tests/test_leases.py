"""Leases against removal over the socket: a lease is never granted on a model that is then removed.

Each race is built deterministically: one side is held at its slow step (the
acquire's presence refresh, the removal's move) by an event while the other
side runs to completion; then a bounded stress loop runs both sides freely.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Awaitable

import pytest

from mavail.core.engine import Parts, update_ports
from mavail.core.health import UpdateManager
from mavail.rpc.client import AsyncClient, RpcError
from tests.helpers import install_files, model_toml, running_engine, synthetic_bytes

FILES = [("w.bin", synthetic_bytes("lease-m1", 50_000)), ("cfg.json", b"{}")]


def setup(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("[health]\nscheduler_tick_s = 3600\n")
    (home / "catalog.toml").write_text(model_toml("m1", FILES))
    install_files(home, "m1", FILES)


class RefreshHolds:
    """Holds the engine's next refreshes of "m1": the first after its scan (an acquire that has looked but not yet
    leased), the second before its scan (a removal that has moved the files but not yet rescanned)."""

    def __init__(self, eng: Any) -> None:
        self.reached = [asyncio.Event(), asyncio.Event()]
        self.gate = [asyncio.Event(), asyncio.Event()]
        self._calls = 0
        real = eng.presence.refresh

        async def held(model_ids: list[str] | None = None) -> None:
            i = self._calls if model_ids == ["m1"] else 2
            self._calls += i < 2
            if i == 1:
                self.reached[1].set()
                await self.gate[1].wait()
            await real(model_ids)
            if i == 0:
                self.reached[0].set()
                await self.gate[0].wait()

        eng.presence.refresh = held

    def open(self) -> None:
        """Let every held refresh go."""
        for g in self.gate:
            g.set()


async def first(task: "asyncio.Task[Any]", event: asyncio.Event) -> None:
    """Wait until `task` is done or `event` is set."""
    waiter = asyncio.ensure_future(event.wait())
    await asyncio.wait({task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    assert task.done() or event.is_set(), "neither finished nor reached its refresh"


async def outcome(call: Awaitable[Any]) -> Any:
    """The call's result, or the RpcError it raised (only CONFLICT or INVALID_STATE are acceptable refusals)."""
    try:
        return await call
    except RpcError as exc:
        assert exc.code in (-32002, -32006), exc
        return exc


def assert_leases_hold(eng: Any, home: Path, lease: Any) -> None:
    """A granted lease's directory and files are all there; and every live lease in the engine points at a real directory."""
    if not isinstance(lease, RpcError):
        d = Path(lease["path"])
        for p, data in FILES:
            assert (d / p).read_bytes() == data, f"lease {lease['lease_id']} holds a model whose files are gone"
    for live in eng.leases._leases.values():
        assert Path(live.path).is_dir(), f"live lease {live.lease_id} on a removed directory"


async def test_remove_while_acquire_refreshes(home: Path):
    setup(home)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as user, AsyncClient(sock) as admin:
        holds = RefreshHolds(eng)
        acq = asyncio.create_task(outcome(user.call("models.acquire", model_id="m1")))
        await asyncio.wait_for(holds.reached[0].wait(), 10)
        rem = asyncio.create_task(outcome(admin.call("models.remove", model_id="m1")))
        await first(rem, holds.reached[1])
        holds.gate[0].set()
        lease = await acq
        holds.open()
        removed = await rem
        assert isinstance(removed, RpcError) != isinstance(lease, RpcError), (removed, lease)  # exactly one wins
        assert_leases_hold(eng, home, lease)
        assert isinstance(removed, RpcError) and removed.code == -32002  # the acquire started first: it wins


async def test_cleanup_while_acquire_refreshes(home: Path):
    setup(home)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as user, AsyncClient(sock) as admin:
        holds = RefreshHolds(eng)
        acq = asyncio.create_task(outcome(user.call("models.acquire", model_id="m1")))
        await asyncio.wait_for(holds.reached[0].wait(), 10)
        cln = asyncio.create_task(admin.call("storage.cleanup", cleanup_type="manual", models_to_remove=["m1"],
                                             preserve_frequently_used=False))
        await first(cln, holds.reached[1])
        holds.gate[0].set()
        lease = await acq
        holds.open()
        res = await cln
        assert_leases_hold(eng, home, lease)
        assert not isinstance(lease, RpcError), lease
        assert res["models_removed"] == [] and "leased" in {p["model_id"]: p["reason"] for p in res["preserved"]}["m1"]


async def test_acquire_while_remove_moves(home: Path):
    setup(home)
    reached, gate = asyncio.Event(), asyncio.Event()

    class SlowRemove(UpdateManager):
        """The real update service, holding each version's removal until the test lets it go."""

        async def _remove_version(self, model_id: str, version: str) -> int:
            reached.set()
            await gate.wait()
            return await super()._remove_version(model_id, version)

    parts = Parts(updates=lambda e: SlowRemove(**update_ports(e)))
    async with running_engine(home, parts=parts) as (eng, sock), AsyncClient(sock) as user, AsyncClient(sock) as admin:
        rem = asyncio.create_task(outcome(admin.call("models.remove", model_id="m1")))
        await asyncio.wait_for(reached.wait(), 10)
        lease = await outcome(user.call("models.acquire", model_id="m1"))
        gate.set()
        removed = await rem
        assert not isinstance(removed, RpcError) and removed["removed_versions"] == ["1.0.0"]
        assert isinstance(lease, RpcError) and lease.code == -32002 and "removed" in lease.message
        assert_leases_hold(eng, home, lease)


@pytest.mark.parametrize("remover", ["remove", "cleanup"])
async def test_acquire_against_removal_stress(home: Path, remover: str):
    """Both sides run freely, over and over: whoever wins, no lease is left on a gone directory."""
    setup(home)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as user, AsyncClient(sock) as admin:
        for _ in range(15):
            if remover == "remove":
                rm = admin.call("models.remove", model_id="m1")
            else:
                rm = admin.call("storage.cleanup", cleanup_type="manual", models_to_remove=["m1"], preserve_frequently_used=False)
            lease, removed = await asyncio.gather(outcome(user.call("models.acquire", model_id="m1")), outcome(rm))
            assert_leases_hold(eng, home, lease)
            if not isinstance(lease, RpcError):
                await user.call("models.release", lease_id=lease["lease_id"])
            await asyncio.to_thread(install_files, home, "m1", FILES)
            await eng.presence.refresh(["m1"])
