"""Status scaling: `models.status` of every model and `fallback.suggest` at 1,000 and 10,000 models.

For each catalog size an engine subprocess runs on its defaults over a catalog of
placeholder models (one file each, never fetched); a tenth of them are installed
as sparse files of the right size, so presence, sizes and availability vary.
Through one connection, sequential calls:

- `models.status` with no model id (every model, with the summary), twice: through
  the client library (answer decoded into Python objects) and through a raw socket
  that reads the answer's bytes to its newline without decoding them (the engine's
  own time plus the transfer);
- `fallback.suggest` for a random model (goal p99 under 20 ms at 10,000);
- the engine's RSS once idle.

The ratio line says how the time grows: 10,000 ÷ 1,000 for each call; linear
growth is 10, anything much above it is worse than linear.

    .venv/bin/python scripts/bench/status.py [--sizes 1000,10000] [--status-calls 30] [--suggest-calls 300]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import time
from pathlib import Path
from typing import Any

import psutil
from _common import engine_process, percentile, placeholder_models, short_tmpdir

from mavail.rpc.client import Client


def _install_tenth(home: Path, n: int) -> None:
    for i in range(0, n, 10):
        d = home / "models" / f"bench-model-{i:04d}" / f"1.0.{i % 7}"
        d.mkdir(parents=True)
        with open(d / "model.safetensors", "wb") as fh:
            fh.truncate(1024 * (i + 1))


def _raw_timed(sock: Path, count: int) -> list[float]:
    """models.status of every model over a plain socket, reading the answer to its newline without decoding it."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(sock))
    out = []
    try:
        for i in range(count):
            t0 = time.perf_counter()
            s.sendall(b'{"jsonrpc":"2.0","method":"models.status","id":%d}\n' % i)
            while True:
                chunk = s.recv(1 << 22)
                if not chunk or chunk.endswith(b"\n"):
                    break
            out.append(time.perf_counter() - t0)
    finally:
        s.close()
    return out


def _timed(call: Any, count: int) -> list[float]:
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def bench(n: int, status_calls: int, suggest_calls: int) -> dict[str, float]:
    """Latencies (ms) of the two calls and the idle RSS (MiB) at `n` models."""
    with short_tmpdir() as d:
        home, sock = d / "home", d / "e.sock"
        home.mkdir()
        (home / "catalog.toml").write_text(placeholder_models(n))
        _install_tenth(home, n)
        with engine_process(home, sock) as proc, Client(sock, timeout=120) as c:
            c.call("models.status", refresh=True)
            status = _timed(lambda: c.call("models.status"), status_calls)
            raw = _raw_timed(sock, status_calls)
            rng = random.Random(7)
            ids = [f"bench-model-{rng.randrange(n):04d}" for _ in range(suggest_calls)]
            it = iter(ids)
            suggest = _timed(lambda: c.call("fallback.suggest", requested_model=next(it)), suggest_calls)
            time.sleep(1.0)
            rss = psutil.Process(proc.pid).memory_info().rss / 2**20
    return {"status_p50": percentile(status, 50) * 1000, "status_p99": percentile(status, 99) * 1000,
            "raw_p50": percentile(raw, 50) * 1000, "raw_p99": percentile(raw, 99) * 1000,
            "suggest_p50": percentile(suggest, 50) * 1000, "suggest_p99": percentile(suggest, 99) * 1000, "rss_mib": rss}


def main() -> None:
    """Run every size and print one line each, then the growth ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--status-calls", type=int, default=30)
    ap.add_argument("--suggest-calls", type=int, default=300)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"status scaling, engine on defaults, {os.cpu_count()} CPUs")
    results = {}
    for n in sizes:
        r = results[n] = bench(n, args.status_calls, args.suggest_calls)
        print(f"{n:>6} models: models.status(all) p50 {r['status_p50']:7.1f} ms p99 {r['status_p99']:7.1f} ms "
              f"(engine and transfer alone p50 {r['raw_p50']:6.1f} ms p99 {r['raw_p99']:6.1f} ms) | "
              f"fallback.suggest p50 {r['suggest_p50']:6.2f} ms p99 {r['suggest_p99']:6.2f} ms | idle RSS {r['rss_mib']:.0f} MiB")
    if len(sizes) >= 2:
        a, b = results[sizes[0]], results[sizes[-1]]
        print(f"growth {sizes[-1]} / {sizes[0]} models (x{sizes[-1] / sizes[0]:g} models): models.status p50 x{b['status_p50'] / a['status_p50']:.1f} "
              f"(engine alone x{b['raw_p50'] / a['raw_p50']:.1f}), "
              f"fallback.suggest p50 x{b['suggest_p50'] / a['suggest_p50']:.1f}, RSS x{b['rss_mib'] / a['rss_mib']:.2f}")


if __name__ == "__main__":
    main()
