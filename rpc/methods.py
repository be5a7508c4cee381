"""The one method table: every RPC method, its parameters and a thin handler calling the engine.

Handlers take a `CallContext` and validated params, call the engine, and
return a JSON-safe object. Errors are raised as `core.errors` exceptions.
"""

from __future__ import annotations

import hmac
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mavail.core import __version__, limits
from mavail.core.config import SHORT_MAX
from mavail.core.engine import AVAILABILITY, SORT_KEYS, Engine
from mavail.core.errors import InvalidParams, NotFound
from mavail.core.events import EVENT_TYPES
from mavail.core.history import KINDS, newest_first
from mavail.core.priority import PRIORITY_INPUT, normalise_priority
from mavail.core.timeutil import iso
from mavail.rpc import PROTOCOL_VERSION
from mavail.rpc.encoding import StatusEncodings
from mavail.rpc.errors import Unauthorized
from mavail.rpc.spec import Method, P

if TYPE_CHECKING:
    from mavail.rpc.server import Connection


@dataclass(slots=True)
class CallContext:
    """What a handler receives besides its params: the engine, the calling connection, the request id."""

    engine: Engine
    conn: "Connection"
    request_id: str


# --- session and system ---------------------------------------------------------
async def session_hello(ctx: CallContext, client: str | None, token: str | None) -> dict[str, Any]:
    expected = ctx.engine.config.get("rpc.token")
    if expected:
        if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
            raise Unauthorized("session.hello needs the engine's token", field="token")
        ctx.conn.authenticated = True
    ctx.conn.client_name = client
    return {"engine_version": __version__, "protocol_version": PROTOCOL_VERSION, "methods": _method_names(),
            "host": _host_name()}


_HOST: list[Any] = [-1e9, ""]  # (when it was read, the name)


def _host_name() -> str:
    """The machine's host name, read again at most once a second (each read is a system call; hellos come by thousands)."""
    now = time.monotonic()
    if now - _HOST[0] >= 1.0:
        _HOST[:] = [now, socket.gethostname()]
    return _HOST[1]


_METHOD_NAMES: list[str] = []


def _method_names() -> list[str]:
    """The sorted method names, sorted once (TABLE is complete once this module has loaded)."""
    if not _METHOD_NAMES:
        _METHOD_NAMES.extend(sorted(TABLE))
    return _METHOD_NAMES


async def rpc_discover(ctx: CallContext) -> dict[str, Any]:
    return openrpc_document()


async def system_info(ctx: CallContext) -> dict[str, Any]:
    return await ctx.engine.system_info()


async def engine_shutdown(ctx: CallContext) -> dict[str, Any]:
    ctx.engine.shutdown_requested.set()
    return {"success": True, "message": "engine is shutting down"}


# --- config and catalog ---------------------------------------------------------
async def config_get(ctx: CallContext, schema: bool) -> dict[str, Any]:
    config = ctx.engine.config
    return {"settings": config.as_nested(), "schema": config.describe()} if schema else config.as_nested()


async def config_update(ctx: CallContext, patch: dict[str, Any]) -> dict[str, Any]:
    changed, restart = await ctx.engine.config.update_async(patch)
    return {"success": True, "updated_settings": sorted(changed), "restart_required": restart}


async def catalog_reload(ctx: CallContext) -> dict[str, Any]:
    added, removed = await ctx.engine.reload_catalog()
    catalog = ctx.engine.catalog
    return {"success": True, "models": len(catalog), "added": added, "removed": removed, "files": list(catalog.current.files)}


# --- models ---------------------------------------------------------------------
async def models_add(ctx: CallContext, source: str, model_id: str | None, include: list[Any] | None, exclude: list[Any] | None,
                     version: str, display_name: str | None, model_type: str | None) -> dict[str, Any]:
    for name, value in (("include", include), ("exclude", exclude)):
        if value is not None and not all(isinstance(v, str) for v in value):
            raise InvalidParams(f"{name} must be a list of glob patterns", field=name)
    added = await ctx.engine.downloads.add_from_hub(source, model_id=model_id, include=include, exclude=exclude, version=version,
                                                    display_name=display_name, model_type=model_type)
    await ctx.engine.reload_catalog()
    return {"success": True, **added.to_dict()}


async def models_list(ctx: CallContext, page: int, limit: int, sort: str, order: str, status: str | None) -> dict[str, Any]:
    board = ctx.engine.status
    listing = board.list_models(page, limit, sort, order, status)
    # each status goes out as its kept encoding: encoding the page's 50 dicts afresh was most of the call
    encodings = StatusEncodings.of(board)
    listing["data"] = encodings.encoded_many(board, [s["model_id"] for s in listing["data"]])
    return listing


async def models_status(ctx: CallContext, model_id: str | None, refresh: bool) -> dict[str, Any]:
    board = ctx.engine.status
    if model_id is not None:
        return await board.fresh(model_id)
    statuses, summary = await board.overview(refresh)
    encodings = StatusEncodings.of(board)
    return {"models": {s["model_id"]: encodings.encoded(board, s["model_id"]) for s in statuses}, "summary": summary}


async def models_acquire(ctx: CallContext, model_id: str) -> dict[str, Any]:
    lease, status = await ctx.engine.acquire_model(ctx.conn, model_id)
    return {"lease_id": lease.lease_id, "model_id": model_id, "version": lease.version, "path": lease.path,
            "files": [{"path": f["path"], "size_bytes": f["size_bytes"]} for f in status["files"]]}


async def models_release(ctx: CallContext, lease_id: str) -> dict[str, Any]:
    lease = ctx.engine.leases.release(lease_id)
    return {"success": True, "lease_id": lease.lease_id, "model_id": lease.model_id}


# --- fallback ------------------------------------------------------------------
async def models_request(ctx: CallContext, model_id: str, requirements: dict[str, Any] | None, auto_download: bool,
                         priority: str, user_preferences: dict[str, Any] | None) -> dict[str, Any]:
    return await ctx.engine.fallback.request(model_id, requirements, auto_download, normalise_priority(priority), user_preferences)


async def fallback_suggest(ctx: CallContext, requested_model: str, requirements: dict[str, Any] | None,
                           user_preferences: dict[str, Any] | None) -> dict[str, Any]:
    return ctx.engine.fallback.suggest(requested_model, requirements, user_preferences)


async def fallback_queue(ctx: CallContext, model_id: str, request: dict[str, Any], priority: str,
                         max_wait_time_minutes: float | None) -> dict[str, Any]:
    return await ctx.engine.queue.enqueue(model_id, request, priority, max_wait_time_minutes, session=ctx.conn)


async def fallback_queue_list(ctx: CallContext, model_id: str | None) -> dict[str, Any]:
    return ctx.engine.queue.list(model_id)


async def fallback_queue_cancel(ctx: CallContext, queue_id: str) -> dict[str, Any]:
    return await ctx.engine.queue.cancel(queue_id)


# --- downloads ---------------------------------------------------------------------
async def downloads_start(ctx: CallContext, model_id: str, priority: str, max_retries: int | None, bandwidth_limit_mbps: float) -> dict[str, Any]:
    """`downloads.start`: queue the download; the contract's confirmation with its id, place and expected completion."""
    r = await ctx.engine.downloads.start(model_id, priority=priority, max_retries=max_retries, bandwidth_limit_mbps=bandwidth_limit_mbps)
    return {"success": True, "message": f"download of {model_id} {r.status}", "download_id": r.download_id,
            "estimated_completion": iso(r.estimated_completion), "status": r.status, "queue_position": r.queue_position,
            "total_bytes": r.total_bytes}


async def downloads_pause(ctx: CallContext, model_id: str) -> dict[str, Any]:
    """`downloads.pause`: stop the download, keeping its bytes."""
    r = await ctx.engine.downloads.pause(model_id)
    message = f"download of {model_id} paused" if r.changed else f"{model_id} is already paused"
    return {"success": True, "message": message, "new_status": r.status}


async def downloads_resume(ctx: CallContext, model_id: str) -> dict[str, Any]:
    """`downloads.resume`: queue a paused or failed download again."""
    r = await ctx.engine.downloads.resume(model_id)
    message = f"download of {model_id} resumed" if r.changed else f"{model_id} is already {r.status}"
    return {"success": True, "message": message, "new_status": r.status}


async def downloads_cancel(ctx: CallContext, model_id: str, keep_partial: bool) -> dict[str, Any]:
    """`downloads.cancel`: stop the download, deleting its partial data unless asked to keep it."""
    r = await ctx.engine.downloads.cancel(model_id, keep_partial=keep_partial)
    return {"success": True, "message": f"download of {model_id} cancelled" + (" (partial data kept)" if r.keep_partial else ""),
            "new_status": r.status}


async def downloads_set_priority(ctx: CallContext, model_id: str, priority: str) -> dict[str, Any]:
    """`downloads.set_priority`: the new priority and place in the queue."""
    r = await ctx.engine.downloads.set_priority(model_id, priority)
    return {"success": True, "message": f"{model_id} priority is {r.priority}", "priority": r.priority, "queue_position": r.queue_position}


async def downloads_move(ctx: CallContext, model_id: str, position: int) -> dict[str, Any]:
    """`downloads.move`: the place in the queue and the priority taken there."""
    r = await ctx.engine.downloads.move(model_id, position)
    return {"success": True, "message": f"{model_id} moved to position {r.queue_position}", "queue_position": r.queue_position,
            "priority": r.priority}


async def downloads_set_limit(ctx: CallContext, model_id: str, bandwidth_limit_mbps: float) -> dict[str, Any]:
    """`downloads.set_limit`: the download's own cap in force now."""
    r = await ctx.engine.downloads.set_limit(model_id, bandwidth_limit_mbps)
    message = f"{model_id} limited to {bandwidth_limit_mbps} MiB/s" if r.bandwidth_limit_mbps else f"{model_id} unlimited"
    return {"success": True, "message": message, "bandwidth_limit_mbps": r.bandwidth_limit_mbps}


async def downloads_progress(ctx: CallContext, model_id: str, files: bool) -> dict[str, Any]:
    """`downloads.progress`: the progress object of the model's download (with `files`, each file's too)."""
    return ctx.engine.downloads.progress(model_id, files=files)


async def downloads_active(ctx: CallContext) -> dict[str, Any]:
    """`downloads.active`: every live download in queue order, with the totals."""
    r = ctx.engine.downloads.active()
    return {"active_downloads": r.items, "total_active": len(r.items), "total_running": r.total_running,
            "total_bandwidth_usage_mbps": round(r.bandwidth_usage_mbps, 3), "bandwidth_limit_mbps": r.bandwidth_limit_mbps,
            "max_concurrent": r.max_concurrent, "during_generation": ctx.engine.generation_gate.state().to_dict()}


async def history_list(ctx: CallContext, kinds: list[Any] | None, model_id: str | None, limit: int) -> dict[str, Any]:
    """`history.list`: finished downloads, checks and repairs, newest first."""
    wanted = set(kinds or KINDS)
    if not wanted <= set(KINDS):
        raise InvalidParams(f"kinds must be among: {', '.join(KINDS)}", field="kinds", allowed=list(KINDS))
    entries = (await ctx.engine.downloads.history(limit, model_id) if "download" in wanted else []) + \
        [e for e in await ctx.engine.health.history(limit, model_id) if e.kind in wanted]
    return {"entries": [e.to_dict() for e in newest_first(entries, limit)]}


# --- events ---------------------------------------------------------------------
async def events_subscribe(ctx: CallContext, types: list[Any] | None, model_ids: list[Any] | None) -> dict[str, Any]:
    for t in types or []:
        if t not in EVENT_TYPES:
            raise InvalidParams(f"unknown event type {t!r}", field="types", allowed=list(EVENT_TYPES))
    if model_ids is not None and not all(isinstance(m, str) for m in model_ids):
        raise InvalidParams("model_ids must be a list of strings", field="model_ids")
    return {"subscription_id": ctx.conn.subscribe(types, model_ids)}


async def events_unsubscribe(ctx: CallContext, subscription_id: str) -> dict[str, Any]:
    if not ctx.conn.unsubscribe(subscription_id):
        raise NotFound(f"no subscription {subscription_id!r} on this connection", field="subscription_id")
    return {"success": True}


# --- health and updates ---------------------------------------------------------------
async def health_status(ctx: CallContext, model_id: str | None) -> dict[str, Any]:
    return await ctx.engine.health.status(model_id)


async def health_check(ctx: CallContext, model_id: str, check_type: str, force: bool, wait: bool, max_read_mbps: float | None,
                       verify_sha256: bool) -> dict[str, Any]:
    out = await ctx.engine.health.check(model_id, check_type, force=force, wait=wait, max_read_mbps=max_read_mbps, verify_sha256=verify_sha256)
    res: dict[str, Any] = {"success": out.status in ("completed", "running"), "check_id": out.check_id, "status": out.status, "result": out.result}
    if out.joined and out.status == "running":
        res["joined"] = True
    return res


async def health_check_all(ctx: CallContext) -> dict[str, Any]:
    return {"success": True, **(await ctx.engine.health.check_all()).to_dict()}


async def health_check_status(ctx: CallContext, check_id: str) -> dict[str, Any]:
    return ctx.engine.health.job(check_id).to_dict()


async def health_repair(ctx: CallContext, model_id: str, repair_type: str, force_repair: bool) -> dict[str, Any]:
    return (await ctx.engine.health.repair(model_id, repair_type, force_repair)).to_dict()


async def models_check_updates(ctx: CallContext) -> dict[str, Any]:
    return {"updates": [u.to_dict() for u in await ctx.engine.updates.check_updates()]}


async def models_update(ctx: CallContext, model_id: str) -> dict[str, Any]:
    return {"success": True, **(await ctx.engine.updates.update(model_id)).to_dict()}


async def models_rollback(ctx: CallContext, model_id: str) -> dict[str, Any]:
    return {"success": True, **(await ctx.engine.updates.rollback(model_id)).to_dict()}


async def models_remove(ctx: CallContext, model_id: str, version: str | None) -> dict[str, Any]:
    return {"success": True, **(await ctx.engine.updates.remove(model_id, version)).to_dict()}


# --- analytics and storage -----------------------------------------------------
async def analytics_record(ctx: CallContext, model_id: str, generation_time_s: float, success: bool, parameters: dict[str, Any] | None,
                           vram_peak_mb: float | None, timestamp: str | None) -> dict[str, Any]:
    """`analytics.record`: buffer one generation; the model and when it was recorded."""
    got = await ctx.engine.analytics.record(model_id, generation_time_s, success, parameters, vram_peak_mb, timestamp)
    return {"success": True, "model_id": got.model_id, "recorded_at": got.recorded_at, "stored": got.stored}


async def analytics_record_batch(ctx: CallContext, events: list[Any]) -> dict[str, Any]:
    """`analytics.record_batch`: buffer every event or none; how many were recorded."""
    return {"success": True, "recorded": await ctx.engine.analytics.record_many(events)}


async def analytics_usage(ctx: CallContext, model_id: str | None, period: str | None, start_date: str | None, end_date: str | None,
                          include_series: bool | None) -> dict[str, Any]:
    """`analytics.usage`: the usage figures over a range."""
    return await ctx.engine.analytics.usage(model_id, period, start_date, end_date, include_series)


async def analytics_cleanup(ctx: CallContext, storage_threshold_gb: float | None, min_unused_days: float | None) -> dict[str, Any]:
    """`analytics.cleanup`: the retention plan as recommendations."""
    return await ctx.engine.storage.recommendations(storage_threshold_gb, min_unused_days)


async def analytics_performance(ctx: CallContext) -> dict[str, Any]:
    """`analytics.performance`: per-model scores and trends."""
    return await ctx.engine.analytics.performance()


async def analytics_preload(ctx: CallContext) -> dict[str, Any]:
    """`analytics.preload`: models worth fetching or fixing before they are asked for."""
    return await ctx.engine.analytics.preload()


async def storage_info(ctx: CallContext) -> dict[str, Any]:
    """`storage.info`: disk figures, every model's size and tier, partial data."""
    return await ctx.engine.storage.info()


async def storage_cleanup(ctx: CallContext, cleanup_type: str, models_to_remove: list[Any] | None, min_unused_days: float | None,
                          preserve_frequently_used: bool, dry_run: bool, plan_id: str | None, include_partial: bool) -> dict[str, Any]:
    """`storage.cleanup`: run (or, dry, only plan) a cleanup."""
    got = await ctx.engine.storage.cleanup(cleanup_type, models_to_remove, min_unused_days, preserve_frequently_used, dry_run,
                                           plan_id, include_partial)
    return {"success": True, **got.to_dict()}


_MODEL_ID = P("model_id", "string", "A catalog model id.", required=True)
_PRIORITY = P("priority", "string", "critical, high, normal (or medium), low.", default="normal", enum=PRIORITY_INPUT)
_PRIORITY_REQ = P("priority", "string", "critical, high, normal (or medium), low.", required=True, enum=PRIORITY_INPUT)

METHODS: tuple[Method, ...] = (
    Method("session.hello", session_hello, "Greet the engine; present the token when one is configured. Answers engine_version, "
           "protocol_version, methods and host (the engine machine's host name).",
           (P("client", "string", "A name for the client, shown in logs."), P("token", "string", "The engine's rpc.token.")), needs_auth=False, inline=True),
    Method("rpc.discover", rpc_discover, "An OpenRPC document of every method.", inline=True),
    Method("system.info", system_info, "CPU, memory, disk and GPUs (NVML); cumulative disk I/O and network bytes with the "
           "engine's monotonic time they were read at (sampled_monotonic_s), so two answers give the rates."),
    Method("engine.shutdown", engine_shutdown, "Stop the engine cleanly, keeping partial downloads."),
    Method("config.get", config_get, "The whole configuration; with schema, each setting's description, short meaning, default and bounds too.", (
        P("schema", "boolean", "Answer {settings, schema}: every key's type, default, value, description, short (what it is "
          f"for in a few words, at most {SHORT_MAX} characters, for a table), bounds, live.", default=False),
    ), inline=True),
    Method("config.update", config_update, "Validate, apply and save settings.",
           (P("patch", "object", "Settings as {section: {key: value}} or {\"section.key\": value}.", required=True),)),
    Method("catalog.reload", catalog_reload, "Read the catalog files again; keep the old catalog if any is invalid."),
    Method("models.list", models_list, "One page of model statuses.", (
        P("page", "integer", "Page number, from 1.", default=1, minimum=1),
        P("limit", "integer", "Models per page.", default=20, minimum=1, maximum=100),
        P("sort", "string", "Sort key.", default="model_id", enum=SORT_KEYS),
        P("order", "string", "Sort order.", default="asc", enum=("asc", "desc")),
        P("status", "string", "Only models with this availability status.", enum=AVAILABILITY, nullable=True),
    ), inline=True),
    Method("models.add", models_add, "Write a catalog entry (catalog.d/<id>.toml) for a Hugging Face repository or a shipped model's "
           "name, from the Hub's metadata; the catalog is reloaded.", (
        P("source", "string", "hf://ORG/REPO[@REVISION], or a shipped name such as wan2.2-ti2v-5b.", required=True),
        P("model_id", "string", "The catalog id; default the shipped name or the repository's name.", nullable=True),
        P("include", "array", "Glob patterns of the files to fetch (huggingface_hub's allow_patterns).", nullable=True),
        P("exclude", "array", "Glob patterns of the files to leave out (huggingface_hub's ignore_patterns).", nullable=True),
        P("version", "string", "The entry's version.", default="1"),
        P("display_name", "string", "A display name; default the repository's id.", nullable=True),
        P("model_type", "string", "text_to_video, image_to_video or text_image_to_video; default from the model card.", nullable=True),
    )),
    Method("models.status", models_status, "Detailed status of one model, or of all with a summary.", (
        P("model_id", "string", "A model id; omit for every model.", nullable=True),
        P("refresh", "boolean", "Without model_id: rescan the disk first.", default=False),
    )),
    Method("models.acquire", models_acquire, "Mark an available model in use; returns a lease, its path and files.", (_MODEL_ID,)),
    Method("models.release", models_release, "End a lease.", (P("lease_id", "string", "From models.acquire.", required=True),)),
    # fallback
    Method("models.request", models_request, "Ask for a model: ready (path), download started or in progress (estimate), "
           "repair attempted, or error; with a fallback_strategy and suggestions when an alternative is worth a look.", (
        _MODEL_ID,
        P("requirements", "object", "What the generation needs: resolution \"WxH\", has_image or inputs, model_type, "
          "capabilities, quality, speed, max_wait_time_minutes.", nullable=True),
        P("auto_download", "boolean", "Start (or join) the download when the model is missing.", default=True),
        P("priority", "string", "Download priority when one is started.", default="normal", enum=PRIORITY_INPUT),
        P("user_preferences", "object", "prefer_smaller_models, max_wait_time_minutes.", nullable=True),
    )),
    Method("fallback.suggest", fallback_suggest, "Ranked alternatives to a model and the strategy to follow.", (
        P("requested_model", "string", "The model the caller wants.", required=True),
        P("requirements", "object", "As for models.request.", nullable=True),
        P("user_preferences", "object", "prefer_smaller_models, max_wait_time_minutes.", nullable=True),
    ), inline=True),
    Method("fallback.queue", fallback_queue, "Queue a generation request until its model is ready (starts the download).", (
        _MODEL_ID,
        P("request", "object", "The generation request, returned as is in queued_request_ready.", required=True),
        P("priority", "string", "Queue and download priority.", default="normal", enum=PRIORITY_INPUT),
        P("max_wait_time_minutes", "number", "Expire the request after this long (default fallback.queue_max_wait_minutes).",
          nullable=True, minimum=0.001, maximum=limits.MAX_WAIT_MINUTES),
    )),
    Method("fallback.queue_list", fallback_queue_list, "Waiting requests in queue order, with current positions and estimates.", (
        P("model_id", "string", "Only requests for this model.", nullable=True),
    ), inline=True),
    Method("fallback.queue_cancel", fallback_queue_cancel, "Cancel a waiting request.",
           (P("queue_id", "string", "From fallback.queue.", required=True),)),
    # downloads
    Method("downloads.start", downloads_start, "Queue a download of a model's catalog version.", (
        _MODEL_ID,
        _PRIORITY,
        P("max_retries", "integer", "Retries per file without progress; default downloads.max_retries.", minimum=0, maximum=100, nullable=True),
        P("bandwidth_limit_mbps", "number", "This download's cap in MiB/s; 0 = none.", default=0.0, minimum=0, maximum=limits.MAX_RATE_MBPS),
    )),
    Method("downloads.pause", downloads_pause, "Stop a download, keeping every byte.", (_MODEL_ID,)),
    Method("downloads.resume", downloads_resume, "Queue a paused or failed download again.", (_MODEL_ID,)),
    Method("downloads.cancel", downloads_cancel, "Stop a download and delete its partial data.", (
        _MODEL_ID, P("keep_partial", "boolean", "Keep the partial data for a later start.", default=False))),
    Method("downloads.set_priority", downloads_set_priority, "Change a download's priority.", (_MODEL_ID, _PRIORITY_REQ)),
    Method("downloads.move", downloads_move, "Put a download at a position of the queue (1 = first).", (
        _MODEL_ID, P("position", "integer", "1-based queue position.", required=True, minimum=1))),
    Method("downloads.set_limit", downloads_set_limit, "Change a download's own bandwidth cap while it runs.", (
        _MODEL_ID, P("bandwidth_limit_mbps", "number", "MiB/s; 0 = none.", required=True, minimum=0, maximum=limits.MAX_RATE_MBPS))),
    Method("downloads.progress", downloads_progress, "Progress of a model's download.", (
        _MODEL_ID,
        P("files", "boolean", "Add `files`: each file's path, size_bytes, downloaded_bytes, status (installed, downloading, "
          "verifying, partial, pending) and connections.", default=False),
    ), inline=True),
    Method("downloads.active", downloads_active, "Every download not completed or cancelled, in queue order; during_generation says whether a held lease pauses or throttles them.", inline=True),
    Method("history.list", history_list, "Finished downloads (the latest of each model), health checks and repairs, newest "
           "first, with when, how long, how many bytes and why; kept across restarts.", (
        P("kinds", "array", "Any of download, check, repair; omit for all.", nullable=True),
        P("model_id", "string", "Only this model; omit for all.", nullable=True),
        P("limit", "integer", "At most this many entries.", default=100, minimum=1, maximum=1000),
    )),
    # health and updates
    Method("health.status", health_status, "Health of one model, or of every model with the system figures.",
           (P("model_id", "string", "A model id; omit for every model.", nullable=True),)),
    Method("health.check", health_check, "Check a model: quick (presence, size, changed since verified), full/integrity (every byte), performance.", (
        _MODEL_ID,
        P("check_type", "string", "Kind of check.", default="full", enum=("quick", "full", "integrity", "performance")),
        P("force", "boolean", "Accepted for compatibility (force_check); every call runs a fresh check.", default=False),
        P("wait", "boolean", "Wait for the result; false returns the check_id at once (see health.check_status).", default=True),
        P("max_read_mbps", "number", "Read budget of this check in MiB/s (0 = none); default none: health.max_read_mbps paces scheduled checks only.",
          minimum=0, maximum=limits.MAX_RATE_MBPS, nullable=True),
        P("verify_sha256", "boolean", "Full check: also prove every file's whole-file sha256 (default: the recorded piece hashes prove it).",
          default=False),
    )),
    Method("health.check_all", health_check_all, "Quick check of every installed model in one pass."),
    Method("health.check_status", health_check_status, "A check or repair by id: status and result; a full check also its bytes_read.",
           (P("check_id", "string", "From health.check or health.repair.", required=True),)),
    Method("health.repair", health_repair, "Repair a model: auto (cheapest that works), redownload, integrity_fix (only the broken pieces).", (
        _MODEL_ID,
        P("repair_type", "string", "How to repair.", default="auto", enum=("auto", "redownload", "integrity_fix")),
        P("force_repair", "boolean", "Repair even while the model is in use; with redownload, fetch healthy files again too.", default=False),
    )),
    Method("models.check_updates", models_check_updates, "Installed models whose catalog version is newer."),
    Method("models.update", models_update, "Download the catalog version beside the current one, verify it, switch when no lease holds it.",
           (_MODEL_ID,)),
    Method("models.rollback", models_rollback, "Switch back to the newest kept previous version (after any lease ends).", (_MODEL_ID,)),
    Method("models.remove", models_remove, "Remove a model (or one version): refused while in use or busy.", (
        P("model_id", "string", "A model id.", required=True),
        P("version", "string", "Only this version; omit for every version.", nullable=True),
    )),
    Method("events.subscribe", events_subscribe, "Receive event notifications on this connection.", (
        P("types", "array", "Event types; omit for all.", nullable=True),
        P("model_ids", "array", "Only events about these models; omit for all.", nullable=True),
    )),
    Method("events.unsubscribe", events_unsubscribe, "Stop a subscription.",
           (P("subscription_id", "string", "From events.subscribe.", required=True),)),
    # analytics and storage
    Method("analytics.record", analytics_record, "Record one generation: its time, success and parameters (stored false while analytics.enabled is off).", (
        _MODEL_ID,
        P("generation_time_s", "number", "Seconds the generation took.", required=True, minimum=0, maximum=limits.MAX_DURATION_S),
        P("success", "boolean", "Whether it succeeded.", required=True),
        P("parameters", "object", "The generation's parameters (at most 16 KiB as JSON).", nullable=True),
        P("vram_peak_mb", "number", "Peak VRAM in MiB.", nullable=True, minimum=0, maximum=limits.MAX_VRAM_GB * 1024),
        P("timestamp", "string", "When it finished (ISO-8601, default now; not in the future).", nullable=True),
    ), inline=True),
    Method("analytics.record_batch", analytics_record_batch, "Record up to 1,000 generations at once (all or none).", (
        P("events", "array", "Objects with the params of analytics.record.", required=True),
    ), inline=True),
    Method("analytics.usage", analytics_usage, "Usage figures over a period (UTC days), for one model or every model used.", (
        P("model_id", "string", "One model; omit for all.", nullable=True),
        P("period", "string", "day = today, week/month/year = the last 7/30/365 UTC days (default week).",
          enum=("day", "week", "month", "year"), nullable=True),
        P("start_date", "string", "ISO date or date-time; replaces period.", nullable=True),
        P("end_date", "string", "ISO date (inclusive) or date-time (exclusive); default the end of today.", nullable=True),
        P("include_series", "boolean", "Daily series: omitted = the summary's (and the one model's), true = also every "
          "model's last_30_days_usage, false = none.", nullable=True),
    )),
    Method("analytics.cleanup", analytics_cleanup, "Cleanup recommendations by the retention policies, with reasons and savings.", (
        P("storage_threshold_gb", "number", "Recommend enough to bring the models under this many GiB.", nullable=True, minimum=0,
          maximum=limits.MAX_GB),
        P("min_unused_days", "number", "Models unused this long are candidates (default storage.keep_used_within_days).",
          nullable=True, minimum=0, maximum=limits.MAX_DAYS),
    )),
    Method("analytics.performance", analytics_performance, "Per-model performance scores and trends."),
    Method("analytics.preload", analytics_preload, "Models used often that are missing, outdated or unhealthy."),
    Method("storage.info", storage_info, "Disk figures, every model's size, tier and use, partial downloads."),
    Method("storage.cleanup", storage_cleanup, "Remove unused models (dry_run: only the plan).", (
        P("cleanup_type", "string", "auto: by the retention policies; manual: models_to_remove.", default="auto", enum=("auto", "manual")),
        P("models_to_remove", "array", "Model ids, for a manual cleanup.", nullable=True),
        P("min_unused_days", "number", "Override storage.keep_used_within_days.", nullable=True, minimum=0, maximum=limits.MAX_DAYS),
        P("preserve_frequently_used", "boolean", "Keep models used more than storage.keep_used_more_than times.", default=True),
        P("dry_run", "boolean", "Only return the plan.", default=False),
        P("plan_id", "string", "Run exactly the plan a dry run returned (what is still safe to remove).", nullable=True),
        P("include_partial", "boolean", "Also remove orphaned partial download data.", default=True),
    )),
)

TABLE: dict[str, Method] = {m.name: m for m in METHODS}


def openrpc_document() -> dict[str, Any]:
    """The OpenRPC description of the method table (generated, so it cannot drift)."""
    return {
        "openrpc": "1.2.6",
        "info": {"title": "mavail engine", "version": __version__, "description": f"JSON-RPC 2.0 over a Unix socket, protocol {PROTOCOL_VERSION}"},
        "methods": [m.openrpc() for m in METHODS],
    }
