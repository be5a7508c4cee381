"""`mavail config get [KEY]` and `mavail config set KEY VALUE`: the settings with their description, default, bounds, live."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mavail.core.config import parse_bool
from mavail.rpc.commands.common import OK, USAGE, CommandError, call, print_json


def add_parsers(sub: Any, common: Any) -> None:
    """Register `config get` and `config set`."""
    p = sub.add_parser("config", help="read or change the engine's settings")
    csub = p.add_subparsers(dest="config_command", required=True)
    g = csub.add_parser("get", help="every setting (or one, or one section) with its description, default and bounds")
    common(g)
    g.add_argument("key", nargs="?", metavar="KEY", help="section.key, or a section")
    g.add_argument("--json", action="store_true", help="print the schema entries as JSON")
    g.set_defaults(handler=cmd_get)
    s = csub.add_parser("set", help="change one setting (saved in config.toml, keeping its comments)")
    common(s)
    s.add_argument("key", metavar="KEY", help="section.key")
    s.add_argument("value", metavar="VALUE", help="the new value: a number, true/false, text, or a JSON list")
    s.add_argument("--json", action="store_true", help="print the config.update result")
    s.set_defaults(handler=cmd_set)


def _bounds(e: dict[str, Any]) -> str:
    parts = []
    if e.get("min") is not None:
        parts.append(f">= {e['min']:g}")
    if e.get("max") is not None:
        parts.append(f"<= {e['max']:g}")
    if e.get("choices"):
        parts.append("one of " + ", ".join(e["choices"]))
    return ", ".join(parts)


def _render(key: str, e: dict[str, Any]) -> str:
    value = json.dumps(e["value"])
    lines = [f"{key} = {value}" + ("" if e["value"] == e["default"] else f"  (default {json.dumps(e['default'])})")]
    lines.append(f"    {e['description']}")
    facts = [e["type"]]
    if _bounds(e):
        facts.append(_bounds(e))
    facts.append("applies at once" if e.get("live") else "applies after a restart")
    if e.get("from_environment"):
        facts.append("set from the environment")
    lines.append("    " + "; ".join(facts))
    return "\n".join(lines)


def cmd_get(args: argparse.Namespace) -> int:
    """Print the settings asked for."""
    schema: dict[str, Any] = call(args, "config.get", {"schema": True})["schema"]
    if args.key:
        chosen = {k: v for k, v in schema.items() if k == args.key or k.startswith(args.key + ".")}
        if not chosen:
            import difflib

            near = difflib.get_close_matches(args.key, list(schema), n=1)
            raise CommandError(f"no setting {args.key!r}" + (f"; did you mean {near[0]}?" if near else ""), USAGE)
    else:
        chosen = schema
    if args.json:
        print_json(chosen)
    else:
        print("\n".join(_render(k, chosen[k]) for k in sorted(chosen)))
    return OK


def parse_value(text: str, kind: str) -> Any:
    """The command-line text of a value as the setting's type (the engine validates the bounds)."""
    try:
        if kind == "bool":
            return parse_bool(text)
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "list":
            value = json.loads(text) if text.strip().startswith("[") else [int(v) for v in text.replace(",", " ").split()]
            if not isinstance(value, list):
                raise ValueError(text)
            return value
        return text
    except ValueError:
        raise CommandError(f"{text!r} is not a {kind}", USAGE) from None


def cmd_set(args: argparse.Namespace) -> int:
    """Change one setting and say what it was, what it is, and when it applies."""
    schema: dict[str, Any] = call(args, "config.get", {"schema": True})["schema"]
    entry = schema.get(args.key)
    if entry is None:
        # the engine names the key it probably meant
        call(args, "config.update", {"patch": {args.key: args.value}})
        raise CommandError(f"no setting {args.key!r}", USAGE)  # pragma: no cover - the engine refuses first
    value = parse_value(args.value, entry["type"])
    result = call(args, "config.update", {"patch": {args.key: value}})
    if args.json:
        print_json(result)
    else:
        when = "after a restart" if result.get("restart_required") or not entry.get("live") else "now"
        print(f"{args.key} = {json.dumps(value)} (was {json.dumps(entry['value'])}; applies {when})")
    return OK
