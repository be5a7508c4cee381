"""CPU of the TUI and of the engine it watches: a 1,000-model catalog, 8 downloads running, and idle.

An engine subprocess serves a 1,000-model catalog; 8 of the models are real
files on a local mirror (this process), throttled so the downloads run for the
whole measurement. The TUI runs as `mavail tui` in a pseudo-terminal of 80x24
whose output is read and thrown away, so its rendering to a terminal is part
of the figure. CPU is measured from the processes' own CPU times (user+system)
over a window, as % of one core.

Phases: engine idle without TUI; engine idle with the TUI attached (Models
tab); 8 downloads with the TUI on the Downloads tab, then on the Models tab;
the same downloads with the TUI detached (the engine's download work alone).

Between the download phases, with the 8 downloads running, key presses are
timed from the write to the terminal until the TUI has drawn what answers
them: switching tabs, opening help and closing it, opening the filter, sorting
the 1,000-row Models table, and down-arrow scrolling it by a row. Beside each
kind, how long the TUI's event loop ran on a CPU and waited for one meanwhile
(/proc/PID/schedstat of its main thread): its own work, and its wait for a
core on a machine shared with other work. `--profile FILE` records the TUI
process with py-spy (collapsed stacks, `--nonblocking`) while the keys are
pressed.

The engine runs on its default settings: its `downloads.max_connections` (16)
is shared by the 8 downloads, 2 connections each, 16 in all at the mirror's
per-connection rate.

    .venv/bin/python scripts/bench/tui.py [--models 1000] [--downloads 8] [--window 10] [--profile FILE]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from _common import ROOT, engine_process, percentile, placeholder_models, short_tmpdir

from mavail.core.config import SCHEMA
from mavail.testing.mirror import MIB, Mirror, Synthetic
from mavail.rpc.client import Client

DEFAULTS = {s.key: s.default for s in SCHEMA}
GOAL_MS = 100.0
SORT_LABELS = ("Model", "Status", "Ver", "Size", "Health", "Use", "Upd", "Prog")
"""The Models table's columns, in the order `s` sorts by them (each ascending, then descending)."""


def connections_per_download(downloads: int) -> int:
    """Connections each of `downloads` running at once opens on the engine's defaults (their share of max_connections)."""
    return max(1, min(DEFAULTS["downloads.parallel_ranges"], DEFAULTS["downloads.max_connections"] // max(1, downloads)))


def write_home(home: Path, mirror: Mirror, n_models: int, n_big: int, big_mib: int, concurrent: int) -> list[str]:
    """The catalog (n_big real downloads, the rest never fetched) and a config; the ids to download."""
    home.mkdir(parents=True, exist_ok=True)
    parts, big = [], []
    for i in range(n_big):
        mid = f"bench-dl-{i:02d}"
        big.append(mid)
        parts.append(mirror.add_model(mid, {"model.safetensors": Synthetic(mid, big_mib * MIB)}))
    parts.append(placeholder_models(n_models - n_big))
    (home / "catalog.toml").write_text("".join(parts))
    (home / "config.toml").write_text(f"[downloads]\nmax_concurrent = {concurrent}\n[storage]\nmin_free_gb = 0.0\n")
    return big


@dataclass(frozen=True)
class Answer:
    """One key press answered on screen: seconds until then, and of those the seconds the TUI's event loop ran on
    a CPU and waited for one (its share of a machine other work also uses)."""

    wall_s: float
    run_s: float
    wait_s: float


class PtyTui:
    """`mavail tui` in an 80x24 pseudo-terminal; output drained by a thread."""

    def __init__(self, sock: Path) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(ROOT), "COLUMNS": "80", "LINES": "24"}
        self.proc = subprocess.Popen([sys.executable, "-m", "mavail.rpc.cli", "tui", "--socket", str(sock)], cwd=ROOT, env=env,
                                     stdin=slave, stdout=slave, stderr=slave, close_fds=True, start_new_session=True)
        os.close(slave)
        self.master = master
        self.bytes_out = 0
        self.tail = b""
        self._stop = False
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.bytes_out += len(data)
            self.tail = (self.tail + data)[-200_000:]

    def wait_for(self, text: bytes, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.tail:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the TUI did not show {text!r}")
            time.sleep(0.05)

    def press(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def scheduled_ns(self) -> tuple[int, int]:
        """Nanoseconds the TUI's main thread (its event loop) has run on a CPU, and has waited for one."""
        with open(f"/proc/{self.proc.pid}/schedstat") as f:
            run, wait, _ = f.read().split()
        return int(run), int(wait)

    def answer(self, keys: bytes, marker: bytes, timeout: float = 10.0) -> Answer:
        """From writing `keys` to the terminal until the TUI has drawn `marker` after them: the time, and how much
        of it the TUI's event loop ran and waited for a CPU."""
        since = self.bytes_out
        run0, wait0 = self.scheduled_ns()
        t0 = time.monotonic()
        self.press(keys)
        while True:
            new = self.bytes_out - since
            if new > 0 and marker in self.tail[-new:]:
                wall = time.monotonic() - t0
                run, wait = self.scheduled_ns()
                return Answer(wall, (run - run0) / 1e9, (wait - wait0) / 1e9)
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the TUI did not draw {marker!r} after {keys!r}")
            time.sleep(0.001)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.press(b"q")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stop = True
        os.close(self.master)


def key_presses(tui: PtyTui, big: list[str], n_models: int) -> dict[str, list[Answer]]:
    """Each key press answered on screen, by kind; the TUI starts on the Models tab.

    Each press waits for text the answer draws and that was not on the screen
    just before it, searched in what the TUI wrote after the key."""
    out: dict[str, list[Answer]] = {}

    def timed(kind: str, keys: bytes, marker: bytes, pause: float = 0.3) -> None:
        out.setdefault(kind, []).append(tui.answer(keys, marker))
        time.sleep(pause)

    for _ in range(5):
        timed("switch tab (2, 1)", b"2", b"Pause")  # the Downloads tab's footer
        timed("switch tab (2, 1)", b"1", b"Get")  # the Models tab's footer
    for _ in range(5):
        timed("? help", b"?", b"mavail keys")
        timed("? closes help", b"?", b"Get")
    for _ in range(5):
        timed("/ opens the filter", b"/", b"enter keeps it")  # the filter box's placeholder
        tui.press(b"\r")  # enter on the empty filter hides it again
        time.sleep(0.3)
    # every sort of the Models table, each named in its tab's title; then back to source order and by id again
    for label in SORT_LABELS:
        for arrow in ("\u2191", "\u2193"):
            timed(f"s sorts {n_models:,} rows", b"s", f"{arrow}{label}".encode())
    tui.press(b"s")
    time.sleep(0.3)
    timed(f"s sorts {n_models:,} rows", b"s", f"\u2191{SORT_LABELS[0]}".encode())
    # rows by id: the downloads, then bench-model-0000...; down-arrow past the screen scrolls by one row,
    # and each press shows a row that was never drawn before
    order = sorted(big) + [f"bench-model-{i:04d}" for i in range(n_models - len(big))]
    start = 30
    for _ in range(start):
        tui.press(b"\x1b[B")
        time.sleep(0.05)
    time.sleep(0.5)
    for row in range(start + 1, start + 11):
        timed(f"down-arrow scrolls {n_models:,} rows", b"\x1b[B", order[row].encode(), pause=0.2)
    return out


def start_profile(path: str, pid: int) -> subprocess.Popen[bytes]:
    """py-spy recording `pid` into `path` (collapsed stacks) without pausing it, until stop_profile."""
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen([str(spy), "record", "--nonblocking", "--format", "raw", "--rate", "200", "-o", path,
                             "--pid", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a py-spy recording; it writes its file as it exits."""
    if proc is not None:
        proc.send_signal(2)  # SIGINT: py-spy writes what it recorded
        proc.wait(30)


def cpu_percent(procs: dict[str, psutil.Process], window: float) -> dict[str, float]:
    """% of one core each process used over `window` seconds."""
    def total(p: psutil.Process) -> float:
        t = p.cpu_times()
        return t.user + t.system

    start = {k: total(p) for k, p in procs.items()}
    t0 = time.monotonic()
    time.sleep(window)
    wall = time.monotonic() - t0
    return {k: 100.0 * (total(p) - start[k]) / wall for k, p in procs.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--downloads", type=int, default=8)
    ap.add_argument("--window", type=float, default=10.0, help="seconds per measurement")
    ap.add_argument("--idle-window", type=float, default=35.0, help="seconds of the idle phase (covers a 30 s resync)")
    ap.add_argument("--rate-mbps", type=float, default=0.5, help="per-connection mirror rate, MiB/s")
    ap.add_argument("--profile", help="record the TUI with py-spy while the keys are pressed, into this file")
    args = ap.parse_args()
    rows: list[tuple[str, str, float]] = []
    # enough to outlast the download phases and the key presses, with every connection of a download running
    big_mib = int(args.rate_mbps * connections_per_download(args.downloads) * (args.window * 3 + 90)) + 16

    with short_tmpdir() as d, Mirror() as mirror:
        mirror.default_faults.throttle_bps = args.rate_mbps * MIB
        home, sock = d / "home", d / "e.sock"
        big = write_home(home, mirror, args.models, args.downloads, big_mib, args.downloads)
        with engine_process(home, sock) as engine:
            eng = psutil.Process(engine.pid)
            with Client(sock) as c:
                methods = set(c.call("session.hello")["methods"])
            time.sleep(1.0)
            rows.append(("engine idle, no TUI", "engine", cpu_percent({"e": eng}, args.window)["e"]))

            tui = PtyTui(sock)
            key_ms: dict[str, list[Answer]] = {}
            try:
                tui.wait_for(f"{args.models} models".encode())  # the Models tab has loaded every model
                time.sleep(2.0)  # first fetches done
                r = cpu_percent({"e": eng, "t": psutil.Process(tui.proc.pid)}, args.idle_window)
                rows += [("idle, TUI attached (Models tab)", "engine", r["e"]), ("idle, TUI attached (Models tab)", "TUI", r["t"])]
                if "downloads.start" not in methods:
                    print("this engine has no downloads.start: the download phases are skipped", file=sys.stderr)
                else:
                    with Client(sock) as c:
                        for mid in big:
                            c.call("downloads.start", model_id=mid)
                    tui.press(b"2")
                    tui.wait_for(b"bench-dl-07" if args.downloads >= 8 else big[-1].encode())
                    time.sleep(2.0)
                    r = cpu_percent({"e": eng, "t": psutil.Process(tui.proc.pid)}, args.window)
                    label = f"{args.downloads} downloads, TUI on Downloads tab"
                    rows += [(label, "engine", r["e"]), (label, "TUI", r["t"])]
                    tui.press(b"1")
                    time.sleep(1.0)
                    r = cpu_percent({"e": eng, "t": psutil.Process(tui.proc.pid)}, args.window)
                    label = f"{args.downloads} downloads, TUI on Models tab"
                    rows += [(label, "engine", r["e"]), (label, "TUI", r["t"])]
                    profiler = start_profile(args.profile, tui.proc.pid) if args.profile else None
                    try:
                        key_ms = key_presses(tui, big, args.models)
                    finally:
                        stop_profile(profiler)
            finally:
                tui.close()
            if "downloads.start" in methods:
                time.sleep(1.0)
                r = cpu_percent({"e": eng}, args.window)
                rows.append((f"{args.downloads} downloads, no TUI (download work)", "engine", r["e"]))
                with Client(sock) as c:
                    active = c.call("downloads.active")
                running = sum(1 for a in active["active_downloads"] if a["status"] == "downloading")
                rows.append((f"downloads still running at the end ({running})", "-", float(running)))

    print(f"{'phase':<48} {'process':<7} {'% of one core':>13}")
    for phase, proc, pct in rows:
        print(f"{phase:<48} {proc:<7} {pct:>13.1f}")
    with_tui = [p for ph, pr, p in rows if pr == "engine" and "Downloads tab" in ph]
    alone = [p for ph, pr, p in rows if pr == "engine" and "no TUI (download work)" in ph]
    if with_tui and alone:
        print(f"engine CPU the attached TUI adds beside the download work: {with_tui[0] - alone[0]:+.1f} points")
    if key_ms:
        print(f"\nkey presses answered on screen, {args.models} models, {args.downloads} downloads running:")
        print(f"{'key':<32} {'presses':>7} {'p50 ms':>7} {'max ms':>7} {'goal ms':>8} {'ran ms':>7} {'waited ms':>9}")
        for kind, answers in key_ms.items():
            ms = [a.wall_s * 1000 for a in answers]
            ran = sum(a.run_s for a in answers) / len(answers) * 1000
            waited = sum(a.wait_s for a in answers) / len(answers) * 1000
            print(f"{kind:<32} {len(ms):>7} {percentile(ms, 50):>7.0f} {max(ms):>7.0f} {'< ' + format(GOAL_MS, 'g'):>8} "
                  f"{ran:>7.0f} {waited:>9.0f}")
        print("(ran, waited: mean per press, ms the TUI's event loop ran on a CPU and waited for one, from "
              "/proc/PID/schedstat)")
    print(f"({args.models} models, mirror at {args.rate_mbps:g} MiB/s per connection, {args.window:g} s windows "
          f"({args.idle_window:g} s idle), "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
