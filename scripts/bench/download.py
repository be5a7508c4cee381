"""Download engine figures against a local mirror, beside curl and aria2c measured in the same run.

1. one 1 GiB file, no throttle: verified mavail download time / `curl -o` time
2. a mirror capping each connection at 20 MiB/s, one 400 MiB file: mavail / `aria2c -x8 -s8`
   (plain httpx with 8 parallel ranges when aria2c is missing)
3. limit accuracy: measured rate with a global limit of 10 MiB/s and a per-download limit of 50 MiB/s
4. peak RSS of the engine while four 1 GiB files download (and four 256 MiB files, to show it does not grow)
5. p99 latency of `downloads.active` while a 1 GiB download runs
6. kill -9 at about half of a 1 GiB file, restart: bytes fetched again

    .venv/bin/python scripts/bench/download.py [--gib 1.0] [--skip 4,6]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import ROOT, engine_process, percentile, short_tmpdir

import psutil
import tomli_w

from mavail.testing.mirror import MIB, Mirror, Synthetic
from mavail.rpc.client import Client


def wait_done(c: Client, mids: list[str], timeout: float = 600.0, poll: float = 0.01) -> float:
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


def timed_download(c: Client, mid: str, **params) -> float:
    t0 = time.monotonic()
    c.call("downloads.start", {"model_id": mid, **params})
    return wait_done(c, [mid]) - t0


def drop_model(home: Path, mid: str) -> None:
    shutil.rmtree(home / "models" / mid, ignore_errors=True)


def run_curl(url: str, out: Path) -> tuple[float, float]:
    """(curl -o, curl -o then fsync of the file): curl verifies and flushes nothing; mavail does both."""
    t0 = time.monotonic()
    subprocess.run(["curl", "-s", "-o", str(out), url], check=True)
    t = time.monotonic() - t0
    fd = os.open(out, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    t_sync = time.monotonic() - t0
    out.unlink()
    return t, t_sync


def run_aria2(url: str, out: Path) -> tuple[float, str]:
    if shutil.which("aria2c"):
        t0 = time.monotonic()
        subprocess.run(["aria2c", "-q", "-x8", "-s8", "--file-allocation=none", "--allow-overwrite=true", "--auto-file-renaming=false",
                        "-d", str(out.parent), "-o", out.name, url], check=True)
        t = time.monotonic() - t0
        out.unlink()
        return t, "aria2c -x8 -s8"
    # fallback: 8 parallel ranges with plain httpx, no hashing
    import httpx

    size = int(httpx.head(url).headers["content-length"])
    t0 = time.monotonic()

    def part(i: int) -> None:
        a, b = size * i // 8, size * (i + 1) // 8 - 1
        with httpx.Client(timeout=60) as cl, cl.stream("GET", url, headers={"Range": f"bytes={a}-{b}"}) as r, open(out, "r+b") as fh:
            fh.seek(a)
            for chunk in r.iter_raw():
                fh.write(chunk)

    with open(out, "wb") as fh:
        fh.truncate(size)
    ts = [threading.Thread(target=part, args=(i,)) for i in range(8)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    t = time.monotonic() - t0
    out.unlink()
    return t, "httpx, 8 parallel ranges (aria2c not installed)"


class LatencyProbe(threading.Thread):
    """Calls downloads.active in a loop on its own connection and records latencies."""

    def __init__(self, sock: Path) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.lat: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with Client(self.sock, timeout=10) as c:
            while not self.stop.is_set():
                s = time.perf_counter()
                c.call("downloads.active")
                self.lat.append(time.perf_counter() - s)
                time.sleep(0.002)


class RssProbe(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.p = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.p.memory_info().rss)
            time.sleep(0.02)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0, help="size of the 'large' files in GiB (default 1)")
    ap.add_argument("--skip", default="", help="comma-separated case numbers to skip")
    args = ap.parse_args()
    skip = {int(x) for x in args.skip.split(",") if x}
    big = int(args.gib * 1024) * MIB
    out: dict[str, str] = {}
    with short_tmpdir() as tmp, Mirror() as m:
        home, sock = tmp / "home", tmp / "e.sock"
        home.mkdir()
        G = Synthetic("bench-large", big)
        M400 = Synthetic("bench-400", 400 * MIB)
        S256 = Synthetic("bench-256", 256 * MIB)
        L10, L50 = Synthetic("bench-l10", 50 * MIB), Synthetic("bench-l50", 250 * MIB)
        print(f"hashing the synthetic files ({big // MIB} MiB + 1,300 MiB) for the catalog…", flush=True)
        models = {"c1": {"w.bin": G}, "c5": {"w.bin": G}, "c2": {"w.bin": M400}, "l10": {"w.bin": L10}, "l50": {"w.bin": L50},
                  "k6": {"w.bin": G}}
        models.update({f"r{i}": {"w.bin": G} for i in range(4)})
        models.update({f"s{i}": {"w.bin": S256} for i in range(4)})
        (home / "catalog.toml").write_text("".join(m.add_model(mid, f) for mid, f in models.items()))
        (home / "config.toml").write_text(tomli_w.dumps({"storage": {"min_free_gb": 0.0}}))
        m.faults("c2/w.bin").throttle_bps = 20 * MIB

        with engine_process(home, sock) as proc, Client(sock, timeout=30) as c:
            if 1 not in skip:
                curl, curl_sync = run_curl(m.url("c1/w.bin"), tmp / "curl.bin")
                mav = timed_download(c, "c1")
                drop_model(home, "c1")
                out["1"] = (f"{big // MIB} MiB, no throttle: mavail {mav:.2f} s (verified, fsynced) / curl -o {curl:.2f} s = {mav / curl:.2f}"
                            f"  (goal <= 1.1); / curl -o + fsync {curl_sync:.2f} s = {mav / curl_sync:.2f}")
                print(out["1"], flush=True)
            if 5 not in skip:
                probe = LatencyProbe(sock)
                probe.start()
                time.sleep(0.2)
                timed_download(c, "c5")
                probe.stop.set()
                probe.join()
                drop_model(home, "c5")
                out["5"] = (f"downloads.active during a 1 GiB download: p50 {percentile(probe.lat, 50) * 1000:.2f} ms, "
                            f"p99 {percentile(probe.lat, 99) * 1000:.2f} ms over {len(probe.lat)} calls  (goal p99 < 10 ms)")
                print(out["5"], flush=True)
            if 2 not in skip:
                ref, refname = run_aria2(m.url("c2/w.bin"), tmp / "aria.bin")
                c.call("config.update", {"patch": {"downloads": {"parallel_ranges": 8}}})
                mav = timed_download(c, "c2")
                c.call("config.update", {"patch": {"downloads": {"parallel_ranges": 4}}})
                drop_model(home, "c2")
                out["2"] = (f"400 MiB, 20 MiB/s per connection: mavail (8 ranges) {mav:.2f} s / {refname} {ref:.2f} s = {mav / ref:.2f}"
                            "  (goal <= 1.1)")
                print(out["2"], flush=True)
            if 3 not in skip:
                c.call("config.update", {"patch": {"downloads": {"bandwidth_limit_mbps": 10.0}}})
                t10 = timed_download(c, "l10")
                c.call("config.update", {"patch": {"downloads": {"bandwidth_limit_mbps": 0.0}}})
                t50 = timed_download(c, "l50", bandwidth_limit_mbps=50.0)
                r10, r50 = L10.size / MIB / t10, L50.size / MIB / t50
                drop_model(home, "l10")
                drop_model(home, "l50")
                out["3"] = (f"limit accuracy: global 10 MiB/s -> {r10:.2f} MiB/s ({(r10 / 10 - 1) * 100:+.1f}%), "
                            f"per-download 50 MiB/s -> {r50:.2f} MiB/s ({(r50 / 50 - 1) * 100:+.1f}%)  (goal within 5%)")
                print(out["3"], flush=True)
            if 4 not in skip:
                c.call("config.update", {"patch": {"downloads": {"max_concurrent": 4}}})
                peaks = []
                for prefix in ("s", "r"):
                    rss = RssProbe(proc.pid)
                    rss.start()
                    for i in range(4):
                        c.call("downloads.start", {"model_id": f"{prefix}{i}"})
                    wait_done(c, [f"{prefix}{i}" for i in range(4)], poll=0.05)
                    rss.stop.set()
                    rss.join()
                    peaks.append(rss.peak / MIB)
                    for i in range(4):
                        drop_model(home, f"{prefix}{i}")
                out["4"] = (f"peak engine RSS, four files at once: {peaks[1]:.0f} MiB with 4 x {big // MIB} MiB, "
                            f"{peaks[0]:.0f} MiB with 4 x 256 MiB  (goal < 150 MiB, flat)")
                print(out["4"], flush=True)

        if 6 not in skip:
            m.faults("k6/w.bin").throttle_bps = 64 * MIB  # x4 ranges: about 4 s for 1 GiB, so the kill lands mid-file
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
                    c.call("downloads.start", {"model_id": "k6"})
                    while c.call("downloads.progress", {"model_id": "k6"})["downloaded_bytes"] < big // 2:
                        time.sleep(0.005)
                    at = c.call("downloads.progress", {"model_id": "k6"})["downloaded_bytes"]
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            time.sleep(0.5)
            before = m.bytes_served.get("k6/w.bin", 0)
            m.faults("k6/w.bin").throttle_bps = 0
            with engine_process(home, sock), Client(sock, timeout=30) as c:
                wait_done(c, ["k6"])
            total = m.bytes_served["k6/w.bin"]
            again = total - big
            limit = big * 0.01 + 16 * MIB
            out["6"] = (f"kill -9 at {at / big * 100:.0f}% of {big // MIB} MiB, restart: {again / MIB:.1f} MiB fetched again "
                        f"(served {before / MIB:.0f} MiB before the kill, {total / MIB:.0f} MiB in all)  (goal <= {limit / MIB:.1f} MiB)")
            print(out["6"], flush=True)
    print("\n## summary")
    for k in sorted(out):
        print(f"{k}. {out[k]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
