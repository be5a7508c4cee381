"""`mavail logs [-f]`: the engine's log files in `<home>/logs/`, merged in time order, followed with -f."""

from __future__ import annotations

import argparse
import heapq
import os
import sys
import time
from pathlib import Path
from typing import Any

from mavail.core.logs import LOG_FILES, MAIN_LOG
from mavail.core.paths import resolve_home
from mavail.rpc.commands.common import OK, USAGE, CommandError

FILES = {"main": MAIN_LOG, **{name.split(".")[0].split("_")[0]: name for name in LOG_FILES.values()}}
"""The log files by short name: main, downloads, health."""
FOLLOW_POLL_S = 0.2


def add_parsers(sub: Any, common: Any) -> None:
    """Register `logs` (it reads the home's files, so it needs no token)."""
    p = sub.add_parser("logs", help="the engine's logs, merged in time order (-f follows them)")
    p.add_argument("--home", help="home directory (default: $MAVAIL_HOME, else the user data dir)")
    p.add_argument("-n", "--lines", type=int, default=50, help="how many of the last lines to show (default 50)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    p.add_argument("--file", choices=sorted(FILES), action="append", help="only this log (repeatable; default all)")
    p.set_defaults(handler=cmd_logs)


def _tail(path: Path, n: int) -> list[str]:
    """The last `n` lines of `path` (reading only the end of a large file)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            block, data = 64 * 1024, b""
            while size > 0 and data.count(b"\n") <= n:
                step = min(block, size)
                size -= step
                f.seek(size)
                data = f.read(step) + data
    except FileNotFoundError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-n:] if n > 0 else []


def _entries(lines: list[str]) -> list[list[str]]:
    """Lines grouped into log entries: a line that does not start with a time (a traceback) belongs to the one before."""
    out: list[list[str]] = []
    for line in lines:
        if out and not line[:4].isdigit():
            out[-1].append(line)
        else:
            out.append([line])
    return out


def merged(per_file: list[list[str]]) -> list[str]:
    """The lines of several logs in time order; each entry keeps its continuation lines (log lines start with their time)."""
    entries = heapq.merge(*(_entries(lines) for lines in per_file), key=lambda e: e[0][:23])
    return [line for entry in entries for line in entry]


class _Follower:
    """New lines of one file, across rotations (a new inode or a shorter file starts it from the top)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ino, self.pos, self.rest = self._stat_ino(), self._size(), b""

    def _stat_ino(self) -> int | None:
        try:
            return self.path.stat().st_ino
        except FileNotFoundError:
            return None

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def read(self) -> list[str]:
        """Whole lines written since the last read."""
        ino = self._stat_ino()
        if ino is None:
            return []
        if ino != self.ino or self._size() < self.pos:
            self.ino, self.pos, self.rest = ino, 0, b""
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        self.pos += len(data)
        data = self.rest + data
        *lines, self.rest = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines]


def cmd_logs(args: argparse.Namespace) -> int:
    """Print the last lines, then follow with -f."""
    logs = resolve_home(args.home) / "logs"
    names = [FILES[k] for k in (args.file or sorted(FILES))]
    if not logs.is_dir():
        raise CommandError(f"no logs at {logs}: has the engine run with this home? (pass --home or set MAVAIL_HOME)", USAGE)
    lines = merged([_tail(logs / name, args.lines) for name in names])[-args.lines:] if args.lines > 0 else []
    for line in lines:
        print(line)
    sys.stdout.flush()
    if not args.follow:
        return OK
    followers = [_Follower(logs / name) for name in names]
    try:
        while True:
            new = merged([f.read() for f in followers])
            for line in new:
                print(line)
            if new:
                sys.stdout.flush()
            time.sleep(FOLLOW_POLL_S)
    except KeyboardInterrupt:
        return OK
