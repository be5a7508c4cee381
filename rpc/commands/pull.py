"""`mavail pull MODEL...`: start or join the downloads and follow them to the end through the engine's events."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from mavail.rpc.client import Client, RpcError
from mavail.rpc.commands.common import FAILED, INTERRUPTED, OK, connected, describe_rpc_error, fmt_bytes, fmt_seconds, print_json

EVENTS = ["model_download_progress", "download_failed", "model_availability_change"]
QUIET_S = 1.0
"""After this long without an event, the download is asked for directly (nothing is missed if an event was)."""


@dataclass
class Pull:
    """One model being pulled: what the engine last said of it, and how it ended."""

    model_id: str
    status: str = "unknown"
    downloaded: int = 0
    total: int = 0
    speed_mbps: float = 0.0
    eta_s: float | None = None
    retries: int = 0
    total_retries: int = 0
    outcome: str | None = None  # "available" or "failed"
    reason: str | None = None
    joined: bool = False
    task: Any = None
    files: list[dict[str, Any]] = field(default_factory=list)  # each file's progress, when asked for with --files
    file_tasks: dict[str, Any] = field(default_factory=dict)
    unavailable_polls: int = 0  # quiet spells seen with the download completed but the model not available

    def take_progress(self, p: dict[str, Any]) -> None:
        """Adopt a progress object (an event's params or downloads.progress)."""
        self.status = p.get("status", self.status)
        self.downloaded = int(p.get("downloaded_bytes") or 0)
        self.total = int(p.get("total_bytes") or self.total)
        self.speed_mbps = float(p.get("speed_mbps") or 0.0)
        self.eta_s = p.get("eta_seconds")
        self.retries = int(p.get("retry_count") or 0)
        self.total_retries = int(p.get("total_retries") or 0)

    def note(self) -> str:
        """The words after the bar: status and retries."""
        parts = [self.outcome or self.status]
        if self.total_retries:
            parts.append(f"{self.total_retries} retries")
        return ", ".join(parts)


def add_parser(sub: Any, common: Any) -> None:
    """Register `pull`."""
    p = sub.add_parser("pull", help="download models (or join their downloads) and show the progress until they are available")
    common(p)
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--priority", default="normal", choices=["critical", "high", "normal", "low"])
    p.add_argument("--no-wait", action="store_true", help="start or join the downloads and return at once")
    p.add_argument("--cancel-on-interrupt", action="store_true", help="Ctrl-C cancels the downloads (default: they go on)")
    p.add_argument("--json", action="store_true", help="print only JSON lines: the engine's events, then one result per model")
    p.add_argument("--files", action="store_true", help="a line per file too: its bytes and whether it is installed, moving or waiting")
    p.set_defaults(handler=run)


class _Output:
    """Where a pull shows itself: rich progress bars on a terminal, a line per change otherwise, or JSON lines."""

    def __init__(self, json_lines: bool) -> None:
        self.json = json_lines
        self.tty = sys.stdout.isatty() and not json_lines
        self.progress: Any = None
        self._last: dict[str, str] = {}

    def __enter__(self) -> "_Output":
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), DownloadColumn(binary_units=True),
                TextColumn("{task.fields[rate]}"), TextColumn("eta {task.fields[eta]}"), TextColumn("{task.fields[note]}"),
                console=Console(file=sys.stdout), refresh_per_second=8)
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def event(self, params: dict[str, Any]) -> None:
        """An event as the engine sent it (JSON lines only)."""
        if self.json:
            print_json(params, pretty=False)

    def show(self, p: Pull) -> None:
        """Draw the model's current state."""
        if self.progress is not None:
            rate = f"{p.speed_mbps:.1f} MiB/s" if p.status == "downloading" else ""
            fields = {"rate": rate, "eta": fmt_seconds(p.eta_s) if p.outcome is None else "0:00", "note": p.note()}
            done = p.total if p.outcome == "available" else p.downloaded
            if p.task is None:
                p.task = self.progress.add_task(p.model_id, total=p.total or None, completed=done, **fields)
            else:
                self.progress.update(p.task, total=p.total or None, completed=done, **fields)
            for f in p.files:
                shown = {"rate": "", "eta": "", "note": f["status"] + (f" ({f['connections']} conn.)" if f["connections"] else "")}
                task = p.file_tasks.get(f["path"])
                if task is None:
                    p.file_tasks[f["path"]] = self.progress.add_task("  " + f["path"], total=f["size_bytes"] or None,
                                                                     completed=f["downloaded_bytes"], **shown)
                else:
                    self.progress.update(task, total=f["size_bytes"] or None, completed=f["downloaded_bytes"], **shown)
        elif not self.json:
            line = f"{p.model_id}: {p.note()}"
            if line != self._last.get(p.model_id):
                self._last[p.model_id] = line
                print(line + (f" ({fmt_bytes(p.downloaded)} of {fmt_bytes(p.total)})" if p.outcome is None and p.total else ""),
                      flush=True)
            for f in p.files:
                line = f"{p.model_id}/{f['path']}: {f['status']}"
                if line != self._last.get(line.rsplit(":", 1)[0]):
                    self._last[line.rsplit(":", 1)[0]] = line
                    print(f"{line} ({fmt_bytes(f['downloaded_bytes'])} of {fmt_bytes(f['size_bytes'])})", flush=True)

    def result(self, p: Pull, detached: bool = False) -> None:
        """The model's final line."""
        if self.json:
            print_json({"type": "pull_result", "model_id": p.model_id, "status": p.outcome or ("detached" if detached else p.status),
                        "error": p.reason, "downloaded_bytes": p.downloaded, "total_bytes": p.total,
                        "total_retries": p.total_retries, "joined": p.joined}, pretty=False)
        elif p.outcome == "failed":
            print(f"mavail: {p.model_id} failed: {p.reason}", file=sys.stderr, flush=True)
        elif self.progress is None and p.outcome == "available":
            pass  # the change line said so


def _start(client: Client, p: Pull, priority: str) -> None:
    """Start the model's download, or join (resume) the one there is; a refusal marks it failed."""
    try:
        st = client.call("models.status", {"model_id": p.model_id})
        p.total = int(st.get("size_bytes") or 0)
        if st.get("is_available"):
            p.outcome, p.status, p.downloaded = "available", "available", p.total
            return
        # the state comes from the answers here and the events after them: an event that arrived while waiting for
        # an answer is older than it, so a progress call here would be overtaken by them
        try:
            p.status = client.call("downloads.start", {"model_id": p.model_id, "priority": priority})["status"]
        except RpcError as exc:
            if exc.name != "CONFLICT":
                raise
            p.joined = True
            p.status = str(exc.details.get("status") or "downloading")
            if p.status == "paused":
                p.status = client.call("downloads.resume", {"model_id": p.model_id})["new_status"]
    except RpcError as exc:
        p.outcome, p.reason = "failed", describe_rpc_error(exc)


def _poll(client: Client, p: Pull) -> None:
    """Ask for the model's state directly (after a quiet spell)."""
    st = client.call("models.status", {"model_id": p.model_id})
    if st.get("is_available"):
        p.outcome = "available"
        return
    try:
        prog = client.call("downloads.progress", {"model_id": p.model_id})
    except RpcError as exc:
        if exc.name == "NOT_FOUND":
            p.outcome, p.reason = "failed", "the download is gone (cancelled or removed)"
            return
        raise
    p.take_progress(prog)
    _judge(p, prog, st)


UNAVAILABLE_POLLS = 3
"""Quiet spells a completed download may stay unavailable (the engine still looking at its files) before the pull fails."""


def _judge(p: Pull, prog: dict[str, Any], st: dict[str, Any]) -> None:
    if prog.get("status") == "completed":
        p.unavailable_polls += 1
        if p.unavailable_polls >= UNAVAILABLE_POLLS:
            p.outcome, p.reason = "failed", f"downloaded, but the model is {st.get('availability_status')}"
    elif prog.get("status") == "failed" and p.outcome is None:
        p.outcome = "failed"
        p.reason = p.reason or f"{prog.get('error_code') or 'failed'}: {prog.get('error_message') or 'download failed'}"
    elif prog.get("status") == "cancelled":
        p.outcome, p.reason = "failed", "the download was cancelled"


def _events(client: Client) -> Iterator[dict[str, Any] | None]:
    """The engine's events, with None after each quiet spell of QUIET_S."""
    while True:
        got = False
        for ev in client.events(timeout=QUIET_S):
            got = True
            yield ev
        if not got:
            yield None


FILES_EVERY_S = 0.5
"""How often --files asks for each file's progress (the events carry the model's only)."""


def _files(client: Client, pulls: dict[str, Pull]) -> None:
    """Ask for each open pull's per-file progress."""
    for p in pulls.values():
        if p.outcome is None:
            try:
                p.files = client.call("downloads.progress", {"model_id": p.model_id, "files": True}).get("files", [])
            except RpcError:
                pass  # the model's own line says what happened


def _follow(client: Client, pulls: dict[str, Pull], out: _Output, files: bool = False) -> None:
    next_files = 0.0
    for ev in _events(client):
        if files and time.monotonic() >= next_files:
            next_files = time.monotonic() + FILES_EVERY_S
            _files(client, pulls)
        if ev is None:
            for p in pulls.values():
                if p.outcome is None:
                    _poll(client, p)
                    out.show(p)
        else:
            params = ev.get("params") or {}
            p = pulls.get(params.get("model_id", ""))
            if p is None or p.outcome is not None:
                continue
            out.event(params)
            kind = ev.get("method")
            if kind == "model_download_progress":
                p.take_progress(params)
                if params.get("status") == "completed":
                    _poll(client, p)  # installed: available once the engine has looked at the files
                elif params.get("status") == "cancelled":
                    p.outcome, p.reason = "failed", "the download was cancelled"
            elif kind == "download_failed":
                p.outcome, p.reason = "failed", f"{params.get('error_code')}: {params.get('message')}"
            elif kind == "model_availability_change" and params.get("new_status") == "available":
                p.outcome = "available"
            out.show(p)
        if all(p.outcome is not None for p in pulls.values()):
            return


def _final_files(client: Client, model_id: str) -> list[dict[str, Any]]:
    try:
        return client.call("downloads.progress", {"model_id": model_id, "files": True}).get("files", [])
    except RpcError:
        return []


def _cancel(args: argparse.Namespace, pulls: list[Pull]) -> None:
    with connected(args) as client:
        for p in pulls:
            try:
                client.call("downloads.cancel", {"model_id": p.model_id})
                print(f"mavail: cancelled the download of {p.model_id}", file=sys.stderr)
            except RpcError as exc:
                print(f"mavail: {p.model_id}: {describe_rpc_error(exc)}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Pull every model named; exit 0 when all are available, 1 when one failed (with the reason)."""
    pulls = {m: Pull(m) for m in dict.fromkeys(args.models)}
    out = _Output(args.json)
    try:
        with connected(args) as client:
            if not args.no_wait:
                client.call("events.subscribe", {"types": EVENTS, "model_ids": list(pulls)})
            for p in pulls.values():
                _start(client, p, args.priority)
            with out:
                for p in pulls.values():
                    out.show(p)
                if not args.no_wait and any(p.outcome is None for p in pulls.values()):
                    _follow(client, pulls, out, files=args.files)
                if args.files:  # the final state of each file
                    for p in pulls.values():
                        p.files = _final_files(client, p.model_id)
                        out.show(p)
    except KeyboardInterrupt:
        open_ = [p for p in pulls.values() if p.outcome is None]
        if args.cancel_on_interrupt and open_:
            _cancel(args, open_)
        elif open_:
            print("mavail: detached; the downloads go on in the engine (see them with: mavail ps)", file=sys.stderr)
        for p in pulls.values():
            out.result(p, detached=True)
        return INTERRUPTED
    for p in pulls.values():
        out.result(p)
    if args.no_wait and not args.json:
        for p in pulls.values():
            if p.outcome is None:
                print(f"{p.model_id}: {p.status}{' (joined)' if p.joined else ''}; follow it with: mavail pull {p.model_id}")
    return FAILED if any(p.outcome == "failed" for p in pulls.values()) else OK
