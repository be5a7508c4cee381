"""Concurrent control calls from several clients leave no descriptor of a partial file open once all is idle."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

from mavail.core.downloads.partial import PartialFile
from mavail.testing.mirror import MIB, Mirror, Synthetic
from mavail.rpc.client import AsyncClient, RpcError
from tests.dlhelpers import dl_engine, write_home
from tests.helpers import wait_until


def _partial_fds(pid: int, home: Path) -> list[str]:
    """Targets of the process's descriptors that are deleted files of `home` or files under a partial/ directory.

    (Deleted files elsewhere, such as pytest's capture files, are not the engine's.)
    """
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if (target.endswith(" (deleted)") and target.startswith(str(home))) or "/partial/" in target:
            out.append(target)
    return out


class _SlowOpen(PartialFile):
    """A partial file on a slow disk: opening takes a while (a busy thread pool does the same), so control
    calls land while a download is opening its file."""

    def __init__(self, path: Path) -> None:
        import time

        time.sleep(0.05)
        super().__init__(path)


async def test_concurrent_start_pause_resume_cancel_leaks_no_descriptors(home):
    models = {f"r{i}": {"a.bin": Synthetic(f"ra{i}", 2 * MIB), "b.bin": Synthetic(f"rb{i}", MIB)} for i in range(3)}
    with Mirror() as m:
        write_home(home, m, models, config={"downloads": {"max_concurrent": 2, "parallel_ranges": 2, "parallel_min_size_mb": 1.0}})
        m.default_faults.throttle_bps = 4 * MIB
        async with dl_engine(home, opener=_SlowOpen) as (eng, sock):
            rng = random.Random(7)
            ops = ["downloads.start", "downloads.pause", "downloads.resume", "downloads.cancel", "downloads.cancel"]

            async def hammer(n: int) -> None:
                async with AsyncClient(sock) as c:
                    for _ in range(n):
                        meth = rng.choice(ops)
                        params = {"model_id": rng.choice(list(models))}
                        if meth == "downloads.cancel":
                            params["keep_partial"] = rng.random() < 0.5
                        try:
                            await c.call(meth, **params)
                        except RpcError as exc:
                            assert exc.code in (-32002, -32006, -32009), exc.to_dict()
                        await asyncio.sleep(rng.random() * 0.03)

            await asyncio.gather(*(hammer(60) for _ in range(4)))
            async with AsyncClient(sock) as c:
                for mid in models:
                    try:
                        await c.call("downloads.cancel", model_id=mid)
                    except RpcError as exc:
                        assert exc.code in (-32006, -32009), exc.to_dict()
                assert (await c.call("session.hello"))["engine_version"]

            def idle() -> bool:
                return all(d.task is None and d.status not in ("downloading", "verifying") for d in eng.downloads._dl.values())

            await wait_until(idle, timeout=20)
            # descriptors are closed by the tasks that own them; give the last closes a moment to land
            try:
                await wait_until(lambda: not _partial_fds(os.getpid(), home), timeout=5)
            except AssertionError:
                raise AssertionError(f"descriptors still open: {_partial_fds(os.getpid(), home)}") from None
