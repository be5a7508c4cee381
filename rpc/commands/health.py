"""`mavail verify [MODEL...] [--full]` and `mavail repair MODEL`: checks and repairs, with progress on a terminal."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from mavail.rpc.client import RpcError
from mavail.rpc.commands.common import FAILED, OK, connected, describe_rpc_error, fmt_bytes, print_json

POLL_S = 0.2


def add_parsers(sub: Any, common: Any) -> None:
    """Register `verify` and `repair`."""
    p = sub.add_parser("verify", help="check models: quick (present, sizes, unchanged) or --full (every byte against its hashes)")
    common(p)
    p.add_argument("models", nargs="*", metavar="MODEL", help="default: every installed model")
    p.add_argument("--full", action="store_true", help="read every byte and prove it against the recorded piece hashes")
    p.add_argument("--sha256", action="store_true", help="with --full: also prove each file's whole-file sha256")
    p.add_argument("--json", action="store_true", help="print one JSON line per model's check result")
    p.set_defaults(handler=cmd_verify)
    p = sub.add_parser("repair", help="repair a model: the cheapest way that works, or the one asked")
    common(p)
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--type", dest="repair_type", default="auto", choices=["auto", "redownload", "integrity_fix"])
    p.add_argument("--force", action="store_true", help="repair even while the model is in use")
    p.add_argument("--json", action="store_true", help="print the health.repair result")
    p.set_defaults(handler=cmd_repair)


def _line(mid: str, result: dict[str, Any]) -> str:
    issues = result.get("issues") or []
    words = f"{mid}: {result.get('overall_health')}, integrity {result.get('integrity_score')}"
    if result.get("bytes_hashed"):
        words += f", {fmt_bytes(result['bytes_hashed'])} hashed in {result.get('duration_s', 0):.1f} s"
    if issues:
        words += "; " + "; ".join(str(i.get("message") or i.get("kind") or i) for i in issues[:3])
    return words


def cmd_verify(args: argparse.Namespace) -> int:
    """Check each model; exit 1 when one is damaged, incomplete or not installed, or its check failed."""
    tty = sys.stdout.isatty() and not args.json
    bad = False
    with connected(args, timeout=3600) as client:
        if args.models:
            targets = list(dict.fromkeys(args.models))
            sizes = {m: int(client.call("models.status", {"model_id": m}).get("size_bytes") or 0) for m in targets}
        else:
            models = client.call("models.status")["models"]
            targets = [m for m, s in models.items() if s.get("current_version")]
            sizes = {m: int(models[m].get("size_bytes") or 0) for m in targets}
        if not targets:
            print("no installed models to verify")
            return OK
        progress: Any = None
        if tty:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

            progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True), TimeElapsedColumn(),
                                console=Console(file=sys.stdout))
            progress.start()
            overall = progress.add_task("verify", total=sum(sizes.values()) or len(targets))
        try:
            for mid in targets:
                if progress is not None:
                    progress.update(overall, description=f"verify {mid}")
                try:
                    started = client.call("health.check", {"model_id": mid, "check_type": "full" if args.full else "quick",
                                                           "wait": False, "verify_sha256": bool(args.sha256)})
                    job = started
                    base = progress.tasks[0].completed if progress is not None else 0
                    while job.get("status") == "running":
                        time.sleep(POLL_S)
                        job = client.call("health.check_status", {"check_id": started["check_id"]})
                        if progress is not None and job.get("bytes_read") is not None:
                            # a full check reads every byte once: its bar follows them (the sha256 pass may read more)
                            progress.update(overall, completed=base + min(int(job["bytes_read"]), sizes.get(mid) or 0))
                    result = job.get("result") or {}
                except RpcError as exc:
                    bad = True
                    msg = describe_rpc_error(exc)
                    if args.json:
                        print_json({"model_id": mid, "error": exc.to_dict()}, pretty=False)
                    else:
                        print(f"{mid}: not checked: {msg}", file=sys.stderr)
                    continue
                # the files are what verify answers for: damage, a missing file, or no installed version is a failure
                bad = (bad or job.get("status") != "completed" or bool(result.get("corruption_detected"))
                       or result.get("installed") is False or any(i.get("file") for i in result.get("issues") or []))
                if args.json:
                    print_json({"model_id": mid, "status": job.get("status"), "result": result}, pretty=False)
                elif progress is not None:
                    progress.console.print(_line(mid, result))
                else:
                    print(_line(mid, result), flush=True)
                if progress is not None:
                    progress.update(overall, completed=base + (sizes.get(mid) or 1))
        finally:
            if progress is not None:
                progress.stop()
    return FAILED if bad else OK


def cmd_repair(args: argparse.Namespace) -> int:
    """Repair one model; exit 1 when it is still not healthy."""
    with connected(args, timeout=24 * 3600) as client:
        result = client.call("health.repair", {"model_id": args.model, "repair_type": args.repair_type, "force_repair": args.force})
    if args.json:
        print_json(result)
    else:
        actions = ", ".join(result.get("actions_taken") or []) or "nothing to do"
        print(f"{args.model}: {result.get('overall_health')} (integrity {result.get('integrity_score')}); {actions}; "
              f"{fmt_bytes(result.get('bytes_redownloaded') or 0)} downloaded again")
        for e in result.get("errors") or []:
            print(f"mavail: {e}", file=sys.stderr)
    return OK if result.get("overall_health") == "healthy" and not result.get("errors") else FAILED
