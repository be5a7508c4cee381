"""The one method table: every RPC method, its parameters and a thin handler calling the engine.

Handlers take a `CallContext` and validated params, call the engine, and
return a JSON-safe object. Errors are raised as `core.errors` exceptions.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core import __version__
from core.engine import AVAILABILITY, SORT_KEYS, Engine
from core.errors import InvalidParams, InvalidState, NotFound, Unauthorized
from core.events import EVENT_TYPES
from rpc import PROTOCOL_VERSION
from rpc.spec import Method, P

if TYPE_CHECKING:
    from rpc.server import Connection


@dataclass
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
    return {"engine_version": __version__, "protocol_version": PROTOCOL_VERSION, "methods": sorted(TABLE)}


async def rpc_discover(ctx: CallContext) -> dict[str, Any]:
    return openrpc_document()


async def system_info(ctx: CallContext) -> dict[str, Any]:
    return await ctx.engine.system_info()


async def engine_shutdown(ctx: CallContext) -> dict[str, Any]:
    ctx.engine.shutdown_requested.set()
    return {"success": True, "message": "engine is shutting down"}


# --- config and catalog ---------------------------------------------------------
async def config_get(ctx: CallContext) -> dict[str, Any]:
    return ctx.engine.config.as_nested()


async def config_update(ctx: CallContext, patch: dict[str, Any]) -> dict[str, Any]:
    changed, restart = ctx.engine.config.update(patch)
    return {"success": True, "updated_settings": sorted(changed), "restart_required": restart}


async def catalog_reload(ctx: CallContext) -> dict[str, Any]:
    return await ctx.engine.reload_catalog()


# --- models ---------------------------------------------------------------------
async def models_list(ctx: CallContext, page: int, limit: int, sort: str, order: str, status: str | None) -> dict[str, Any]:
    return ctx.engine.list_models(page, limit, sort, order, status)


async def models_status(ctx: CallContext, model_id: str | None, refresh: bool) -> dict[str, Any]:
    engine = ctx.engine
    if model_id is None:
        if refresh:
            await engine.refresh_presence()
        statuses = engine.all_statuses()
        return {"models": {s["model_id"]: s for s in statuses}, "summary": engine.summary(statuses)}
    engine.spec(model_id)
    await engine.refresh_presence([model_id])
    return engine.model_status(model_id)


async def models_acquire(ctx: CallContext, model_id: str) -> dict[str, Any]:
    engine = ctx.engine
    engine.spec(model_id)
    await engine.refresh_presence([model_id])
    status = engine.model_status(model_id)
    if not status["is_available"]:
        raise InvalidState(f"model {model_id!r} is {status['availability_status']}, not available", model_id=model_id, availability_status=status["availability_status"])
    lease = engine.leases.acquire(ctx.conn, model_id, status["version"], status["path"])
    return {"lease_id": lease.lease_id, "model_id": model_id, "version": lease.version, "path": lease.path,
            "files": [{"path": f["path"], "size_bytes": f["size_bytes"]} for f in status["files"]]}


async def models_release(ctx: CallContext, lease_id: str) -> dict[str, Any]:
    lease = ctx.engine.leases.release(lease_id)
    return {"success": True, "lease_id": lease.lease_id, "model_id": lease.model_id}


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


# --- analytics and storage (issue 6) -------------------------------------------
async def analytics_record(ctx: CallContext, model_id: str, generation_time_s: float, success: bool, parameters: dict[str, Any] | None,
                           vram_peak_mb: float | None, timestamp: str | None) -> dict[str, Any]:
    return await ctx.engine.analytics.record(model_id, generation_time_s, success, parameters, vram_peak_mb, timestamp)


async def analytics_record_batch(ctx: CallContext, events: list[Any]) -> dict[str, Any]:
    return await ctx.engine.analytics.record_many(events)


async def analytics_usage(ctx: CallContext, model_id: str | None, period: str | None, start_date: str | None, end_date: str | None,
                          include_series: bool | None) -> dict[str, Any]:
    return await ctx.engine.analytics.usage(model_id, period, start_date, end_date, include_series)


async def analytics_cleanup(ctx: CallContext, storage_threshold_gb: float | None, min_unused_days: float | None) -> dict[str, Any]:
    return await ctx.engine.storage.recommendations(storage_threshold_gb, min_unused_days)


async def analytics_performance(ctx: CallContext) -> dict[str, Any]:
    return await ctx.engine.analytics.performance()


async def analytics_preload(ctx: CallContext) -> dict[str, Any]:
    return await ctx.engine.analytics.preload()


async def storage_info(ctx: CallContext) -> dict[str, Any]:
    return await ctx.engine.storage.info()


async def storage_cleanup(ctx: CallContext, cleanup_type: str, models_to_remove: list[Any] | None, min_unused_days: float | None,
                          preserve_frequently_used: bool, dry_run: bool, plan_id: str | None, include_partial: bool) -> dict[str, Any]:
    return await ctx.engine.storage.cleanup(cleanup_type, models_to_remove, min_unused_days, preserve_frequently_used, dry_run,
                                            plan_id, include_partial)


_MODEL_ID = P("model_id", "string", "A catalog model id.", required=True)

METHODS: tuple[Method, ...] = (
    Method("session.hello", session_hello, "Greet the engine; present the token when one is configured.",
           (P("client", "string", "A name for the client, shown in logs."), P("token", "string", "The engine's rpc.token.")), needs_auth=False, inline=True),
    Method("rpc.discover", rpc_discover, "An OpenRPC document of every method.", inline=True),
    Method("system.info", system_info, "CPU, memory, disk and GPUs (NVML)."),
    Method("engine.shutdown", engine_shutdown, "Stop the engine cleanly, keeping partial downloads."),
    Method("config.get", config_get, "The whole configuration.", inline=True),
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
    Method("models.status", models_status, "Detailed status of one model, or of all with a summary.", (
        P("model_id", "string", "A model id; omit for every model.", nullable=True),
        P("refresh", "boolean", "Without model_id: rescan the disk first.", default=False),
    )),
    Method("models.acquire", models_acquire, "Mark an available model in use; returns a lease, its path and files.", (_MODEL_ID,)),
    Method("models.release", models_release, "End a lease.", (P("lease_id", "string", "From models.acquire.", required=True),)),
    Method("events.subscribe", events_subscribe, "Receive event notifications on this connection.", (
        P("types", "array", "Event types; omit for all.", nullable=True),
        P("model_ids", "array", "Only events about these models; omit for all.", nullable=True),
    )),
    Method("events.unsubscribe", events_unsubscribe, "Stop a subscription.",
           (P("subscription_id", "string", "From events.subscribe.", required=True),)),
    # analytics and storage (issue 6)
    Method("analytics.record", analytics_record, "Record one generation: its time, success and parameters.", (
        _MODEL_ID,
        P("generation_time_s", "number", "Seconds the generation took.", required=True, minimum=0),
        P("success", "boolean", "Whether it succeeded.", required=True),
        P("parameters", "object", "The generation's parameters (at most 16 KiB as JSON).", nullable=True),
        P("vram_peak_mb", "number", "Peak VRAM in MiB.", nullable=True, minimum=0),
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
        P("storage_threshold_gb", "number", "Recommend enough to bring the models under this many GiB.", nullable=True, minimum=0),
        P("min_unused_days", "number", "Models unused this long are candidates (default storage.keep_used_within_days).",
          nullable=True, minimum=0),
    )),
    Method("analytics.performance", analytics_performance, "Per-model performance scores and trends."),
    Method("analytics.preload", analytics_preload, "Models used often that are missing, outdated or unhealthy."),
    Method("storage.info", storage_info, "Disk figures, every model's size, tier and use, partial downloads."),
    Method("storage.cleanup", storage_cleanup, "Remove unused models (dry_run: only the plan).", (
        P("cleanup_type", "string", "auto: by the retention policies; manual: models_to_remove.", default="auto", enum=("auto", "manual")),
        P("models_to_remove", "array", "Model ids, for a manual cleanup.", nullable=True),
        P("min_unused_days", "number", "Override storage.keep_used_within_days.", nullable=True, minimum=0),
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
