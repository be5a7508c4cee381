"""`mavail completion bash|zsh|fish`: a shell completion script generated from the parser (shtab), with the method names of `call`."""

from __future__ import annotations

import argparse
from typing import Any, Callable

SHELLS = ("bash", "zsh", "fish")


def add_parsers(sub: Any, build_parser: Callable[[], argparse.ArgumentParser]) -> None:
    """Register `completion`; `build_parser` builds the parser the script completes."""
    p = sub.add_parser("completion", help="print a shell completion script (bash, zsh or fish)")
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(handler=lambda args: cmd_completion(args, build_parser))


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)  # pragma: no cover - the parser has subcommands


def script(shell: str, build_parser: Callable[[], argparse.ArgumentParser]) -> str:
    """The completion script for `shell`; `call`'s METHOD completes to the engine's method names."""
    import shtab

    from mavail.rpc.methods import TABLE

    parser = build_parser()
    for action in _subparser(parser, "call")._actions:
        if action.dest == "method":
            action.choices = sorted(TABLE)
    return shtab.complete(parser, shell=shell)


def cmd_completion(args: argparse.Namespace, build_parser: Callable[[], argparse.ArgumentParser]) -> int:
    """Print the script."""
    print(script(args.shell, build_parser))
    return 0
