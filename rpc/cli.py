"""The `mavail` command: engine, call, status, tui, demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from mavail.core import __version__
from mavail.core.errors import ConfigError
from mavail.core.paths import resolve_home, resolve_socket
from mavail.rpc import cli_add


LOG_LEVELS = ("debug", "info", "warning", "error")


def _common(p: argparse.ArgumentParser, token: bool = True) -> None:
    p.add_argument("--home", help="home directory (default: $MAVAIL_HOME, else the user data dir)")
    p.add_argument("--socket", help="engine socket (default: $MAVAIL_SOCKET, $XDG_RUNTIME_DIR/mavail/engine.sock, <home>/engine.sock)")
    if token:
        p.add_argument("--token", default=None, help="the engine's rpc.token, when it has one (default: $MAVAIL_RPC_TOKEN)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="mavail", description="Local model-availability engine.")
    parser.add_argument("--version", action="version", version=f"mavail {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("engine", help="run the headless engine in the foreground")
    _common(p, token=False)
    p.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                   help="also log to stderr from this level up (for a terminal or journald; the files in logs/ get everything)")
    p = sub.add_parser("call", help="make one JSON-RPC call and print the result as JSON")
    _common(p)
    p.add_argument("method")
    p.add_argument("params", nargs="?", default="{}", help="params as a JSON object")
    p.add_argument("--timeout", type=float, default=60.0)
    p = sub.add_parser("status", help="a table of every model's status")
    _common(p)
    p.add_argument("--json", action="store_true", help="print the raw models.status result")
    p = sub.add_parser("tui", help="attach the full-screen UI to a running engine")
    _common(p)
    p = sub.add_parser("demo", help="local mirror + throw-away engine + TUI, no network needed")
    p.add_argument("--headless", action="store_true", help="run the mirror and engine without the TUI (Ctrl-C stops)")
    cli_add.register(sub, _common)
    return parser


def _socket(args: argparse.Namespace) -> Path:
    return resolve_socket(resolve_home(args.home), args.socket)


def cmd_engine(args: argparse.Namespace) -> int:
    """Run the engine until SIGTERM/SIGINT or engine.shutdown."""
    import anyio

    from mavail.rpc.runner import run_engine
    from mavail.rpc.server import CannotServe

    home = resolve_home(args.home)
    sock = resolve_socket(home, args.socket)
    try:
        level = getattr(logging, args.log_level.upper()) if args.log_level else None
        anyio.run(lambda: run_engine(home, sock, announce=True, stderr_log_level=level), backend_options={"use_uvloop": True})
    except CannotServe as exc:
        print(f"mavail: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"mavail: invalid configuration: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _call_engine(args: argparse.Namespace, method: str, params: dict[str, Any] | None = None,
                 timeout: float | None = None) -> tuple[int, Any]:
    """(0, result) of one call, else (exit code, None) with the error on stderr: 1 for an RPC error (as JSON),
    2 when the engine is unreachable or the call timed out."""
    from mavail.rpc.client import CallTimeout, Client, EngineUnavailable, RpcError

    token = args.token if args.token is not None else (os.environ.get("MAVAIL_RPC_TOKEN") or None)
    sock = _socket(args)
    try:
        client = Client(sock) if timeout is None else Client(sock, timeout=timeout)
        with client as c:
            if token is not None:
                c.call("session.hello", {"client": "mavail-cli", "token": token})
            return 0, c.call(method, params)
    except RpcError as exc:
        print(json.dumps(exc.to_dict(), indent=2), file=sys.stderr)
        if exc.name == "UNAUTHORIZED":
            print("mavail: the engine wants its rpc.token: pass --token or set MAVAIL_RPC_TOKEN", file=sys.stderr)
        return 1, None
    except EngineUnavailable as exc:
        print(f"mavail: {exc}", file=sys.stderr)
        print(f"mavail: is the engine running? Start it with: mavail engine --socket {sock}", file=sys.stderr)
        return 2, None
    except CallTimeout as exc:
        print(f"mavail: {exc}", file=sys.stderr)
        return 2, None


def cmd_call(args: argparse.Namespace) -> int:
    """One call: exit 0 on a result, 1 on an RPC error, 2 when unreachable or bad arguments."""
    try:
        params = json.loads(args.params)
    except ValueError as exc:
        print(f"mavail: PARAMS_JSON is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(params, dict):
        print("mavail: PARAMS_JSON must be a JSON object", file=sys.stderr)
        return 2
    rc, result = _call_engine(args, args.method, params, timeout=args.timeout)
    if rc == 0:
        print(json.dumps(result, indent=2))
    return rc


def _fmt_size(mb: float | None) -> str:
    if mb is None:
        return "-"
    return f"{mb / 1024:.1f} GiB" if mb >= 1024 else f"{mb:.1f} MiB"


def render_status(result: dict[str, Any]) -> str:
    """A plain-text table of `models.status` for a terminal."""
    rows = [("MODEL", "STATUS", "VERSION", "SIZE", "PROGRESS", "IN USE")]
    for s in result["models"].values():
        prog = s.get("download_progress")
        rows.append((
            s["model_id"],
            s["availability_status"],
            s.get("current_version") or s.get("latest_version") or "-",
            _fmt_size(s.get("size_mb")),
            f"{prog:.1f}%" if isinstance(prog, (int, float)) else "-",
            "yes" if s.get("is_loaded") else "",
        ))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    sm = result["summary"]
    lines.append("")
    lines.append(f"{sm['total_models']} models, {sm['available_models']} available, {sm['downloading_models']} downloading, "
                 f"{sm['corrupted_models']} corrupted, {sm['total_storage_gb']:.2f} GiB on disk")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    """Print every model's status as a table, or as JSON with --json."""
    rc, result = _call_engine(args, "models.status")
    if rc == 0:
        print(json.dumps(result, indent=2) if args.json else render_status(result))
    return rc


def cmd_tui(args: argparse.Namespace) -> int:
    """Attach the TUI."""
    from mavail.tui.app import run_tui

    return run_tui(_socket(args))


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo."""
    from mavail.tui.demo import run_demo

    return run_demo(headless=args.headless)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mavail` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    handlers = {"engine": cmd_engine, "call": cmd_call, "status": cmd_status, "tui": cmd_tui, "demo": cmd_demo, "add": cli_add.cmd_add}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
