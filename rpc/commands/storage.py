"""`mavail cleanup`: print what the retention policies would remove; `--yes` removes exactly that plan."""

from __future__ import annotations

import argparse
from typing import Any

from mavail.rpc.commands.common import OK, call, fmt_bytes, print_json, table


def add_parsers(sub: Any, common: Any) -> None:
    """Register `cleanup`."""
    p = sub.add_parser("cleanup", help="show the models and partial data the retention policies would remove; --yes removes them")
    common(p)
    p.add_argument("-y", "--yes", action="store_true", help="run the plan just printed (only what is still safe to remove)")
    p.add_argument("--min-unused-days", type=float, default=None, help="override storage.keep_used_within_days")
    p.add_argument("--keep-partial", action="store_true", help="leave orphaned partial downloads alone")
    p.add_argument("--json", action="store_true", help="print the plan (and the result) as JSON")
    p.set_defaults(handler=cmd_cleanup)


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Plan, print, and with --yes run that plan by its id."""
    params = {"cleanup_type": "auto", "min_unused_days": args.min_unused_days, "include_partial": not args.keep_partial}
    plan = call(args, "storage.cleanup", {**params, "dry_run": True})
    done = call(args, "storage.cleanup", {**params, "plan_id": plan["plan_id"]}) if args.yes and plan["plan"] else None
    if args.json:
        print_json({"plan": plan, "result": done})
        return OK
    if not plan["plan"]:
        print("nothing to clean up")
        return OK
    rows: list[tuple[Any, ...]] = [("WHAT", "MODEL/PATH", "SIZE", "REASON")]
    rows += [(i["kind"], i.get("model_id") or i.get("path"), fmt_bytes(i.get("size_bytes")), i.get("reason", "")) for i in plan["plan"]]
    print(table(rows))
    print(f"\n{fmt_bytes(plan['planned_savings_bytes'])} to free")
    if done is None:
        print("run it with: mavail cleanup --yes")
    else:
        print(f"removed {', '.join(done['models_removed']) or 'no models'}"
              + (f" and {len(done['partial_removed'])} partial downloads" if done.get("partial_removed") else "")
              + f"; {fmt_bytes(done['bytes_freed'])} freed")
        for s in done.get("skipped") or []:
            print(f"kept {s.get('model_id') or s}: {s.get('reason', '') if isinstance(s, dict) else ''}")
    return OK
