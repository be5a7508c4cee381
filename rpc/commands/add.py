"""`mavail add hf://ORG/REPO[@REV] | NAME [--include GLOB]... [--exclude GLOB]... [--id ID]`: a Hub model in the catalog."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from mavail.rpc.commands.common import call, print_json


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the `add` subcommand to the `mavail` parser."""
    p = sub.add_parser("add", help="add a Hugging Face model to the catalog (catalog.d/<id>.toml) from the Hub's metadata")
    common(p)
    p.add_argument("source", help="hf://ORG/REPO[@REVISION], or a shipped name (wan2.2-ti2v-5b, wan2.2-t2v-a14b, ...)")
    p.add_argument("--id", dest="model_id", default=None, help="the catalog id (default: the shipped name or the repository's name)")
    p.add_argument("--include", action="append", default=None, metavar="GLOB", help="only files matching (repeatable)")
    p.add_argument("--exclude", action="append", default=None, metavar="GLOB", help="leave out files matching (repeatable)")
    p.add_argument("--version", dest="entry_version", default="1", help="the entry's version (default 1)")
    p.add_argument("--name", dest="display_name", default=None, help="display name")
    p.add_argument("--type", dest="model_type", default=None, help="text_to_video, image_to_video or text_image_to_video")
    p.add_argument("--json", action="store_true", help="print the raw models.add result")
    p.set_defaults(handler=cmd_add)


def cmd_add(args: argparse.Namespace) -> int:
    """Call `models.add`; print what was written (exit 1 on an RPC error, 2 when the engine is unreachable)."""
    params = {"source": args.source, "model_id": args.model_id, "include": args.include, "exclude": args.exclude,
              "version": args.entry_version, "display_name": args.display_name, "model_type": args.model_type}
    result = call(args, "models.add", {k: v for k, v in params.items() if v is not None}, timeout=120.0)
    if args.json:
        print_json(result)
        return 0
    print(f"added {result['model_id']}: {result['source']} (commit {result['commit'][:12]}), {result['files']} files, "
          f"{result['size_bytes'] / 2 ** 30:.2f} GiB -> {result['file']}")
    if result.get("access") not in (None, "ok"):
        print(f"note: {result['access']}")
    print(f"download it with: mavail pull {result['model_id']}")
    return 0
