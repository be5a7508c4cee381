"""`/metrics` at 1,000 models: how long a scrape takes and what it costs the engine.

An engine subprocess runs over a catalog of placeholder models (never fetched)
with `metrics.listen` on a free loopback port, once with the default
`metrics.per_model_max` (50: totals only) and once with it at the catalog's
size (model_id labels on). Sequential scrapes over one HTTP connection give the
latency; the engine process's CPU time (user + system, from psutil) over them,
divided by the scrapes, is its cost per scrape, and that over a 15 s interval
its share of one core (goal: under 50 ms and under 1%).

    .venv/bin/python scripts/bench/metrics.py [--models 1000] [--scrapes 50]
"""

from __future__ import annotations

import argparse
import socket
import time

import httpx
import psutil
from _common import engine_process, percentile, placeholder_models, short_tmpdir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench(n: int, scrapes: int, per_model_max: int) -> dict[str, float]:
    """p50/p99 scrape latency (ms), answer size (KB), engine CPU per scrape (ms) and its share of a core at 15 s."""
    with short_tmpdir() as d:
        home, sock = d / "home", d / "e.sock"
        home.mkdir()
        (home / "catalog.toml").write_text(placeholder_models(n))
        port = _free_port()
        env = {"MAVAIL_METRICS_LISTEN": f"127.0.0.1:{port}", "MAVAIL_METRICS_PER_MODEL_MAX": str(per_model_max)}
        with engine_process(home, sock, env) as proc, httpx.Client(timeout=30) as c:
            url = f"http://127.0.0.1:{port}/metrics"
            c.get(url).raise_for_status()  # warm up
            time.sleep(1.0)  # let the engine's start-up work settle
            engine = psutil.Process(proc.pid)
            idle0 = engine.cpu_times()
            time.sleep(2.0)
            idle1 = engine.cpu_times()
            idle_per_s = (idle1.user + idle1.system - idle0.user - idle0.system) / 2.0
            t0 = engine.cpu_times()
            wall0 = time.perf_counter()
            lat = []
            for _ in range(scrapes):
                s = time.perf_counter()
                r = c.get(url)
                lat.append(time.perf_counter() - s)
            wall = time.perf_counter() - wall0
            t1 = engine.cpu_times()
            cpu = max(0.0, (t1.user + t1.system - t0.user - t0.system) - idle_per_s * wall) / scrapes
            return {"p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000, "kb": len(r.content) / 1024,
                    "cpu_ms": cpu * 1000, "core_pct_at_15s": cpu / 15 * 100}


def main() -> None:
    """Run both cases and print one line each."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--scrapes", type=int, default=50)
    args = ap.parse_args()
    for per_model_max, label in ((50, "totals only (per_model_max 50)"), (args.models, f"model labels (per_model_max {args.models})")):
        f = bench(args.models, args.scrapes, per_model_max)
        print(f"{args.models} models, {label}: p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms, {f['kb']:.0f} KB, "
              f"engine CPU {f['cpu_ms']:.1f} ms a scrape = {f['core_pct_at_15s']:.3f}% of a core at a 15 s interval")


if __name__ == "__main__":
    main()
