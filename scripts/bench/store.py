"""A shared model store: three engines on one `models/` directory and one model, beside one engine alone.

Each engine has its own home whose `models/` is a link to one shared directory (`store.shared = true`);
the origin is the test mirror on 127.0.0.1. Figures:

1. bytes the mirror served ÷ the model's size, with three engines pulling it at once      (goal 1.00)
2. time until all three report it available ÷ the time one engine alone takes           (goal <= 1.1)

Rounds interleave one engine alone and three together, each after the disk has written back the
round before, so a slow moment of the disk falls on both sides; the median of the rounds' ratios is
the figure.

    .venv/bin/python scripts/bench/store.py [--gib 2.0] [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Iterator

from _common import engine_process, short_tmpdir

import tomlkit

from mavail.rpc.client import Client
from mavail.testing.mirror import MIB, Mirror, Synthetic

CONFIG = {"storage": {"min_free_gb": 0.0}, "store": {"shared": True}}


def _homes(tmp: Path, mirror: Mirror, size: int, n: int, tag: str) -> list[Path]:
    """`n` homes whose `models/` links to one shared directory, with the same catalog and config."""
    shared = tmp / f"shared-{tag}"
    shared.mkdir()
    catalog = mirror.add_model(f"big-{tag}", {"w.bin": Synthetic(f"store-{tag}", size)})
    homes = []
    for i in range(n):
        h = tmp / f"home-{tag}-{i}"
        h.mkdir()
        (h / "models").symlink_to(shared)
        (h / "catalog.toml").write_text(catalog)
        (h / "config.toml").write_text(tomlkit.dumps(CONFIG))
        homes.append(h)
    return homes


@contextlib.contextmanager
def _engines(tmp: Path, homes: list[Path]) -> Iterator[list[Path]]:
    with contextlib.ExitStack() as stack:
        socks = []
        for i, h in enumerate(homes):
            sock = tmp / f"{h.name}.sock"
            stack.enter_context(engine_process(h, sock))
            socks.append(sock)
        yield socks


def _pull_all(socks: list[Path], model_id: str, timeout: float = 900.0) -> tuple[float, list[float]]:
    """Start the model's download on every engine at once; seconds until every engine reports it available, and
    each engine's own."""
    clients = [Client(s, timeout=30) for s in socks]
    try:
        t0 = time.monotonic()
        for c in clients:
            c.call("downloads.start", {"model_id": model_id})
        left = set(range(len(clients)))
        each = [0.0] * len(clients)
        while left:
            for i in list(left):
                if clients[i].call("models.status", {"model_id": model_id}).get("is_available"):
                    left.discard(i)
                    each[i] = time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(model_id)
            time.sleep(0.02)
        return time.monotonic() - t0, each
    finally:
        for c in clients:
            c.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=3, help="rounds of (one alone, three together), interleaved")
    args = ap.parse_args()
    size = int(args.gib * 1024) * MIB
    rounds: list[tuple[float, float, list[float], int, int]] = []  # (alone s, three s, each engine's s, bytes alone, three)
    with short_tmpdir() as tmp, Mirror() as mirror:
        for r in range(args.runs):
            # the disk first writes back what the run before left dirty, so neither side pays for the other
            os.sync()
            alone_homes = _homes(tmp, mirror, size, 1, f"alone{r}")
            mirror.reset_counters()
            with _engines(tmp, alone_homes) as socks:
                alone = _pull_all(socks, f"big-alone{r}")[0]
            served_alone = mirror.bytes_served.get(f"big-alone{r}/w.bin", 0)
            os.sync()
            three_homes = _homes(tmp, mirror, size, 3, f"three{r}")
            mirror.reset_counters()
            with _engines(tmp, three_homes) as socks:
                three, each = _pull_all(socks, f"big-three{r}")
            rounds.append((alone, three, each, served_alone, mirror.bytes_served.get(f"big-three{r}/w.bin", 0)))
            for h in alone_homes + three_homes:  # free the space for the next round
                shutil.rmtree(h, ignore_errors=True)
            shutil.rmtree(tmp / f"shared-alone{r}", ignore_errors=True)
            shutil.rmtree(tmp / f"shared-three{r}", ignore_errors=True)
    ratios = sorted(t / a for a, t, *_ in rounds)
    worst_bytes = max(b for *_, b in rounds)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"1. three engines, one {size // MIB} MiB model: the mirror served at most {worst_bytes} bytes = "
          f"{worst_bytes / size:.4f} x the model (goal 1.00; one engine alone: "
          f"{max(b for *_, b, _ in rounds) / size:.4f} x)")
    print(f"2. time until all three report it available / one engine alone, the median of {len(rounds)} interleaved rounds: "
          f"{statistics.median(ratios):.2f} (goal <= 1.1; each round's ratio {' '.join(f'{x:.2f}' for x in ratios)})")
    for i, (a, t, each, _, _) in enumerate(rounds):
        print(f"   round {i + 1}: alone {a:.2f} s, three {t:.2f} s (each engine: {', '.join(f'{x:.2f}' for x in each)} s)")
    print(f"   ({os.cpu_count()} cores, load average {load})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
