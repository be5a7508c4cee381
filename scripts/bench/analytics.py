"""Analytics at scale: analytics.usage latency over one million events, and analytics.record sustained from one client.

Seeds a home with `--events` usage events (default 1,000,000) across `--models`
models (default 1,000; skewed like real use, model k drawn with weight 1/(k+10))
spread over the last 365 days, written through the engine's own batch writer
(`core.analytics._write_batch`, which maintains the daily rollup exactly as
live recording does). Then, against an engine subprocess:

1. `analytics.usage` p50/p99 for one model (the busiest) and for all models,
   for the periods week, month and year, with the default series (the one
   model's 30 days; for all models the summary's daily series), and for all
   models with every model's 30-day series;
2. `analytics.record` paced at `--rate` events/s (default 5,000) from one
   client for `--seconds`, sent as JSON-RPC batches of `--batch` calls every
   few milliseconds, while a second client calls `models.status {model_id}`
   every 5 ms: the rate achieved and the second client's p50/p99, beside its
   p50/p99 with no recording going on; then the same unpaced (the most the
   recorder can push) and with `analytics.record_batch`.

    .venv/bin/python scripts/bench/analytics.py [--events 1000000] [--rate 5000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import socket
import time
from pathlib import Path

import orjson
from _common import engine_process, percentile, short_tmpdir

from mavail.core.analytics import RollupCache, _write_batch
from mavail.core.state import Database

DAY = 86400


def write_catalog(home: Path, n: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(n):
        parts.append(
            f'[[models]]\nid = "bench-model-{i:04d}"\nversion = "1.0.0"\ndisplay_name = "Bench {i}"\n'
            f'model_type = "text_to_video"\ncapabilities = ["text_to_video"]\nquality = "medium"\nspeed = "fast"\n'
            f'[models.vram_gb]\n"832x480" = 8.0\n'
            f'[[models.files]]\npath = "model.safetensors"\nurl = "http://127.0.0.1:9/m{i}"\nsize = 1024\nsha256 = "{"0" * 64}"\n'
        )
    (home / "catalog.toml").write_text("".join(parts))


def seed_events(home: Path, n_events: int, n_models: int) -> float:
    """Write the events in time order, 20,000 per transaction; return seconds taken."""
    import asyncio

    rnd = random.Random(1)
    now = time.time()
    ids = [f"bench-model-{i:04d}" for i in range(n_models)]
    weights = [1 / (k + 10) for k in range(n_models)]
    times = sorted(now - rnd.uniform(0, 365 * DAY) for _ in range(n_events))
    models = rnd.choices(ids, weights, k=n_events)

    async def run() -> None:
        db = Database(home / "state.db")
        await db.open()
        cache = RollupCache()
        for i in range(0, n_events, 20_000):
            batch = [(models[j], times[j], 0, round(rnd.uniform(1, 30), 2), 1 if rnd.random() < 0.95 else 0, None, None)
                     for j in range(i, min(n_events, i + 20_000))]
            await db.write(lambda c, b=batch: _write_batch(c, b, cache))
        await db.write(lambda c: c.execute("ANALYZE"))
        db.close()

    t0 = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - t0


class Raw:
    """A minimal blocking NDJSON client with orjson, like rpc.client (the clients must cost less than the engine)."""

    def __init__(self, path: Path) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(str(path))
        self.f = self.s.makefile("rb")
        self.n = 0

    def send(self, obj: object) -> None:
        self.s.sendall(orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE))

    def recv(self) -> object:
        line = self.f.readline()
        if not line:
            raise ConnectionError("engine closed the connection")
        msg = orjson.loads(line)
        if isinstance(msg, dict) and "error" in msg:
            raise RuntimeError(msg["error"])
        if isinstance(msg, list):
            for m in msg:
                if "error" in m:
                    raise RuntimeError(m["error"])
        return msg

    def call(self, method: str, **params: object) -> object:
        self.n += 1
        self.send({"jsonrpc": "2.0", "id": self.n, "method": method, "params": params})
        return self.recv()


def timed(c: Raw, n: int, method: str, **params: object) -> tuple[float, float]:
    for _ in range(min(20, n)):
        c.call(method, **params)
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        c.call(method, **params)
        lat.append(time.perf_counter() - t)
    return percentile(lat, 50) * 1000, percentile(lat, 99) * 1000


def recorder(sock: str, rate: float, seconds: float, batch: int, mode: str, out: "mp.Queue[dict]") -> None:
    """One client recording events: paced at `rate` (0 = as fast as it can), `batch` events per line."""
    c = Raw(Path(sock))
    ids = [f"bench-model-{i:04d}" for i in range(1000)]
    rnd = random.Random(2)
    sent = 0
    outstanding = 0
    t0 = time.perf_counter()
    interval = batch / rate if rate else 0.0
    next_t = t0
    while time.perf_counter() - t0 < seconds:
        if rate:
            now = time.perf_counter()
            if now < next_t:
                time.sleep(next_t - now)
            next_t += interval
        evs = [{"model_id": rnd.choice(ids), "generation_time_s": 2.5, "success": True} for _ in range(batch)]
        if mode == "record":
            c.send([{"jsonrpc": "2.0", "id": sent + i, "method": "analytics.record", "params": e} for i, e in enumerate(evs)])
        else:
            c.send({"jsonrpc": "2.0", "id": sent, "method": "analytics.record_batch", "params": {"events": evs}})
        sent += batch
        outstanding += 1
        while outstanding > 4:  # keep a few lines in flight, read the answers
            c.recv()
            outstanding -= 1
    while outstanding:
        c.recv()
        outstanding -= 1
    wall = time.perf_counter() - t0
    out.put({"sent": sent, "wall": wall, "rate": sent / wall})


def prober(sock: Path, seconds: float, model: str) -> tuple[float, float, int]:
    c = Raw(sock)
    lat = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        c.call("models.status", model_id=model)
        lat.append(time.perf_counter() - t)
        time.sleep(0.005)
    return percentile(lat, 50) * 1000, percentile(lat, 99) * 1000, len(lat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=5000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    with short_tmpdir() as tmp:
        home, sock = tmp / "home", tmp / "e.sock"
        write_catalog(home, args.models)
        seed_s = seed_events(home, args.events, args.models)
        print(f"seeded {args.events:,} events across {args.models:,} models in {seed_s:.1f} s "
              f"(state.db {(home / 'state.db').stat().st_size / 2**20:.0f} MiB)")
        with engine_process(home, sock):
            c = Raw(sock)
            busiest = "bench-model-0000"
            since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 400 * DAY))
            total = c.call("analytics.usage", start_date=since, include_series=False)["result"]["summary"]["total_generations"]
            assert total == args.events, total
            print(f"\n{'analytics.usage':34} {'p50 ms':>8} {'p99 ms':>8}")
            for period in ("week", "month", "year"):
                p50, p99 = timed(c, args.calls, "analytics.usage", model_id=busiest, period=period)
                print(f"{'one model, ' + period:34} {p50:8.2f} {p99:8.2f}")
            for period in ("week", "month", "year"):
                p50, p99 = timed(c, args.calls, "analytics.usage", period=period)
                print(f"{'all models, ' + period:34} {p50:8.2f} {p99:8.2f}")
            p50, p99 = timed(c, max(20, args.calls // 4), "analytics.usage", period="month", include_series=True)
            print(f"{'all models, month, every series':34} {p50:8.2f} {p99:8.2f}")
            p50, p99 = timed(c, args.calls, "analytics.performance")
            print(f"{'analytics.performance':34} {p50:8.2f} {p99:8.2f}")

            print(f"\n{'recording (one client)':36} {'events/s':>9} {'other p50':>10} {'other p99':>10} {'calls':>6}")
            b50, b99, bn = prober(sock, min(args.seconds, 5), "bench-model-0001")
            print(f"{'none (baseline)':36} {0:9.0f} {b50:10.2f} {b99:10.2f} {bn:6d}")
            ctx = mp.get_context("spawn")
            for label, rate, mode, size in ((f"analytics.record paced {args.rate:g}/s", args.rate, "record", args.batch),
                                            ("analytics.record unpaced", 0.0, "record", args.batch),
                                            (f"analytics.record_batch paced {args.rate:g}/s", args.rate, "batch", 50),
                                            ("analytics.record_batch unpaced", 0.0, "batch", 500)):
                q: mp.Queue = ctx.Queue()
                proc = ctx.Process(target=recorder, args=(str(sock), rate, args.seconds, size, mode, q))
                before = c.call("analytics.usage", period="day", include_series=False)["result"]["summary"]["total_generations"]
                proc.start()
                time.sleep(0.5)
                p50, p99, n = prober(sock, args.seconds - 1, "bench-model-0001")
                res = q.get(timeout=120)
                proc.join(30)
                after = c.call("analytics.usage", period="day", include_series=False)["result"]["summary"]["total_generations"]
                assert after - before == res["sent"], (after - before, res["sent"])
                print(f"{label:36} {res['rate']:9.0f} {p50:10.2f} {p99:10.2f} {n:6d}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
