"""Connections per file: more are opened while they raise the rate (never past the ceiling); idle ones take over the tail."""

from __future__ import annotations

import time
from typing import Any

from mavail.testing.mirror import MIB, Faults, Mirror, Synthetic
from mavail.rpc.client import AsyncClient
from tests.dlhelpers import dl_engine, installed_bytes, write_home
from tests.helpers import wait_until

PARALLEL = {"downloads": {"parallel_min_size_mb": 0.0, "parallel_ranges": 4}}


class FirstSlow(Faults):
    """Faults whose first response is capped at `slow` bytes/s and every later one served at full speed."""

    def __init__(self, slow: float) -> None:
        super().__init__()
        self.slow = slow
        self.responses = 0

    @property  # type: ignore[override]
    def throttle_bps(self) -> float:
        """Read once per response by the mirror."""
        self.responses += 1
        return self.slow if self.responses == 1 else 0.0

    @throttle_bps.setter
    def throttle_bps(self, value: float) -> None:
        pass


async def _download(eng: Any, c: AsyncClient, model_id: str, path: str) -> tuple[float, int, int]:
    """Start a download, wait for it; (seconds, most connections its file had open, spans stolen)."""
    peak = steals = 0

    def done() -> bool:
        nonlocal peak, steals
        d = eng.downloads.get(model_id)
        if d is None:
            return False
        tr = d.transfers.get(path)
        if tr is not None:
            peak = max(peak, tr.peak_connections)
            steals = max(steals, tr.steals)
        assert d.status not in ("failed", "cancelled"), d.error_message
        return d.status == "completed"

    t0 = time.monotonic()
    await c.call("downloads.start", model_id=model_id)
    await wait_until(done, timeout=60, interval=0.005)
    return time.monotonic() - t0, peak, steals


async def test_more_connections_while_they_pay_never_past_the_ceiling(home):
    data = Synthetic("adaptive", 32 * MIB)
    with Mirror() as m:
        write_home(home, m, {"fixed": {"f.bin": data}, "grow": {"f.bin": data}}, config=PARALLEL)
        m.default_faults.throttle_bps = 2 * MIB  # per connection: the aggregate grows with each one
        m.faults("fixed/f.bin").throttle_bps = 2 * MIB
        m.faults("grow/f.bin").throttle_bps = 2 * MIB
        async with dl_engine(home, piece_size=256 * 1024) as (eng, sock), AsyncClient(sock) as c:
            await c.call("config.update", patch={"downloads": {"max_connections_per_file": 4}})
            t4, peak4, _ = await _download(eng, c, "fixed", "f.bin")
            await c.call("config.update", patch={"downloads": {"max_connections_per_file": 10}})
            t, peak, _ = await _download(eng, c, "grow", "f.bin")
        assert installed_bytes(home, "grow", "f.bin") == data.read(0, data.size)
    assert peak4 == 4
    assert 4 < peak <= 10, peak
    assert t < t4 * 0.8, (t, t4)


async def test_an_idle_connection_takes_over_the_tail_of_a_slow_one(home):
    data = Synthetic("tail", 4 * MIB)
    with Mirror() as m:
        write_home(home, m, {"t": {"f.bin": data}}, config=PARALLEL)
        m._faults["t/f.bin"] = FirstSlow(64 * 1024)  # the first range: 1 MiB at 64 KiB/s would take 16 s alone
        async with dl_engine(home, piece_size=64 * 1024) as (eng, sock), AsyncClient(sock) as c:
            t, _, steals = await _download(eng, c, "t", "f.bin")
        assert installed_bytes(home, "t", "f.bin") == data.read(0, data.size)
    assert steals > 0
    # the slow connection keeps only the piece it is writing (1 s at its rate); the others take the rest of its range
    assert t < 6.0, t
    def asked(r: Any) -> int:
        a, b = r.range.removeprefix("bytes=").split("-")
        return int(b) - int(a) + 1

    # the slow range was cut short: its connection stopped where the stolen part began
    assert any(r.range and r.bytes_sent < asked(r) // 2 for r in m.log if r.path == "t/f.bin"), m.log
