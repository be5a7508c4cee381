"""RPC throughput and latency on one connection, beside aria2c's JSON-RPC in the same run.

Measures sequential calls per second and p50/p99 latency for `session.hello`
and for `models.list {limit: 50}` over a 1,000-model catalog against an engine
subprocess, then the same for aria2c (`aria2.getGlobalStat`, and
`aria2.tellWaiting` of 50 paused entries) when aria2c is installed.

    .venv/bin/python scripts/bench/rpc.py [--calls 5000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

from _common import engine_process, placeholder_models, short_tmpdir, summarize

from mavail.rpc.client import Client


def write_catalog(home: Path, n: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "catalog.toml").write_text(placeholder_models(n))


def measure(call, n: int, name: str) -> dict:
    for _ in range(min(200, n)):
        call()  # warm-up
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        s = time.perf_counter()
        call()
        lat.append(time.perf_counter() - s)
    return summarize(name, lat, time.perf_counter() - t0)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def bench_aria2(n: int, tmp: Path) -> list[dict]:
    port = free_port()
    proc = subprocess.Popen(["aria2c", "--enable-rpc", f"--rpc-listen-port={port}", "--rpc-listen-all=false", "--quiet",
                             f"--dir={tmp}", "--no-conf", "--max-concurrent-downloads=1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        ids = iter(range(1, 10**9))

        def rpc(method: str, params: list) -> dict:
            body = json.dumps({"jsonrpc": "2.0", "id": next(ids), "method": method, "params": params})
            conn.request("POST", "/jsonrpc", body, {"Content-Type": "application/json"})
            return json.loads(conn.getresponse().read())

        deadline = time.monotonic() + 10
        while True:
            try:
                rpc("aria2.getVersion", [])
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port)
                time.sleep(0.05)
        for i in range(50):
            rpc("aria2.addUri", [[f"http://127.0.0.1:9/file{i}"], {"pause": "true"}])
        assert len(rpc("aria2.tellWaiting", [0, 50])["result"]) == 50
        return [measure(lambda: rpc("aria2.getGlobalStat", []), n, "aria2c getGlobalStat"),
                measure(lambda: rpc("aria2.tellWaiting", [0, 50]), max(n // 5, 500), "aria2c tellWaiting(50)")]
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--models", type=int, default=1000)
    args = ap.parse_args()
    with short_tmpdir() as tmp:
        home, sock = tmp / "home", tmp / "e.sock"
        write_catalog(home, args.models)
        with engine_process(home, sock), Client(sock) as c:
            assert c.call("models.list", limit=50)["pagination"]["total"] == args.models
            ours = [measure(lambda: c.call("session.hello"), args.calls, "mavail session.hello"),
                    measure(lambda: c.call("models.list", limit=50), max(args.calls // 5, 500), "mavail models.list(50)")]
        ref = bench_aria2(args.calls, tmp) if shutil.which("aria2c") else []
    print(f"{'measurement':28} {'calls/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for r in ours + ref:
        print(f"{r['name']:28} {r['calls_per_s']:10.0f} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f}")
    if ref:
        print(f"ratio small calls  (mavail / aria2c): {ours[0]['calls_per_s'] / ref[0]['calls_per_s']:.2f}")
        print(f"ratio 50-entry list (mavail / aria2c): {ours[1]['calls_per_s'] / ref[1]['calls_per_s']:.2f}")
    else:
        print("aria2c not installed: no reference run")


if __name__ == "__main__":
    main()
