"""uvloop against asyncio's own loop: sequential `session.hello` calls per second on one connection.

The engine runs in a subprocess under `anyio.run(..., backend_options={"use_uvloop": X})`
for each loop, three times interleaved; a lean raw-socket client sends one request
line and reads one response line at a time. It prints each run and the median.

    .venv/bin/python scripts/bench/event_loop.py [--calls 4000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def calls_per_second(use_uvloop: bool, n: int) -> float:
    """Sequential session.hello calls per second against an engine on the given loop."""
    d = Path(tempfile.mkdtemp(prefix="mvu", dir="/tmp"))
    home, sock = d / "h", d / "s"
    code = ("import anyio; from pathlib import Path; from mavail.rpc.runner import run_engine; "
            f"anyio.run(run_engine, Path({str(home)!r}), Path({str(sock)!r}), backend_options={{'use_uvloop': {use_uvloop}}})")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("engine did not start")
            time.sleep(0.05)
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(sock))
        f = s.makefile("rb")
        lines = [b'{"jsonrpc":"2.0","method":"session.hello","id":%d}\n' % i for i in range(n)]
        for line in lines[:300]:  # warm-up
            s.sendall(line)
            f.readline()
        t0 = time.perf_counter()
        for line in lines:
            s.sendall(line)
            f.readline()
        rate = n / (time.perf_counter() - t0)
        s.close()
        return rate
    finally:
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    """Run both loops `--rounds` times, interleaved, and print the medians."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    runs: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for uv in (True, False):
            runs[uv].append(calls_per_second(uv, args.calls))
    for uv, rates in runs.items():
        print(f"{'uvloop ' if uv else 'asyncio'}: {', '.join(f'{r:,.0f}' for r in rates)} calls/s; median {statistics.median(rates):,.0f}")
    print(f"uvloop / asyncio: {statistics.median(runs[True]) / statistics.median(runs[False]):.2f}")


if __name__ == "__main__":
    main()
