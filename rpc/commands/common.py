"""What every command that talks to the engine shares: the connection, the token, errors as exit codes, output."""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from mavail.core.paths import resolve_home, resolve_socket
from mavail.rpc.client import CallTimeout, Client, EngineUnavailable, RpcError

OK, FAILED, USAGE = 0, 1, 2
"""Exit codes: done; the engine refused or the work failed; bad arguments or no engine to talk to."""
INTERRUPTED = 130
"""Exit code of a command the user interrupted (Ctrl-C), as shells report SIGINT."""


class CommandError(Exception):
    """A command ends with `message` on stderr and exit `code`."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def socket_path(args: argparse.Namespace) -> Path:
    """The engine socket the arguments and environment name."""
    return resolve_socket(resolve_home(getattr(args, "home", None)), getattr(args, "socket", None))


def token_of(args: argparse.Namespace) -> str | None:
    """`--token`, else `MAVAIL_RPC_TOKEN`, else None."""
    token = getattr(args, "token", None)
    return token if token is not None else (os.environ.get("MAVAIL_RPC_TOKEN") or None)


def describe_rpc_error(exc: RpcError) -> str:
    """One readable line for an error the engine answered: its message, its code name and the useful details."""
    details = {k: v for k, v in exc.details.items() if k not in ("model_id",)}
    extra = ", ".join(f"{k}={v}" for k, v in details.items())
    text = f"{exc.message} ({exc.name or exc.code}{'; ' + extra if extra else ''})"
    if exc.name == "UNAUTHORIZED":
        text += "\nmavail: the engine wants its rpc.token: pass --token or set MAVAIL_RPC_TOKEN"
    return text


@contextmanager
def connected(args: argparse.Namespace, timeout: float = 60.0, client_name: str = "mavail-cli") -> Iterator[Client]:
    """A client on the engine, greeted with the token when there is one.

    Errors become `CommandError`: an error answer exits 1, an engine that cannot be
    reached (or does not answer in time) exits 2 with how to start it.
    """
    sock = socket_path(args)
    try:
        with Client(sock, timeout=timeout) as client:
            token = token_of(args)
            if token is not None:
                client.call("session.hello", {"client": client_name, "token": token})
            yield client
    except RpcError as exc:
        raise CommandError(describe_rpc_error(exc), FAILED) from None
    except EngineUnavailable as exc:
        raise CommandError(f"{exc}\nmavail: is the engine running? Start it with: mavail engine --socket {sock}", USAGE) from None
    except CallTimeout as exc:
        raise CommandError(str(exc), USAGE) from None


def call(args: argparse.Namespace, method: str, params: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
    """One call on a fresh connection (see `connected` for the errors)."""
    with connected(args, timeout=timeout) as client:
        return client.call(method, params or {}, timeout=timeout)


def print_json(obj: Any, pretty: bool = True) -> None:
    """Print `obj` as JSON on stdout: indented, or as one line (for JSON-lines output)."""
    print(json.dumps(obj, indent=2 if pretty else None), flush=True)


def fmt_bytes(n: float | None) -> str:
    """Bytes as a short human figure (binary units)."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def fmt_mb(mb: float | None) -> str:
    """MiB as a short human figure."""
    return "-" if mb is None else fmt_bytes(mb * 1024 * 1024)


def fmt_seconds(s: float | None) -> str:
    """Seconds as h:mm:ss or m:ss."""
    if s is None:
        return "-"
    s = int(round(s))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def table(rows: list[tuple[Any, ...]]) -> str:
    """Rows (the first is the header) as left-aligned columns."""
    if not rows:
        return ""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def confirm(question: str) -> bool:
    """Ask a yes/no question on the terminal; no terminal (or no answer) is no."""
    if not sys.stdin.isatty():
        return False
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")
