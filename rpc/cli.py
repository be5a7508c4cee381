"""The `mavail` command's parser: each subcommand's handler lives in rpc/commands/ (engine, call, tui and demo here)."""

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
from mavail.rpc.commands import add, completion, config, health, logs, models, pull, storage
from mavail.rpc.commands.common import CommandError



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
    p.set_defaults(handler=cmd_engine)
    p = sub.add_parser("call", help="make one JSON-RPC call and print the result as JSON")
    _common(p)
    p.add_argument("method")
    p.add_argument("params", nargs="?", default="{}", help="params as a JSON object")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(handler=cmd_call)
    pull.add_parser(sub, _common)
    models.add_parsers(sub, _common)
    health.add_parsers(sub, _common)
    storage.add_parsers(sub, _common)
    config.add_parsers(sub, _common)
    logs.add_parsers(sub, _common)
    completion.add_parsers(sub, build_parser)
    p = sub.add_parser("tui", help="attach the full-screen UI to a running engine (or to several)")
    p.add_argument("--home", help="home directory (default: $MAVAIL_HOME, else the user data dir)")
    p.add_argument("--socket", action="append", default=None, metavar="PATH",
                   help="an engine socket; repeat it to follow several engines in one TUI (default: the [[engines]] of "
                        "tui.toml, else $MAVAIL_SOCKET, $XDG_RUNTIME_DIR/mavail/engine.sock, <home>/engine.sock)")
    p.add_argument("--token", default=None, help="the engines' rpc.token, when they have one (default: $MAVAIL_RPC_TOKEN)")
    p.add_argument("--config", default=None, metavar="PATH",
                   help="the TUI's config with its [[engines]] list (default: $MAVAIL_TUI_CONFIG, else $XDG_CONFIG_HOME/mavail/tui.toml)")
    p.set_defaults(handler=cmd_tui)
    p = sub.add_parser("demo", help="local mirror + throw-away engine + TUI, no network needed")
    p.add_argument("--headless", action="store_true", help="run the mirror and engine without the TUI (Ctrl-C stops)")
    p.set_defaults(handler=cmd_demo)
    add.add_parsers(sub, _common)
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
    from mavail.rpc.client import RpcError
    from mavail.rpc.commands.common import connected

    with connected(args, timeout=args.timeout) as client:
        try:
            result = client.call(args.method, params, timeout=args.timeout)
        except RpcError as exc:
            print(json.dumps(exc.to_dict(), indent=2), file=sys.stderr)  # as the engine sent it, for scripts
            if exc.name == "UNAUTHORIZED":
                print("mavail: the engine wants its rpc.token: pass --token or set MAVAIL_RPC_TOKEN", file=sys.stderr)
            return 1
    print(json.dumps(result, indent=2))
    return 0


def tui_engines(args: argparse.Namespace) -> list[Any]:
    """The engines `mavail tui` follows (tui.fleet.EngineSpec): each --socket, else tui.toml's list, else the default socket."""
    from mavail.tui.fleet import FleetConfigError, resolve_engines

    try:
        return resolve_engines(args.socket, args.token, Path(args.config).expanduser() if args.config else None,
                               lambda: resolve_socket(resolve_home(args.home), None))
    except FleetConfigError as exc:
        raise CommandError(str(exc)) from exc


def cmd_tui(args: argparse.Namespace) -> int:
    """Attach the TUI to one engine or several."""
    from mavail.tui.app import run_tui

    return run_tui(engines=tui_engines(args))


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
    try:
        return int(args.handler(args))
    except CommandError as exc:
        print(f"mavail: {exc.message}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        # the reader went away (`mavail logs | head`): say nothing more, as other command-line tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
