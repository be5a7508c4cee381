"""Fallback benchmarks: wait-time accuracy of queued requests, and fallback.suggest latency over 1,000 models.

1. wait: a local mirror (core/mirror.py) throttled to a steady 20 MiB/s per
   connection; an engine subprocess with one download at a time and one
   connection per file, so the mirror's 20 MiB/s is the whole rate. Two
   downloads are started, then a request is queued (`fallback.queue`) for a
   third model: the estimate given at queue time and the one `fallback.queue_list`
   shows when the third download reaches 50% are compared with the time
   `queued_request_ready` actually arrives. Goal: within +-10%.
2. suggest: `fallback.suggest` over a 1,000-model catalog (mixed types,
   capabilities, tiers, 25 families, VRAM tables; 10% installed), random
   requested models and requirements, one connection, sequential calls through
   the socket. Goal: p99 under 20 ms. The in-process scoring alone is printed
   beside it.

    .venv/bin/python scripts/bench/fallback.py [--part wait|suggest|all] [--size-mb 100] [--calls 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _common import engine_process, percentile, short_tmpdir, summarize

from mavail.rpc.client import Client

MIB = 1024 * 1024
TYPES = ("text_to_video", "image_to_video", "text_image_to_video")
RESOLUTIONS = (("512x288", 0.35), ("832x480", 1.0), ("1024x576", 1.5), ("1280x704", 2.1), ("1920x1088", 4.6))


# --- 1. wait-time accuracy ------------------------------------------------------------
def bench_wait(size_mb: int, rate_mbps: float) -> dict[str, Any]:
    from mavail.testing.mirror import Mirror, Synthetic

    with short_tmpdir() as d, Mirror() as mirror:
        home, sock = d / "home", d / "e.sock"
        home.mkdir()
        blocks = []
        for name in ("ahead-1", "ahead-2", "wanted"):
            blocks.append(mirror.add_model(name, {"model.safetensors": Synthetic(name, size_mb * MIB)}, vram_gb={"832x480": 8.0}))
        mirror.faults().throttle_bps = rate_mbps * MIB
        (home / "catalog.toml").write_text("".join(blocks))
        (home / "config.toml").write_text(
            "[downloads]\nmax_concurrent = 1\nparallel_ranges = 1\nparallel_min_size_mb = 100000.0\n")
        with engine_process(home, sock), Client(sock, timeout=60) as c, Client(sock, timeout=60) as poll:
            c.call("downloads.start", model_id="ahead-1")
            c.call("downloads.start", model_id="ahead-2")
            # queue one request early (the first download a quarter done: its rate measured for about a second)
            # and one late (90% done: measured for several seconds); both wait for the same model
            queued: list[tuple[str, float, float | None, float | None]] = []  # (label, t, estimate, speed)
            ids: list[str] = []
            deadline = time.monotonic() + 300
            for frac in (0.25, 0.9):
                while (pr := poll.call("downloads.progress", model_id="ahead-1")).get("downloaded_bytes", 0) < size_mb * MIB * frac:
                    if time.monotonic() > deadline:
                        raise RuntimeError("ahead-1 does not progress")
                    time.sleep(0.02)
                t = time.monotonic()
                q = c.call("fallback.queue", model_id="wanted", request={"prompt": f"bench {frac}"}, max_wait_time_minutes=60)
                queued.append((f"queued, ahead-1 {round(frac * 100)}%", t, q["estimated_wait_seconds"], pr.get("speed_mbps")))
                ids.append(q["queue_id"])
            t_half: float | None = None
            est_half: float | None = None
            speed_half: float | None = None
            done = threading.Event()
            t_ready: list[float] = []

            def watch_ready() -> None:
                for ev in c.events(timeout=600):
                    if ev["method"] == "queued_request_ready" and ev["params"].get("queue_id") == ids[0]:
                        t_ready.append(time.monotonic())
                        break
                done.set()

            th = threading.Thread(target=watch_ready, daemon=True)
            th.start()
            while not done.is_set():
                p = poll.call("downloads.progress", model_id="wanted")
                total = p.get("total_bytes") or size_mb * MIB
                if t_half is None and p.get("downloaded_bytes", 0) >= total / 2:
                    t_half = time.monotonic()
                    entry = next((e for e in poll.call("fallback.queue_list")["queue"] if e["queue_id"] == ids[0]), None)
                    est_half = entry["estimated_wait_seconds"] if entry else None
                    speed_half = p.get("speed_mbps")
                done.wait(0.02)
            th.join(5)
            if not t_ready:
                raise RuntimeError("queued_request_ready never arrived")

        def row(label: str, t: float | None, est: float | None, speed: float | None) -> dict[str, Any]:
            actual = None if t is None else t_ready[0] - t
            error = None if est is None or not actual else 100.0 * (est - actual) / actual
            return {"when": label, "estimate_s": est, "actual_s": actual, "error_percent": error, "scheduler_mbps": speed}

        rows = [row(*x) for x in queued] + [row("wanted at 50%", t_half, est_half, speed_half)]
        return {"size_mb": size_mb, "rate_mbps": rate_mbps, "rows": rows}


# --- 2. suggest latency -------------------------------------------------------------------
def write_big_catalog(home: Path, n: int, seed: int = 7) -> list[str]:
    rnd = random.Random(seed)
    home.mkdir(parents=True, exist_ok=True)
    parts, ids = [], []
    installed = []
    for i in range(n):
        mid = f"bench-{i:04d}"
        ids.append(mid)
        mtype = rnd.choice(TYPES)
        caps = [c for c in ("high_resolution", "fast_generation", "high_quality") if rnd.random() < 0.4]
        caps = ([mtype] if mtype != "text_image_to_video" else ["text_to_video", "image_to_video"]) + caps
        base = rnd.uniform(3, 40)
        res = rnd.sample(RESOLUTIONS, rnd.randint(1, 4))
        vram = "".join(f'"{r}" = {base * f:.2f}\n' for r, f in res)
        data = f"{mid}-weights".encode()
        sha = hashlib.sha256(data).hexdigest()
        parts.append(
            f'[[models]]\nid = "{mid}"\nversion = "1.0.0"\ndisplay_name = "Bench {i}"\nmodel_type = "{mtype}"\n'
            f"capabilities = [{', '.join(repr(c).replace(chr(39), chr(34)) for c in caps)}]\n"
            f'quality = "{rnd.choice(("low", "medium", "high"))}"\nspeed = "{rnd.choice(("slow", "medium", "fast"))}"\n'
            f'family = "fam{rnd.randrange(25)}"\n[models.vram_gb]\n{vram}'
            f'[[models.files]]\npath = "w.bin"\nurl = "http://127.0.0.1:9/{mid}"\nsize = {len(data)}\nsha256 = "{sha}"\n')
        if rnd.random() < 0.1:
            installed.append((mid, data))
    (home / "catalog.toml").write_text("".join(parts))
    for mid, data in installed:
        p = home / "models" / mid / "1.0.0" / "w.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return ids


def random_call(rnd: random.Random, ids: list[str]) -> dict[str, Any]:
    req: dict[str, Any] = {}
    if rnd.random() < 0.7:
        req["resolution"] = rnd.choice(RESOLUTIONS)[0]
    if rnd.random() < 0.5:
        req["has_image"] = rnd.random() < 0.4
    if rnd.random() < 0.3:
        req["quality"] = rnd.choice(("low", "medium", "high"))
    return {"requested_model": rnd.choice(ids), "requirements": req, "user_preferences": {"max_wait_time_minutes": rnd.choice((5, 30, 120))}}


def bench_suggest(n_models: int, calls: int) -> dict[str, Any]:
    with short_tmpdir() as d:
        home, sock = d / "home", d / "e.sock"
        ids = write_big_catalog(home, n_models)
        (home / "config.toml").write_text("[gpu]\nvram_gb = 24.0\n")
        rnd = random.Random(1)
        params = [random_call(rnd, ids) for _ in range(calls + 200)]
        with engine_process(home, sock), Client(sock, timeout=60) as c:
            n_sugg = []
            for p in params[:200]:
                c.call("fallback.suggest", p)  # warm-up
            lat = []
            t0 = time.perf_counter()
            for p in params[200:]:
                s = time.perf_counter()
                r = c.call("fallback.suggest", p)
                lat.append(time.perf_counter() - s)
                n_sugg.append(len(r["suggestions"]))
            rpc = summarize("fallback.suggest (socket)", lat, time.perf_counter() - t0)
        rpc["mean_suggestions"] = sum(n_sugg) / len(n_sugg)
        # the scoring alone, in this process, over the same catalog
        from mavail.core.catalog import load_catalog
        from mavail.core.fallback.scoring import FeatureIndex, Weights, build_query, rank

        cat = load_catalog(home / "catalog.toml", home / "catalog.d")
        t_build = time.perf_counter()
        idx = FeatureIndex().refresh(cat)
        build_ms = (time.perf_counter() - t_build) * 1000
        w = Weights.defaults()
        status = {mid: ("available" if (home / "models" / mid).exists() else "missing") for mid in ids}
        avail = lambda mid: (status[mid], 0.0 if status[mid] == "available" else None)  # noqa: E731
        lat = []
        for p in params[200:]:
            s = time.perf_counter()
            q = build_query(idx.by_id[p["requested_model"]], p["requirements"], p["user_preferences"], 24.0, 30.0)
            rank(idx, q, avail, w)
            lat.append(time.perf_counter() - s)
        pure = {"name": "scoring only (in-process)", "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000,
                "index_build_ms": build_ms}
        return {"models": n_models, "calls": calls, "rpc": rpc, "pure": pure}


def main() -> int:
    ap = argparse.ArgumentParser(description="fallback benchmarks")
    ap.add_argument("--part", choices=("wait", "suggest", "all"), default="all")
    ap.add_argument("--size-mb", type=int, default=100, help="size of each of the three models in the wait benchmark")
    ap.add_argument("--rate-mbps", type=float, default=20.0)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    if args.part in ("wait", "all"):
        r = bench_wait(args.size_mb, args.rate_mbps)
        print(f"wait-time accuracy: 3 models of {r['size_mb']} MiB, mirror at {r['rate_mbps']:g} MiB/s per connection, "
              "one download at a time, the request queued behind 2 downloads")
        print(f"{'when the estimate was given':<30}{'estimate s':>11}{'actual s':>10}{'error %':>9}{'sched. MiB/s':>13}")
        for x in r["rows"]:
            f = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
            print(f"{x['when']:<30}{f(x['estimate_s'], '.2f'):>11}{f(x['actual_s'], '.2f'):>10}{f(x['error_percent'], '+.1f'):>9}"
                  f"{f(x['scheduler_mbps'], '.1f'):>13}")
    if args.part in ("suggest", "all"):
        r = bench_suggest(args.models, args.calls)
        print(f"fallback.suggest over {r['models']} models, {r['calls']} calls "
              f"(mean {r['rpc']['mean_suggestions']:.1f} suggestions per answer)")
        print(f"{'measurement':<30}{'p50 ms':>9}{'p99 ms':>9}")
        print(f"{r['rpc']['name']:<30}{r['rpc']['p50_ms']:>9.3f}{r['rpc']['p99_ms']:>9.3f}")
        print(f"{r['pure']['name']:<30}{r['pure']['p50_ms']:>9.3f}{r['pure']['p99_ms']:>9.3f}")
        print(f"feature index build: {r['pure']['index_build_ms']:.1f} ms (once per catalog)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
