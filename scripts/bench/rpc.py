"""RPC throughput and latency on one connection: mavail, a minimal uvloop NDJSON server (the Python floor) and aria2c.

One lean raw client is used for all three servers, so that the client's own
parsing does not weigh on one side: for mavail and the floor a Unix socket,
one request line written and one response line read; for aria2c a TCP socket,
a minimal HTTP/1.1 keep-alive POST to /jsonrpc written and the response read
by its Content-Length (no http.client, whose parsing costs more than aria2c's
answer).

All three servers run at once and the calls go to them in alternating
blocks, so that a change of load on the machine weighs on each alike.
Measures sequential calls per second and p50/p99 latency for
`session.hello` (mavail), `hello` (the floor) and `aria2.getGlobalStat`
(aria2c); then `models.list {limit: 50}` over a 1,000-model catalog against
`aria2.tellWaiting(0, 50)` of 50 paused entries. aria2c comes from Debian's
`aria2` package (`apt-get install -y aria2`); without it the aria2c rows are
left out and the output says so.

    .venv/bin/python scripts/bench/rpc.py [--calls 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import orjson
from _common import LineClient, engine_process, floor_server, placeholder_models, short_tmpdir, summarize

class HttpJsonRpcClient:
    """The lean raw HTTP client for aria2c: keep-alive POSTs to /jsonrpc, the response read by Content-Length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.head = f"POST /jsonrpc HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: ".encode()
        self.buf = b""
        self.next_id = 0

    def call(self, method: str, params: list) -> dict:
        """One call; the parsed response object."""
        self.next_id += 1
        body = orjson.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        self.sock.sendall(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += self._recv()
        i = buf.find(b"\r\nContent-Length:", 0, end)
        if i < 0:
            i = buf[:end].lower().find(b"\r\ncontent-length:")
        if i < 0:
            raise ConnectionError("aria2c answered without a Content-Length")
        j = buf.find(b"\r\n", i + 2)
        length = int(buf[i + 17:j])
        start = end + 4
        while len(buf) < start + length:
            buf += self._recv()
        self.buf = buf[start + length:]
        return orjson.loads(buf[start:start + length])

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("aria2c closed the connection")
        return chunk

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def write_catalog(home: Path, n: int) -> None:
    """A catalog of `n` placeholder models in `home`."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "catalog.toml").write_text(placeholder_models(n))


def interleaved(calls: dict[str, Callable[[], object]], n: int, block: int = 250) -> dict[str, dict]:
    """Each call `n` times in blocks taken in turn, so a change of load on the machine falls on every server alike.

    calls/s is `n` over the time spent in that call's own blocks.
    """
    perf = time.perf_counter
    for call in calls.values():
        for _ in range(min(200, n)):
            call()  # warm-up
    lat: dict[str, list[float]] = {name: [] for name in calls}
    wall = dict.fromkeys(calls, 0.0)
    done = 0
    while done < n:
        size = min(block, n - done)
        for name, call in calls.items():
            samples = lat[name]
            t0 = perf()
            for _ in range(size):
                s = perf()
                call()
                samples.append(perf() - s)
            wall[name] += perf() - t0
        done += size
    return {name: summarize(name, lat[name], wall[name]) for name in calls}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of asking."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@contextlib.contextmanager
def mavail_client(models: int, tmp: Path) -> Iterator[LineClient]:
    """An engine over a catalog of `models` models, and a raw client connected to it."""
    home, sock = tmp / "home", tmp / "e.sock"
    write_catalog(home, models)
    with engine_process(home, sock):
        c = LineClient(sock)
        try:
            assert c.call("models.list", {"limit": 50})["result"]["pagination"]["total"] == models
            yield c
        finally:
            c.close()


@contextlib.contextmanager
def aria2_client(tmp: Path) -> Iterator[HttpJsonRpcClient]:
    """aria2c with 50 paused downloads (added through its RPC), and a raw HTTP client connected to it."""
    port = free_port()
    proc = subprocess.Popen(["aria2c", "--enable-rpc", f"--rpc-listen-port={port}", "--rpc-listen-all=false", "--quiet",
                             f"--dir={tmp}", "--no-conf", "--max-concurrent-downloads=1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                c = HttpJsonRpcClient(port)
                c.call("aria2.getVersion", [])
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        try:
            for i in range(50):
                c.call("aria2.addUri", [[f"http://127.0.0.1:9/file{i}"], {"pause": "true"}])
            assert len(c.call("aria2.tellWaiting", [0, 50])["result"]) == 50
            yield c
        finally:
            c.close()
    finally:
        proc.terminate()
        proc.wait(10)


def one_round(n: int, models: int, have_aria2: bool) -> dict[str, dict]:
    """Every measurement once, each server started afresh and all three up together."""
    with short_tmpdir() as tmp, contextlib.ExitStack() as stack:
        ours = stack.enter_context(mavail_client(models, tmp))
        floor = stack.enter_context(floor_server(ours.call("session.hello")["result"], tmp))
        aria2 = stack.enter_context(aria2_client(tmp)) if have_aria2 else None
        small: dict[str, Callable[[], object]] = {"mavail session.hello": lambda: ours.call("session.hello"),
                                                  "floor hello (uvloop)": lambda: floor.call("hello")}
        listing: dict[str, Callable[[], object]] = {"mavail models.list(50)": lambda: ours.call("models.list", {"limit": 50})}
        if aria2 is not None:
            small["aria2c getGlobalStat"] = lambda: aria2.call("aria2.getGlobalStat", [])
            listing["aria2c tellWaiting(50)"] = lambda: aria2.call("aria2.tellWaiting", [0, 50])
        rows = interleaved(small, n)
        rows.update(interleaved(listing, max(n // 5, 500), block=100))
    return rows


def main() -> None:
    """Run the rounds and print each one's rows, then the medians and the ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    have_aria2 = shutil.which("aria2c") is not None
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; cpus: {os.cpu_count()}")
    if not have_aria2:
        print("aria2c is NOT installed (apt-get update && apt-get install -y aria2): the aria2c rows are missing")
    rounds = []
    header = f"{'measurement':28} {'calls/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
    for i in range(args.rounds):
        rounds.append(one_round(args.calls, args.models, have_aria2))
        print(f"round {i + 1}:\n{header}")
        for r in rounds[-1].values():
            print(f"{r['name']:28} {r['calls_per_s']:10.0f} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f}")
    med = {name: {k: statistics.median(r[name][k] for r in rounds) for k in ("calls_per_s", "p50_ms", "p99_ms")} for name in rounds[0]}
    print(f"median of {args.rounds} round(s):\n{header}")
    for name, r in med.items():
        print(f"{name:28} {r['calls_per_s']:10.0f} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f}")
    def ratio(a: str, b: str) -> str:
        per_round = [r[a]["calls_per_s"] / r[b]["calls_per_s"] for r in rounds]
        return f"{statistics.median(per_round):.2f}  (rounds: {', '.join(f'{x:.2f}' for x in per_round)})"

    print("ratios, median of the rounds' own ratios:")
    print(f"session.hello (mavail / floor):   {ratio('mavail session.hello', 'floor hello (uvloop)')}  goal >= 0.80")
    if have_aria2:
        print(f"small calls  (mavail / aria2c):  {ratio('mavail session.hello', 'aria2c getGlobalStat')}")
        print(f"50-entry list (mavail / aria2c): {ratio('mavail models.list(50)', 'aria2c tellWaiting(50)')}  goal > 1")
    else:
        print("aria2c not installed: no aria2c reference in this run")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
