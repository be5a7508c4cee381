"""A shared model store: three engines on one `models/` directory and one model, beside one engine alone.

Each engine has its own home whose `models/` is a link to one shared directory (`store.shared = true`);
the origin is nginx on 127.0.0.1 when it is installed, else the Python test mirror. Figures:

1. bytes the origin served ÷ the model's size, with three engines pulling it at once      (goal 1.00)
2. time until all three report it available ÷ the time one engine alone takes           (goal <= 1.1)

Rounds run one engine alone and three together, in an order that alternates, each after the disk has
written back the run before, so a slow moment of the disk falls on both sides; the median of the
rounds' ratios is the figure.

    .venv/bin/python scripts/bench/store.py [--gib 2.0] [--runs 4]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Iterator

from _common import LineClient, engine_process, short_tmpdir
from origins import MIB, best_origin, model_toml

import tomlkit

CONFIG = {"storage": {"min_free_gb": 0.0}, "store": {"shared": True}}


def _homes(tmp: Path, catalog: str, n: int, tag: str) -> list[Path]:
    """`n` homes whose `models/` links to one shared directory, with the same catalog and config."""
    shared = tmp / f"shared-{tag}"
    shared.mkdir()
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
        for h in homes:
            sock = tmp / f"{h.name}.sock"
            stack.enter_context(engine_process(h, sock))
            socks.append(sock)
        yield socks


def _pull_all(socks: list[Path], model_id: str, timeout: float = 900.0) -> tuple[float, list[float]]:
    """Start the model's download on every engine at once; seconds until every engine reports it available, and
    each engine's own (polled through the lean client, so the polling weighs little on the machine)."""
    clients = [LineClient(s) for s in socks]
    try:
        t0 = time.monotonic()
        for c in clients:
            c.call("downloads.start", {"model_id": model_id})
        left = set(range(len(clients)))
        each = [0.0] * len(clients)
        while left:
            for i in list(left):
                if clients[i].call("models.status", {"model_id": model_id})["result"].get("is_available"):
                    left.discard(i)
                    each[i] = time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(model_id)
            time.sleep(0.02)
        return time.monotonic() - t0, each
    finally:
        for c in clients:
            c.close()


def _one(tmp: Path, origin: Any, size: int, sha: str, n: int, tag: str) -> tuple[float, list[float], int]:
    """One pull by `n` engines of a fresh copy of the model: (seconds until all available, each engine's, bytes served)."""
    name = f"{tag}.bin"
    origin.alias(name, "model.bin")
    homes = _homes(tmp, model_toml(f"big-{tag}", origin.url(name), size, sha), n, tag)
    os.sync()  # the disk first writes back what the run before left dirty, so neither side pays for the other
    try:
        with _engines(tmp, homes) as socks:
            t, each = _pull_all(socks, f"big-{tag}")
        return t, each, origin.served(name)
    finally:
        for h in homes:  # free the space for the next run
            shutil.rmtree(h, ignore_errors=True)
        shutil.rmtree(tmp / f"shared-{tag}", ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=4, help="rounds of (one alone, three together), the order alternating")
    args = ap.parse_args()
    size = int(args.gib * 1024) * MIB
    rounds: list[tuple[float, float, list[float], int, int]] = []  # (alone s, three s, each engine's s, bytes alone, three)
    with short_tmpdir() as tmp:
        origin = best_origin(tmp)
        try:
            sha = origin.add("model.bin", size)
            print(f"origin: {origin.kind}", flush=True)
            for r in range(args.runs):
                order = ("alone", "three") if r % 2 == 0 else ("three", "alone")
                got = {kind: _one(tmp, origin, size, sha, 1 if kind == "alone" else 3, f"{kind}{r}") for kind in order}
                (alone, _, served_alone), (three, each, served_three) = got["alone"], got["three"]
                rounds.append((alone, three, each, served_alone, served_three))
                print(f"   round {r + 1} ({' then '.join(order)}): alone {alone:.2f} s, three {three:.2f} s (each engine: "
                      f"{', '.join(f'{x:.2f}' for x in each)} s)", flush=True)
        finally:
            origin.close()
    ratios = sorted(t / a for a, t, *_ in rounds)
    worst_bytes = max(b for *_, b in rounds)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"1. three engines, one {size // MIB} MiB model: the origin served at most {worst_bytes} bytes = "
          f"{worst_bytes / size:.4f} x the model (goal 1.00; one engine alone: "
          f"{max(b for *_, b, _ in rounds) / size:.4f} x)")
    print(f"2. time until all three report it available / one engine alone, the median of {len(rounds)} rounds: "
          f"{statistics.median(ratios):.2f} (goal <= 1.1; each round's ratio {' '.join(f'{x:.2f}' for x in ratios)})")
    print(f"   ({os.cpu_count()} cores, load average {load})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
