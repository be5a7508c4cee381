#!/usr/bin/env python3
"""An example generation script: ask the engine for a model and follow its decision.

    scripts/generate_example.py wan2.2-ti2v-5b --resolution 1280x704 --max-wait 30

1. `models.request` the model (the engine starts its download when missing);
2. follow the decision:
   - ready: use it (at the resolution the engine names when the requested one
     does not fit the free VRAM);
   - a ready alternative (`alternative_model`, `hybrid_approach`,
     `reduce_requirements` naming another model): use it, unless
     `--no-alternative`;
   - otherwise (`queue_and_wait`, `download_and_retry`, a download under way):
     `fallback.queue` the request and wait for `queued_request_ready`
     (or give up on `queued_request_expired`);
   - `mock_generation`: say what to download and stop;
3. `models.acquire` the chosen model (a lease: nothing removes or replaces it
   while this runs), "generate" (sleep), `analytics.record` the run when the
   engine offers it, `models.release`.

Every step is printed as one JSON line on stdout (`{"step": ..., ...}`).
Exit status: 0 generated, 2 engine unreachable, 3 nothing usable in time, 4 mock only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mavail.rpc.client import Client, EngineUnavailable, RpcError, default_socket  # noqa: E402

USE_ALTERNATIVE = ("alternative_model", "hybrid_approach", "reduce_requirements")


def say(step: str, **fields: Any) -> None:
    """Print one step as a JSON line."""
    print(json.dumps({"step": step, **fields}, separators=(",", ":")), flush=True)


def wait_for_release(c: Client, queue_id: str, timeout_s: float) -> dict[str, Any] | None:
    """Block until `queued_request_ready` for `queue_id`; None on expiry or timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for ev in c.events(timeout=min(5.0, max(0.1, deadline - time.monotonic()))):
            params = ev.get("params", {})
            if params.get("queue_id") != queue_id:
                continue
            if ev["method"] == "queued_request_ready":
                return params
            if ev["method"] == "queued_request_expired":
                say("expired", queue_id=queue_id, availability_status=params.get("availability_status"))
                return None
        try:  # silence for a while: show where the request stands
            entry = next((e for e in c.call("fallback.queue_list")["queue"] if e["queue_id"] == queue_id), None)
        except RpcError:
            entry = None
        if entry is not None:
            say("waiting", queue_id=queue_id, position=entry["position"], estimated_wait_seconds=entry["estimated_wait_seconds"],
                availability_status=entry["availability_status"])
    return None


def decide(c: Client, args: argparse.Namespace, requirements: dict[str, Any]) -> tuple[str, str | None] | int:
    """(model to use, resolution) or an exit status."""
    res = c.call("models.request", model_id=args.model_id, requirements=requirements, priority=args.priority,
                 user_preferences={"max_wait_time_minutes": args.max_wait})
    strategy = res.get("fallback_strategy") or {}
    kind = strategy.get("strategy_type")
    say("requested", model_id=args.model_id, action_taken=res["action_taken"], strategy=kind,
        estimated_wait_seconds=res.get("estimated_wait_seconds"), message=strategy.get("user_message"))
    if res["action_taken"] == "model_ready" and (kind is None or strategy.get("suggested_model") == args.model_id):
        return args.model_id, strategy.get("suggested_resolution") or args.resolution
    if kind in USE_ALTERNATIVE and strategy.get("suggested_model") and not args.no_alternative:
        alt = strategy["suggested_model"]
        if alt != args.model_id or res["action_taken"] == "model_ready":
            return alt, strategy.get("suggested_resolution") or args.resolution
    if kind == "mock_generation" and res["action_taken"] not in ("download_started", "download_in_progress", "queued"):
        say("mock", message=strategy.get("user_message"), download_model=strategy.get("download_model"))
        return 4
    if res["action_taken"] == "error" and kind not in ("queue_and_wait", "download_and_retry", "hybrid_approach", "mock_generation"):
        say("error", message=res.get("message"))
        return 3
    q = c.call("fallback.queue", model_id=args.model_id, priority=args.priority, max_wait_time_minutes=args.max_wait,
               request={"prompt": args.prompt, "parameters": {"resolution": args.resolution}})
    say("queued", queue_id=q["queue_id"], position=q["position"], estimated_wait_seconds=q["estimated_wait_seconds"],
        estimated_start_time=q["estimated_start_time"])
    if q.get("status") == "ready":
        return args.model_id, args.resolution
    ready = wait_for_release(c, q["queue_id"], args.max_wait * 60 + 10)
    if ready is None:
        return 3
    say("ready", model_id=ready["model_id"], path=ready.get("path"), waited_seconds=ready.get("waited_seconds"))
    return args.model_id, args.resolution


def main(argv: list[str] | None = None) -> int:
    """Run the example; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_id")
    p.add_argument("--socket", help="engine socket (default: the contract's order)")
    p.add_argument("--resolution", default=None, help="WxH, e.g. 1280x704")
    p.add_argument("--image", action="store_true", help="the request has an input image")
    p.add_argument("--prompt", default="a red fox running through snow")
    p.add_argument("--max-wait", type=float, default=30.0, help="minutes to wait for the model")
    p.add_argument("--priority", default="normal", choices=("critical", "high", "normal", "low"))
    p.add_argument("--generate-seconds", type=float, default=1.0, help="how long the pretend generation takes")
    p.add_argument("--no-alternative", action="store_true", help="wait for the requested model rather than use another")
    args = p.parse_args(argv)
    requirements: dict[str, Any] = {"has_image": args.image}
    if args.resolution:
        requirements["resolution"] = args.resolution
    try:
        with Client(args.socket or default_socket(), timeout=60) as c:
            methods = set(c.call("session.hello", client="generate_example")["methods"])
            choice = decide(c, args, requirements)
            if isinstance(choice, int):
                return choice
            model_id, resolution = choice
            lease = c.call("models.acquire", model_id=model_id)
            say("acquired", model_id=model_id, lease_id=lease["lease_id"], path=lease["path"], resolution=resolution)
            t0 = time.monotonic()
            time.sleep(args.generate_seconds)  # the pretend generation
            took = time.monotonic() - t0
            say("generated", model_id=model_id, generation_time_s=round(took, 3))
            if "analytics.record" in methods:
                c.call("analytics.record", model_id=model_id, generation_time_s=took, success=True,
                       parameters={"resolution": resolution, "prompt": args.prompt})
                say("recorded", model_id=model_id)
            c.call("models.release", lease_id=lease["lease_id"])
            say("released", model_id=model_id)
            return 0
    except EngineUnavailable as exc:
        say("error", message=str(exc))
        return 2
    except RpcError as exc:
        say("error", code=exc.name, message=exc.message, details=exc.details)
        return 3


if __name__ == "__main__":
    sys.exit(main())
