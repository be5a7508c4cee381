"""The set of engines one TUI follows: which sockets (flags or tui.toml), one EngineLink each, row keys and labels."""

from __future__ import annotations

import asyncio
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.text import Text

from mavail.rpc.client import CallTimeout, EngineUnavailable, RpcError
from mavail.tui.client import EngineLink, error_text
from mavail.tui.widgets.live_table import Cell, Column

ENGINE_COLUMN = "engine"
KEY_SEP = "@"
"""Between a model id and its engine's number in a row key (`wan2.2-ti2v-5b@1`); model ids never hold it."""


class FleetConfigError(ValueError):
    """The TUI's engine list cannot be used (unreadable tui.toml, an entry without a socket, ...)."""


@dataclass(frozen=True)
class EngineSpec:
    """One engine to follow: its socket, the name the TUI shows (empty: the socket path), its rpc.token if any."""

    socket: Path
    name: str = ""
    token: str | None = None

    @property
    def label(self) -> str:
        """The configured name, else the socket path with the home directory as `~`."""
        if self.name:
            return self.name
        text, home = str(self.socket), str(Path.home())
        return "~" + text[len(home):] if home != "/" and text.startswith(home + "/") else text


def user_config_file(variable: str, name: str) -> Path:
    """A TUI file of the user's: the path in $`variable`, else $XDG_CONFIG_HOME/mavail/`name` (~/.config when unset)."""
    env = os.environ.get(variable)
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "mavail" / name


def default_config_path() -> Path:
    """Where the TUI's engine list lives: $MAVAIL_TUI_CONFIG, else $XDG_CONFIG_HOME/mavail/tui.toml."""
    return user_config_file("MAVAIL_TUI_CONFIG", "tui.toml")


def load_engines(path: Path) -> list[EngineSpec]:
    """The `[[engines]]` entries of `path` (each `socket`, optional `name` and `token`); [] when the file is absent."""
    if not path.exists():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FleetConfigError(f"{path}: {exc}") from exc
    entries = data.get("engines", [])
    if not isinstance(entries, list):
        raise FleetConfigError(f"{path}: engines must be a list of tables ([[engines]])")
    specs: list[EngineSpec] = []
    for n, entry in enumerate(entries, 1):
        where = f"{path}: engines entry {n}"
        if not isinstance(entry, dict):
            raise FleetConfigError(f"{where} must be a table")
        unknown = sorted(set(entry) - {"name", "socket", "token"})
        if unknown:
            raise FleetConfigError(f"{where}: unknown keys {', '.join(unknown)} (name, socket, token)")
        sock, name, token = entry.get("socket"), entry.get("name", ""), entry.get("token")
        if not isinstance(sock, str) or not sock:
            raise FleetConfigError(f"{where} needs a socket (a path)")
        if not isinstance(name, str) or KEY_SEP in name:
            raise FleetConfigError(f"{where}: name must be a string without {KEY_SEP!r}")
        if token is not None and not isinstance(token, str):
            raise FleetConfigError(f"{where}: token must be a string")
        specs.append(EngineSpec(Path(sock).expanduser(), name, token))
    names = [s.name for s in specs if s.name]
    if len(names) != len(set(names)):
        raise FleetConfigError(f"{path}: two engines share a name")
    return specs


def resolve_engines(sockets: list[str] | None, token: str | None, config_path: Path | None,
                    default_socket: Callable[[], Path]) -> list[EngineSpec]:
    """The engines to follow: each `--socket` given (with `token`), else tui.toml's list, else the default socket."""
    if sockets:
        seen: list[Path] = []
        for s in sockets:
            p = Path(s).expanduser()
            if p in seen:
                raise FleetConfigError(f"--socket {s} is given twice")
            seen.append(p)
        return [EngineSpec(p, token=token) for p in seen]
    specs = load_engines(config_path if config_path is not None else default_config_path())
    if specs:
        return [s if s.token is not None or token is None else EngineSpec(s.socket, s.name, token) for s in specs]
    return [EngineSpec(default_socket(), token=token)]


@dataclass
class Slot:
    """One followed engine: what was configured and its live link."""

    spec: EngineSpec
    link: Any
    """An EngineLink (a stub in widget tests)."""

    @property
    def host(self) -> str | None:
        """The host name the engine reported in session.hello, if it did."""
        return getattr(self.link, "host", None)


class Fleet:
    """Every engine the TUI follows, in the order given; the first one feeds the tabs that show one engine.

    With one engine nothing changes: row keys are model ids and no engine column is
    shown. With more, a row key is `model_id@n` (n: the engine's place in the list)
    and the Models and Downloads tables get an engine column, marked while that
    engine is unreachable.
    """

    def __init__(self, slots: list[Slot]) -> None:
        if not slots:
            raise FleetConfigError("no engine to follow")
        self.slots = slots

    @classmethod
    def connect(cls, specs: list[EngineSpec], on_event: Callable[[dict[str, Any], int], None],
                on_state: Callable[[bool, str, int], None], **link_kw: Any) -> "Fleet":
        """One EngineLink per spec; its events and state changes come to the callbacks with the engine's number."""
        slots = []
        for i, spec in enumerate(specs):
            link = EngineLink(spec.socket, lambda ev, i=i: on_event(ev, i), lambda up, detail, i=i: on_state(up, detail, i),
                              token=spec.token, **link_kw)
            slots.append(Slot(spec, link))
        return cls(slots)

    @property
    def multi(self) -> bool:
        """Whether more than one engine is followed."""
        return len(self.slots) > 1

    def any_connected(self) -> bool:
        """Whether at least one engine answers."""
        return any(s.link.connected for s in self.slots)

    def down(self) -> list[int]:
        """The engines that do not answer now."""
        return [i for i, s in enumerate(self.slots) if not s.link.connected]

    def retry_now(self) -> None:
        """Skip every link's backoff."""
        for s in self.slots:
            s.link.retry_now()

    # --- naming ------------------------------------------------------------
    def display(self, i: int) -> str:
        """What the engine column shows: the configured name, else the host it reports when no other unnamed
        engine reports the same one, else the socket path."""
        slot = self.slots[i]
        if slot.spec.name:
            return slot.spec.name
        host = slot.host
        if host and sum(1 for s in self.slots if not s.spec.name and s.host == host) == 1:
            return host
        return slot.spec.label

    def describe(self, i: int) -> str:
        """The engine's name and, when different, its host and socket: for the connection line."""
        slot = self.slots[i]
        parts = [self.display(i)]
        if slot.host and slot.host != parts[0]:
            parts.append(f"on {slot.host}")
        if slot.spec.label != parts[0]:
            parts.append(f"at {slot.spec.label}")
        return " ".join(parts)

    # --- rows --------------------------------------------------------------
    def key(self, i: int, model_id: str) -> str:
        """The row key of `model_id` on engine `i` (the model id itself with one engine)."""
        return f"{model_id}{KEY_SEP}{i}" if self.multi else model_id

    def owner(self, key: str | None) -> int:
        """The engine a row key belongs to (0 with one engine or for a key without an engine)."""
        if not self.multi or not key or KEY_SEP not in key:
            return 0
        tail = key.rsplit(KEY_SEP, 1)[1]
        return int(tail) if tail.isdigit() and int(tail) < len(self.slots) else 0

    def columns(self, spec: list[Column], width: int | None = None) -> list[Column]:
        """A table's columns, with the engine column after the model's when there is more than one engine."""
        if not self.multi:
            return spec
        return [spec[0], Column(ENGINE_COLUMN, "Engine", width=width), *spec[1:]]

    def cells(self, i: int, cells: tuple[Cell, ...], width: int | None = None) -> tuple[Cell, ...]:
        """A row's cells with its engine's cell (marked while the engine is unreachable) when there are several;
        a name longer than `width` is cut at its end (a path: at its start, where two sockets' paths agree)."""
        if not self.multi:
            return cells
        name = self.display(i)
        room = None if width is None else width - (0 if self.slots[i].link.connected else 2)
        if room is not None and len(name) > room:
            name = "…" + name[-(room - 1):] if name.startswith(("/", "~")) else name[:room - 1] + "…"
        cell: Cell = name if self.slots[i].link.connected else Text(f"✖ {name}", style="bold red")
        return (cells[0], cell, *cells[1:])

    async def gather(self, method: str, report: Callable[[str], None], **params: Any) -> dict[int, Any]:
        """`method` on every engine that answers and offers it, at once: {engine number: result}.

        With one engine an error propagates as before; with several, an engine's
        error is reported with its name and that engine is left out (its rows stay)."""
        if not self.multi:
            return {0: await self.slots[0].link.call(method, **params)}
        live = [i for i, s in enumerate(self.slots) if s.link.connected and method in s.link.methods]
        results = await asyncio.gather(*(self.slots[i].link.call(method, **params) for i in live), return_exceptions=True)
        out: dict[int, Any] = {}
        for i, res in zip(live, results):
            if isinstance(res, (RpcError, CallTimeout)):
                report(f"{self.display(i)}: {error_text(res)}")
            elif isinstance(res, EngineUnavailable):
                continue
            elif isinstance(res, BaseException):
                raise res
            else:
                out[i] = res
        return out
