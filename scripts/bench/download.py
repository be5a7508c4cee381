"""Download engine figures against a local origin, each beside its reference measured in the same run, at its best.

The origin is nginx (sendfile, `limit_rate` for the per-connection cap) when it is installed: then the
figures are the engine's and curl's/aria2c's alone. Without nginx the Python test mirror serves, and its
own CPU cost is in every figure (the script says so). The engine runs on its defaults everywhere except
where a case needs a setting (four downloads at once, a bandwidth limit).

1. one 1 GiB file, no throttle: best verified mavail download / best `curl -o FILE`            (goal <= 1.1)
2. one 400 MiB file, 20 MiB/s per connection: mavail / `aria2c -x8 -s8 -k1M`, and / `-x16 -s16`  (goal <= 1.0)
3. peak engine RSS while four 1 GiB files download at once, and four 4 GiB files              (goal < 100 MiB)
4. p99 of `downloads.active` and `session.hello` during a 1 GiB download, beside the Python floor's (goal < 5 ms)
5. limit accuracy: a global limit of 10 MiB/s, a per-download limit of 50 MiB/s                (goal within 5%)
7. kill -9 at half of a 1 GiB file, restart: bytes fetched again                                (goal <= 1% + 16 MiB)

    .venv/bin/python scripts/bench/download.py [--gib 1.0] [--big-gib 4.0] [--skip 3,7] [--runs 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import ROOT, LineClient, engine_process, floor_server, percentile, short_tmpdir
from origins import MIB, best_origin, model_toml

import psutil
import tomlkit

from mavail.rpc.client import Client


# --- measuring -----------------------------------------------------------------------
def wait_done(c: Client, mids: list[str], timeout: float = 900.0, poll: float = 0.01) -> float:
    """Poll until every model's download is completed; return the time it ended."""
    deadline = time.monotonic() + timeout
    left = set(mids)
    while left:
        for mid in list(left):
            p = c.call("downloads.progress", {"model_id": mid})
            if p["status"] == "completed":
                left.discard(mid)
            elif p["status"] in ("failed", "paused", "cancelled"):
                raise RuntimeError(f"{mid}: {p['status']} {p['error_code']}: {p['error_message']}")
        if left:
            if time.monotonic() > deadline:
                raise TimeoutError(mids)
            time.sleep(poll)
    return time.monotonic()


def timed_download(c: Client, home: Path, mid: str, **params) -> float:
    """Seconds for a verified, installed download of `mid`; the installed copy is removed after."""
    t0 = time.monotonic()
    c.call("downloads.start", {"model_id": mid, **params})
    t = wait_done(c, [mid]) - t0
    drop_model(home, mid)
    return t


def drop_model(home: Path, mid: str) -> None:
    shutil.rmtree(home / "models" / mid, ignore_errors=True)


def run_tool(argv: list[str], out: Path) -> float:
    """Seconds `argv` takes to write `out` (then removed)."""
    t0 = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t = time.monotonic() - t0
    if out != Path(os.devnull):
        out.unlink(missing_ok=True)
    return t


def curl(url: str, out: Path) -> float:
    return run_tool(["curl", "-s", "-o", str(out), url], out)


def curl_durable(url: str, out: Path) -> float:
    """`curl -o FILE` and then fdatasync of FILE: the same bytes made as durable as mavail makes them."""
    t0 = time.monotonic()
    subprocess.run(["curl", "-s", "-o", str(out), url], check=True)
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
    took = time.monotonic() - t0
    out.unlink()
    return took


def durable_write_floor(out: Path, size: int) -> float:
    """The disk's floor for `size` durable bytes: `dd` from /dev/zero with conv=fdatasync, 8 MiB blocks."""
    t0 = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", f"of={out}", "bs=8M", f"count={size // (8 * MIB)}", "conv=fdatasync", "status=none"],
                   check=True)
    took = time.monotonic() - t0
    out.unlink()
    return took


def aria2(url: str, out: Path, n: int) -> float:
    return run_tool(["aria2c", "-q", f"-x{n}", f"-s{n}", "-k1M", "--file-allocation=none", "--allow-overwrite=true",
                     "--auto-file-renaming=false", "-d", str(out.parent), "-o", out.name, url], out)


class LatencyProbe(threading.Thread):
    """Calls `method` in a loop through a lean client (`LineClient`) on its own connection and records latencies."""

    def __init__(self, client: LineClient, method: str, label: str) -> None:
        super().__init__(daemon=True)
        self.client, self.method, self.label = client, method, label
        self.lat: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        perf = time.perf_counter
        while not self.stop.is_set():
            s = perf()
            self.client.call(self.method)
            self.lat.append(perf() - s)
            time.sleep(0.002)


class RssProbe(threading.Thread):
    """The peak RSS of a process, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.p = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.p.memory_info().rss)
            time.sleep(0.02)


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0, help="size of the 'large' file in GiB (default 1)")
    ap.add_argument("--big-gib", type=float, default=4.0, help="size of each of the four files of case 3's second figure (default 4)")
    ap.add_argument("--skip", default="", help="comma-separated case numbers to skip")
    ap.add_argument("--runs", type=int, default=2, help="runs of cases 1 and 2, each side at its best (default 2)")
    args = ap.parse_args()
    skip = {int(x) for x in args.skip.split(",") if x}
    big, huge = int(args.gib * 1024) * MIB, int(args.big_gib * 1024) * MIB
    missing = [t for t in ("curl", "aria2c") if not shutil.which(t)]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install -y curl aria2): the cases that need them are skipped", flush=True)
    out: dict[str, str] = {}
    print(f"cores: {os.cpu_count()}, {load()}", flush=True)
    with short_tmpdir() as tmp:
        origin = best_origin(tmp)
        try:
            print(f"origin: {origin.kind}", flush=True)
            home, sock = tmp / "home", tmp / "e.sock"
            home.mkdir()
            print("writing the origin's files…", flush=True)
            sha = {"big": origin.add("big.bin", big), "m400": origin.add("m400.bin", 400 * MIB),
                   "l64": origin.add("l64.bin", 64 * MIB), "l256": origin.add("l256.bin", 256 * MIB)}
            cat = [model_toml("c1", origin.url("big.bin"), big, sha["big"]), model_toml("c4", origin.url("big.bin"), big, sha["big"]),
                   model_toml("c2", origin.url("m400.bin", 20), 400 * MIB, sha["m400"]),
                   model_toml("l10", origin.url("l64.bin"), 64 * MIB, sha["l64"]),
                   model_toml("l50", origin.url("l256.bin"), 256 * MIB, sha["l256"])]
            origin.alias("big-k.bin", "big.bin")
            cat.append(model_toml("k7", origin.url("big-k.bin", 16), big, sha["big"]))
            for i in range(4):
                origin.alias(f"big{i}.bin", "big.bin")
                cat.append(model_toml(f"s{i}", origin.url(f"big{i}.bin"), big, sha["big"]))
            if 3 not in skip and huge:
                sha["huge"] = origin.add("huge.bin", huge)
                for i in range(4):
                    origin.alias(f"huge{i}.bin", "huge.bin")
                    cat.append(model_toml(f"h{i}", origin.url(f"huge{i}.bin"), huge, sha["huge"]))
            (home / "catalog.toml").write_text("".join(cat))
            (home / "config.toml").write_text(tomlkit.dumps({"storage": {"min_free_gb": 0.0}}))
            run_cases(args, skip, origin, home, sock, tmp, big, huge, out)
        finally:
            origin.close()
    print(f"\n## summary ({load()})")
    for k in sorted(out):
        print(f"{k}. {out[k]}")
    return 0


def run_cases(args, skip, origin, home: Path, sock: Path, tmp: Path, big: int, huge: int, out: dict[str, str]) -> None:
    runs = max(1, args.runs)
    with engine_process(home, sock) as proc, Client(sock, timeout=30) as c:
        if 1 not in skip and shutil.which("curl"):
            url = origin.url("big.bin")
            ref_null = min(curl(url, Path("/dev/null")) for _ in range(runs))
            ref, durable, floor, mav = [], [], [], []
            for _ in range(runs):
                ref.append(curl(url, tmp / "curl.bin"))
                durable.append(curl_durable(url, tmp / "curl.bin"))
                floor.append(durable_write_floor(tmp / "dd.bin", big))
                mav.append(timed_download(c, home, "c1"))
            out["1"] = (f"{big // MIB} MiB, no throttle: mavail {min(mav):.2f} s (verified, fsynced) / curl -o FILE {min(ref):.2f} s"
                        f" = {min(mav) / min(ref):.2f}  (goal <= 1.1); / curl -o FILE + fdatasync {min(durable):.2f} s = "
                        f"{min(mav) / min(durable):.2f}; floor: dd conv=fdatasync of as many bytes {min(floor):.2f} s, "
                        f"curl -o /dev/null {ref_null:.2f} s; runs: mavail "
                        + " ".join(f"{t:.2f}" for t in mav) + ", curl " + " ".join(f"{t:.2f}" for t in ref) + f"; {load()}")
            print(out["1"], flush=True)
        if 2 not in skip and shutil.which("aria2c"):
            url = origin.url("m400.bin", 20)
            a8, a16, mav = [], [], []
            for _ in range(runs):
                a8.append(aria2(url, tmp / "aria.bin", 8))
                a16.append(aria2(url, tmp / "aria.bin", 16))
                mav.append(timed_download(c, home, "c2"))
            out["2"] = (f"400 MiB, 20 MiB/s per connection: mavail {min(mav):.2f} s / aria2c -x8 -s8 -k1M {min(a8):.2f} s = "
                        f"{min(mav) / min(a8):.2f}  (goal <= 1.0); / aria2c -x16 -s16 -k1M {min(a16):.2f} s = {min(mav) / min(a16):.2f}"
                        f"; {load()}")
            print(out["2"], flush=True)
        if 4 not in skip:
            # the Python floor answers beside the engine, through the same lean client: what the machine allows while the
            # download loads both cores (its bytes, the origin, the kernel's loopback and writeback)
            with contextlib.ExitStack() as stack:
                floor = stack.enter_context(floor_server(c.call("session.hello"), tmp))
                ours = [stack.enter_context(contextlib.closing(LineClient(sock))) for _ in range(2)]
                probes = [LatencyProbe(ours[0], "downloads.active", "downloads.active"),
                          LatencyProbe(ours[1], "session.hello", "session.hello"),
                          LatencyProbe(floor, "hello", "floor hello (uvloop)")]
                for p in probes:
                    p.start()
                time.sleep(0.2)
                t = timed_download(c, home, "c4")
                for p in probes:
                    p.stop.set()
                    p.join()
            out["4"] = f"during a {big // MIB} MiB download ({t:.2f} s): " + "; ".join(
                f"{p.label} p50 {percentile(p.lat, 50) * 1000:.2f} ms, p99 {percentile(p.lat, 99) * 1000:.2f} ms ({len(p.lat)} calls)"
                for p in probes) + f"  (goal p99 < 5 ms; {load()})"
            print(out["4"], flush=True)
        if 5 not in skip:
            c.call("config.update", {"patch": {"downloads": {"bandwidth_limit_mbps": 10.0}}})
            t10 = timed_download(c, home, "l10")
            c.call("config.update", {"patch": {"downloads": {"bandwidth_limit_mbps": 0.0}}})
            t50 = timed_download(c, home, "l50", bandwidth_limit_mbps=50.0)
            r10, r50 = 64 / t10, 256 / t50
            out["5"] = (f"limit accuracy: global 10 MiB/s -> {r10:.2f} MiB/s ({(r10 / 10 - 1) * 100:+.1f}%), "
                        f"per-download 50 MiB/s -> {r50:.2f} MiB/s ({(r50 / 50 - 1) * 100:+.1f}%)  (goal within 5%)")
            print(out["5"], flush=True)
        if 3 not in skip:
            c.call("config.update", {"patch": {"downloads": {"max_concurrent": 4}}})
            peaks = []
            for prefix, size in (("s", big), ("h", huge)):
                if not size:
                    continue
                rss = RssProbe(proc.pid)
                rss.start()
                t0 = time.monotonic()
                for i in range(4):
                    c.call("downloads.start", {"model_id": f"{prefix}{i}"})
                t = wait_done(c, [f"{prefix}{i}" for i in range(4)], poll=0.05) - t0
                rss.stop.set()
                rss.join()
                peaks.append(f"{rss.peak / MIB:.0f} MiB with 4 x {size // MIB} MiB ({4 * size / MIB / t:.0f} MiB/s)")
                for i in range(4):
                    drop_model(home, f"{prefix}{i}")
            c.call("config.update", {"patch": {"downloads": {"max_concurrent": 3}}})
            out["3"] = "peak engine RSS, four files at once: " + ", ".join(peaks) + "  (goal < 100 MiB, flat)"
            print(out["3"], flush=True)
    if 7 not in skip:
        kill_case(origin, home, sock, big, out)


def kill_case(origin, home: Path, sock: Path, big: int, out: dict[str, str]) -> None:
    """kill -9 at half of a 1 GiB file (each connection capped at 16 MiB/s so the kill lands mid-file), restart."""
    proc = subprocess.Popen([sys.executable, "-m", "mavail.rpc.cli", "engine", "--home", str(home), "--socket", str(sock)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with Client(sock, timeout=5) as c:
                    c.call("session.hello")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with Client(sock, timeout=30) as c:
            c.call("downloads.start", {"model_id": "k7"})
            while c.call("downloads.progress", {"model_id": "k7"})["downloaded_bytes"] < big // 2:
                time.sleep(0.005)
            at = c.call("downloads.progress", {"model_id": "k7"})["downloaded_bytes"]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(1.0)  # the origin logs each aborted response once it sees the connection close
    before = origin.served("big-k.bin")
    with engine_process(home, sock), Client(sock, timeout=30) as c:
        wait_done(c, ["k7"])
    time.sleep(0.5)
    total = origin.served("big-k.bin")
    drop_model(home, "k7")
    again = total - big
    limit = big * 0.01 + 16 * MIB
    out["7"] = (f"kill -9 at {at / big * 100:.0f}% of {big // MIB} MiB, restart: {again / MIB:.1f} MiB fetched again "
                f"(served {before / MIB:.0f} MiB before the kill, {total / MIB:.0f} MiB in all)  (goal <= {limit / MIB:.1f} MiB)")
    print(out["7"], flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
