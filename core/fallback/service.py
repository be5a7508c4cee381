"""The fallback service: fallback.suggest and models.request, over the scoring and strategy modules.

It depends on narrow ports only (settings, clock, catalog, presence, the
status board's read side, the task spawner, the event emitter) and on small
callables for what it needs of other services (downloads, health, analytics),
which the composition root passes in.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from mavail.core.errors import Conflict, MavailError
from mavail.core.fallback.scoring import IN_PROGRESS, READY, FeatureIndex, Query, Weights, build_query, measured_times, rank, vram_fit
from mavail.core.fallback.strategy import Thresholds, choose
from mavail.core.ports import CatalogView, Emit, PresenceView, Settings, Spawner, StatusView
from mavail.core.timeutil import Clock

log = logging.getLogger("mavail.fallback")

# strategies under which the caller should look at the alternatives
_ALTERNATIVE_STRATEGIES = frozenset({"alternative_model", "hybrid_approach", "reduce_requirements", "mock_generation"})


@dataclass(frozen=True)
class FallbackDeps:
    """What the fallback service needs of the other services, as callables the composition root binds.

    Each resolves at call time, so the service never holds another service.
    """

    estimate_ready_seconds: Callable[[str], float | None]
    """Seconds until the model is downloaded (the download scheduler's estimate), None when unknown."""
    download_active: Callable[[str], bool]
    """Whether a download of the model is live."""
    ensure_download: Callable[[str, str], Awaitable[dict[str, Any] | None]]
    """`(model_id, priority)`: start or join the model's download; its description."""
    repair: Callable[[str], Awaitable[Any]]
    """Start health's repair of the model; its result."""
    repair_busy: Callable[[str], bool]
    """Whether a check or repair of the model is running."""
    usage_summary: Callable[[str], Any]
    """The model's in-memory usage summary (`successes`, `time_sum`), or None."""
    record_request: Callable[[str], None]
    """Count a request of the model."""
    free_vram_gb: Callable[[], float | None]
    """Free VRAM in GiB read from the driver, None when there is no reading."""


class FallbackService:
    """Suggestions, strategies and the `models.request` decision over one catalog."""

    def __init__(self, *, settings: Settings, clock: Clock, catalog: CatalogView, presence: PresenceView, status: StatusView,
                 tasks: Spawner, emit: Emit, deps: FallbackDeps) -> None:
        self._settings = settings
        self._clock = clock
        self._catalog = catalog
        self._presence = presence
        self._status = status
        self._tasks = tasks
        self._emit = emit
        self._deps = deps
        self.index = FeatureIndex()
        self._vram: tuple[float, float | None, str] | None = None  # (monotonic read time, GiB, source)

    # --- inputs ---------------------------------------------------------------
    def features(self) -> FeatureIndex:
        """The feature index of the current catalog (rebuilt after a catalog reload)."""
        models = self._catalog.models
        return self.index.refresh(models.values(), key=models)

    def free_vram(self) -> tuple[float | None, str]:
        """(free VRAM in GiB less `fallback.vram_headroom_gb`, source): NVML, else `gpu.vram_gb`, else (None, "unknown").

        The reading is reused for `fallback.vram_cache_s` so suggestions do no per-call driver I/O.
        """
        cfg = self._settings
        now = self._clock.monotonic()
        cached = self._vram
        if cached is not None and now - cached[0] < cfg.get("fallback.vram_cache_s"):
            return cached[1], cached[2]
        value: float | None = None
        source = "unknown"
        try:
            value = self._deps.free_vram_gb()
        except Exception:  # a driver problem degrades to the configured figure
            log.warning("reading free VRAM failed", exc_info=True)
        if value is not None:
            source = "nvml"
        else:
            configured = float(cfg.get("gpu.vram_gb"))
            if configured > 0:
                value, source = configured, "config"
        if value is not None:
            value = max(0.0, value - float(cfg.get("fallback.vram_headroom_gb")))
        self._vram = (now, value, source)
        return value, source

    def eta(self, model_id: str) -> float | None:
        """Seconds until `model_id` is downloaded, from the download scheduler; None when unknown."""
        try:
            v = self._deps.estimate_ready_seconds(model_id)
        except Exception:
            log.warning("estimate_ready_seconds(%s) failed", model_id, exc_info=True)
            return None
        return None if v is None else max(0.0, float(v))

    def availability(self, model_id: str) -> tuple[str, float | None]:
        """(availability_status, seconds until ready) as scoring needs them."""
        status = self._status.availability_status(model_id)
        if status in READY:
            return status, 0.0
        return status, (self.eta(model_id) if status in IN_PROGRESS else None)

    # --- fallback.suggest -----------------------------------------------------
    def evaluate(self, requested_model: str, requirements: dict[str, Any] | None = None,
                 preferences: dict[str, Any] | None = None,
                 auto_download: bool = True) -> tuple[Query, list[Any], dict[str, Any], str, float | None]:
        """Rank candidates and choose a strategy: (query, suggestions, strategy, status, eta).

        `auto_download` false: the strategy must not count on a download this request would have started.
        """
        self._catalog.spec(requested_model)
        idx = self.features()
        free, _ = self.free_vram()
        cfg = self._settings
        q = build_query(idx.by_id[requested_model], requirements, preferences, free, cfg.get("fallback.default_max_wait_minutes"))
        w = Weights.from_config(cfg)
        suggestions = rank(idx, q, self.availability, w, status_of=self._status.availability_status)
        if not cfg.get("fallback.enabled"):
            suggestions = [s for s in suggestions if s.is_requested]  # no alternatives: the strategy is about the model asked for
        status, eta = self.availability(requested_model)
        if status not in READY and status not in IN_PROGRESS:
            eta = self.eta(requested_model)  # what the scheduler would need to fetch it now, when it can say
        strategy = choose(q, suggestions, status, eta, vram_fit(q.requested, q, w), Thresholds.from_config(cfg), auto_download)
        return q, suggestions, strategy, status, eta

    def suggest(self, requested_model: str, requirements: dict[str, Any] | None = None,
                preferences: dict[str, Any] | None = None, emit: bool = True, auto_download: bool = True) -> dict[str, Any]:
        """The `fallback.suggest` result: ranked `suggestions` and a `fallback_strategy`; emits `fallback_suggestion`."""
        q, suggestions, strategy, status, eta = self.evaluate(requested_model, requirements, preferences, auto_download)
        free, source = self.free_vram()
        times = measured_times(self._deps.usage_summary, [requested_model, *(s.model_id for s in suggestions)])
        result = {
            "requested_model": requested_model,
            "requested_status": status,
            "requested_estimated_wait_seconds": None if eta is None else round(eta, 1),
            "suggestions": [s.to_dict(q, times) for s in suggestions],
            "fallback_strategy": strategy,
            "free_vram_gb": None if free is None else round(free, 2),
            "vram_source": source,
            "request": {
                "inputs": [n for bit, n in ((1, "text"), (2, "image")) if q.modes & bit],
                "resolution": q.resolution,
                "max_wait_time_minutes": q.max_wait_s / 60.0,
            },
        }
        if emit and strategy["fallback_needed"]:
            self.emit_suggestion(result)
        return result

    def emit_suggestion(self, result: dict[str, Any]) -> None:
        """Publish a `fallback_suggestion` event for a suggest result (none while fallback.enabled is off)."""
        if not self._settings.get("fallback.enabled"):
            return
        strategy = result["fallback_strategy"]
        suggested = strategy.get("suggested_model")
        score = next((s["compatibility_score"] for s in result["suggestions"] if s["suggested_model"] == suggested), None)
        self._emit(
            "fallback_suggestion",
            requested_model=result["requested_model"],
            suggested_model=suggested,
            compatibility_score=score,
            strategy_type=strategy["strategy_type"],
            recommended_action=strategy["recommended_action"],
            user_message=strategy["user_message"],
            estimated_wait_seconds=strategy["estimated_wait_seconds"],
            user_action_required=strategy["strategy_type"] not in ("queue_and_wait",),
            timeout_seconds=self._settings.get("fallback.suggestion_timeout_s"),
        )

    # --- models.request -------------------------------------------------------
    def _record_request(self, model_id: str) -> None:
        try:
            self._deps.record_request(model_id)
        except Exception:  # usage accounting must never fail a request
            log.warning("analytics.record_request(%s) failed", model_id, exc_info=True)

    async def _repair(self, model_id: str) -> dict[str, Any]:
        """Start a repair through health and report what is known after `fallback.repair_wait_s`."""
        if self._deps.repair_busy(model_id):
            return {"started": True, "finished": False, "message": "a check or repair of this model is already running"}
        task = self._tasks.spawn(self._deps.repair(model_id), name=f"request-repair-{model_id}")
        done, _ = await asyncio.wait({task}, timeout=float(self._settings.get("fallback.repair_wait_s")))
        if not done:
            return {"started": True, "finished": False, "message": "repair running; model_availability_change tells when it is done"}
        exc = task.exception()
        if exc is None:
            res = task.result()
            return {"started": True, "finished": True, "result": res if isinstance(res, dict) else None}
        if isinstance(exc, Conflict):  # another repair or check got there first: it is under way
            return {"started": True, "finished": False, "message": exc.message}
        if isinstance(exc, MavailError):
            return {"started": False, "finished": True, "error": {"code": exc.NAME, "message": exc.message, "details": exc.details}}
        return {"started": False, "finished": True, "error": {"code": "INTERNAL_ERROR", "message": "repair failed"}}

    async def request(self, model_id: str, requirements: dict[str, Any] | None = None, auto_download: bool = True,
                      priority: str = "normal", preferences: dict[str, Any] | None = None) -> dict[str, Any]:
        """The `models.request` decision: ready (path), download started/in progress (estimate), repair, or error,
        with `fallback_strategy` always and `suggestions` when an alternative is worth a look."""
        self._catalog.spec(model_id)
        self._record_request(model_id)
        by_setting = auto_download and not self._settings.get("downloads.auto_download_on_request")
        auto_download = auto_download and not by_setting
        await self._presence.refresh([model_id])
        st = self._status.model_status(model_id)
        status = st["availability_status"]
        out: dict[str, Any] = {"success": True, "model_id": model_id, "version": st["version"]}
        if st["is_available"]:
            out.update(action_taken="model_ready", path=st["path"], estimated_wait_seconds=0.0,
                       message=f"{model_id} is ready")
        elif status == "corrupted":
            repair = await self._repair(model_id)
            await self._presence.refresh([model_id])
            if self._status.model_status(model_id)["is_available"]:
                out.update(action_taken="model_ready", path=st["path"], estimated_wait_seconds=0.0, repair=repair,
                           message=f"{model_id} was repaired and is ready")
            elif repair.get("started"):
                out.update(action_taken="repair_attempted", repair=repair, estimated_wait_seconds=self.eta(model_id),
                           message=f"{model_id} is corrupted; a repair is under way")
            else:
                out.update(success=False, action_taken="error", repair=repair,
                           message=f"{model_id} is corrupted and could not be repaired now")
        elif status in IN_PROGRESS or self._deps.download_active(model_id):
            info: dict[str, Any] = {}
            if auto_download:
                info = await self._deps.ensure_download(model_id, priority) or {}
            out.update(action_taken="download_in_progress", download_id=info.get("download_id"),
                       estimated_wait_seconds=self.eta(model_id), message=f"{model_id} is {status}")
        elif not auto_download:
            out.update(success=False, action_taken="error",
                       message=f"{model_id} is {status} and was not downloaded: "
                       + ("downloads.auto_download_on_request is off" if by_setting else "auto_download is false") + " (downloads.start fetches it)")
        else:
            try:
                info = await self._deps.ensure_download(model_id, priority) or {}
            except MavailError as exc:
                out.update(success=False, action_taken="error", message=exc.message,
                           error={"code": exc.NAME, "message": exc.message, "details": exc.details})
            else:
                queued = info.get("status") == "queued"
                if info.get("joined"):  # a concurrent request started it first
                    out.update(action_taken="download_in_progress", download_id=info.get("download_id"),
                               estimated_wait_seconds=self.eta(model_id), message=f"{model_id} is {info.get('status')}")
                else:
                    out.update(action_taken="queued" if queued else "download_started", download_id=info.get("download_id"),
                               estimated_wait_seconds=self.eta(model_id),
                               message=f"{model_id} was {status}; its download is " + ("queued behind others" if queued else "under way"))
        if out.get("estimated_wait_seconds") is not None:
            out["estimated_wait_seconds"] = round(out["estimated_wait_seconds"], 1)
        sug = self.suggest(model_id, requirements, preferences, emit=False, auto_download=auto_download)
        out["availability_status"] = sug["requested_status"]
        strategy = sug["fallback_strategy"]
        out["fallback_strategy"] = strategy
        if strategy["strategy_type"] in _ALTERNATIVE_STRATEGIES:
            out["suggestions"] = [s for s in sug["suggestions"] if not s["is_requested_model"]] or sug["suggestions"]
        if strategy["fallback_needed"]:
            self.emit_suggestion(sug)
        return out
