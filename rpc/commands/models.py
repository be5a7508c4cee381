"""`mavail ls` (alias `status`), `ps`, `show MODEL` and `rm MODEL`: the models and what is happening to them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mavail.rpc.commands.common import (FAILED, OK, USAGE, CommandError, call, confirm, fmt_bytes, fmt_mb, fmt_seconds,
                                        print_json, table)


def add_parsers(sub: Any, common: Any) -> None:
    """Register `ls`/`status`, `ps`, `show` and `rm`."""
    p = sub.add_parser("ls", aliases=["status"], help="a table of every model's status")
    common(p)
    p.add_argument("--json", action="store_true", help="print the models.status result")
    p.set_defaults(handler=cmd_ls)
    p = sub.add_parser("ps", help="what is in progress: downloads, checks, repairs, updates, leases")
    common(p)
    p.add_argument("--json", action="store_true", help="print {downloads, activity} as JSON")
    p.set_defaults(handler=cmd_ps)
    p = sub.add_parser("show", help="everything the engine knows of one model")
    common(p)
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--json", action="store_true", help="print the models.status result")
    p.set_defaults(handler=cmd_show)
    p = sub.add_parser("rm", help="remove a model's files (refused while it is in use)")
    common(p)
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--version", dest="model_version", default=None, help="remove only this version")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask")
    p.add_argument("--json", action="store_true", help="print the models.remove result")
    p.set_defaults(handler=cmd_rm)


def render_status(result: dict[str, Any]) -> str:
    """A plain-text table of `models.status` for a terminal."""
    rows: list[tuple[Any, ...]] = [("MODEL", "STATUS", "VERSION", "SIZE", "PROGRESS", "IN USE")]
    for s in result["models"].values():
        prog = s.get("download_progress")
        rows.append((
            s["model_id"],
            s["availability_status"],
            s.get("current_version") or s.get("latest_version") or "-",
            fmt_mb(s.get("size_mb")),
            f"{prog:.1f}%" if isinstance(prog, (int, float)) else "-",
            "yes" if s.get("is_loaded") else "",
        ))
    sm = result["summary"]
    hint = "" if result["models"] else "\nno models yet: add a [[models]] entry to catalog.toml (see docs/catalog.md), then: mavail call catalog.reload"
    return (table(rows) + "\n\n" + f"{sm['total_models']} models, {sm['available_models']} available, {sm['downloading_models']} downloading, "
            f"{sm['corrupted_models']} corrupted, {sm['total_storage_gb']:.2f} GiB on disk" + hint)


def cmd_ls(args: argparse.Namespace) -> int:
    """Every model's status as a table, or as JSON."""
    result = call(args, "models.status")
    if args.json:
        print_json(result)
    else:
        print(render_status(result))
    return OK


_WORK = {"checking": "check", "repairing": "repair", "updating": "update", "removing": "remove", "downloading": "download"}
"""The noun of each activity the engine reports (models.status `activity`)."""


def cmd_ps(args: argparse.Namespace) -> int:
    """Downloads, then checks, repairs, updates and leases in progress."""
    active = call(args, "downloads.active")
    models = call(args, "models.status")["models"]
    busy = [{"model_id": m, "activity": [a for a in s.get("activity", []) if a != "downloading"], "active_leases": s.get("active_leases", 0)}
            for m, s in models.items() if [a for a in s.get("activity", []) if a != "downloading"] or s.get("active_leases")]
    if args.json:
        print_json({"downloads": active, "activity": busy})
        return OK
    rows: list[tuple[Any, ...]] = [("WHAT", "MODEL", "STATE", "PROGRESS", "DETAIL")]
    for d in active["active_downloads"]:
        detail = []
        if d["status"] == "downloading":
            detail.append(f"{d['speed_mbps']:.1f} MiB/s, eta {fmt_seconds(d['eta_seconds'])}")
        if d.get("queue_position") and d["status"] == "queued":
            detail.append(f"queue #{d['queue_position']}")
        if d.get("total_retries"):
            detail.append(f"{d['total_retries']} retries")
        if d.get("error_code"):
            detail.append(f"{d['error_code']}: {d.get('error_message') or ''}".strip())
        rows.append(("download", d["model_id"], d["status"], f"{d['progress_percent']:.1f}% of {fmt_bytes(d['total_bytes'])}",
                     ", ".join(detail)))
    for b in busy:
        for a in b["activity"]:
            rows.append((_WORK.get(a, a), b["model_id"], a, "-", ""))
        if b["active_leases"]:
            rows.append(("lease", b["model_id"], "in use", "-", f"{b['active_leases']} lease{'s' if b['active_leases'] > 1 else ''}"))
    if len(rows) == 1:
        print("nothing in progress")
    else:
        print(table(rows))
    pause = active.get("during_generation")
    if isinstance(pause, dict) and pause.get("active"):
        print(f"\ndownloads {pause['mode']}d while {pause['leases']} generation lease(s) are held")
    return OK


_SHOWN = ("display_name", "availability_status", "version", "current_version", "latest_version", "update_available", "path",
          "model_type", "capabilities", "quality", "speed", "family", "size_bytes", "verified", "integrity_score",
          "last_health_check", "corruption_detected", "performance_score", "usage_frequency", "last_used",
          "average_generation_time", "active_leases", "activity", "queued_requests", "download_progress", "estimated_download_time",
          "missing_files", "last_scanned")


def _value(key: str, v: Any) -> str:
    if key == "size_bytes":
        return fmt_bytes(v)
    if isinstance(v, list):
        return ", ".join(map(str, v)) or "-"
    if v is None:
        return "-"
    return str(v)


def cmd_show(args: argparse.Namespace) -> int:
    """One model's status, readable."""
    st = call(args, "models.status", {"model_id": args.model})
    if args.json:
        print_json(st)
        return OK
    lines = [f"{args.model}"]
    width = max(len(k) for k in _SHOWN)
    for key in _SHOWN:
        if key in st:
            lines.append(f"  {key.ljust(width)}  {_value(key, st[key])}")
    extra = sorted(k for k in st if k not in _SHOWN and k not in ("model_id", "files", "is_available", "is_loaded", "size_mb"))
    for key in extra:
        lines.append(f"  {key.ljust(width)}  {_value(key, st[key])}")
    files = st.get("files") or []
    if files:
        rows: list[tuple[Any, ...]] = [("FILE", "SIZE", "PRESENT", "VERIFIED")]
        rows += [(f["path"], fmt_bytes(f["size_bytes"]), "yes" if f["present"] else "no", "yes" if f["verified"] else "no") for f in files]
        lines.append("")
        lines += ["  " + line for line in table(rows).splitlines()]
    print("\n".join(lines))
    return OK


def cmd_rm(args: argparse.Namespace) -> int:
    """Remove a model (after asking, unless --yes); a model in use is refused with the reason."""
    what = f"{args.model}" + (f" version {args.model_version}" if args.model_version else " (every version)")
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError(f"not removing {what} without --yes (no terminal to ask on)", USAGE)
        st = call(args, "models.status", {"model_id": args.model})
        if not confirm(f"remove {what}, {fmt_bytes(st.get('size_bytes'))}?"):
            print("not removed")
            return FAILED
    result = call(args, "models.remove", {"model_id": args.model, "version": args.model_version})
    if args.json:
        print_json(result)
    else:
        removed = result.get("removed_versions") or []
        print(f"removed {args.model}" + (f" {', '.join(removed)}" if removed else "") + f", {fmt_bytes(result.get('freed_bytes'))} freed")
    return OK
