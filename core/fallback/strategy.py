"""Strategy choice: what a caller should do when the model it asked for is not ready to run.

Rules, in order (R = the requested model, A = the best-ranked *ready*
alternative, W = the caller's max wait; thresholds are `fallback.*` settings):

0. R cannot take the request's inputs (an image model for a text-only
   request): A when usable, else `mock_generation`.
1. R is ready:
   - fits the free VRAM at the requested resolution (or the VRAM is unknown):
     no fallback (`fallback_needed` false, `strategy_type` null);
   - fits only at a smaller listed resolution: `reduce_requirements` naming it,
     unless a good A (score >= `alternative_min_score`) fits as asked and
     outranks R, then `alternative_model`;
   - fits at no listed resolution: A as below, else `mock_generation`.
2. R is downloading (or queued, verifying, paused) with ETA e:
   - e known and e <= W: `hybrid_approach` when a usable A exists
     (score >= `hybrid_min_score`) and e > `hybrid_min_wait_s`, else
     `queue_and_wait`;
   - otherwise: `alternative_model` with a good A, `hybrid_approach` with a
     usable A, else `mock_generation` (the message gives the ETA).
3. R is missing, failed or corrupted:
   - worth fetching (it has files or a Hub source, and fits the VRAM at some
     listed resolution): `alternative_model` with a good A, `hybrid_approach`
     with a usable A, `queue_and_wait` when its estimated download time is
     known and <= W, else `download_and_retry`;
   - not worth fetching: `alternative_model` with a usable A, else
     `mock_generation`.
   - with `auto_download` off nothing fetches it, so nothing waits for it:
     `alternative_model` with a usable A, else `download_and_retry` (an
     instruction to the caller), and every message says it is not being
     downloaded.
Wherever the chosen A fits only at a smaller resolution, `alternative_model`
and `hybrid_approach` become `reduce_requirements` (naming A and the
resolution). Every strategy that names a model also names the resolution it
fits at (`suggested_resolution`), with `requirements_reduced` true when that
is smaller than the one requested: no strategy points at a model that cannot
run as asked without saying so.
`mock_generation` always says what to download to stop needing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mavail.core.config import Config
from mavail.core.fallback.scoring import IN_PROGRESS, READY, Features, Query, Suggestion

GIB = 1024**3


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The strategy thresholds (`fallback.*` settings)."""

    alternative_min_score: float
    hybrid_min_score: float
    hybrid_min_wait_s: float

    @classmethod
    def defaults(cls) -> "Thresholds":
        """The thresholds of a default configuration (the values live in core/config.py's SCHEMA only)."""
        return cls.from_config(Config(None))

    @classmethod
    def from_config(cls, config: Any) -> "Thresholds":
        """Read the thresholds from a `core.config.Config`."""
        return cls(config.get("fallback.alternative_min_score"), config.get("fallback.hybrid_min_score"), config.get("fallback.hybrid_min_wait_s"))


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "an unknown time"
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    return f"about {round(seconds / 60)} min"


def _strategy(kind: str | None, action: str, message: str, *, model: str | None = None, resolution: str | None = None,
              wait_s: float | None = None, can_queue: bool = True, download: str | None = None, reduced: bool = False) -> dict[str, Any]:
    return {
        "strategy_type": kind,
        "fallback_needed": kind is not None,
        "recommended_action": action,
        "user_message": message,
        "suggested_model": model,
        "suggested_resolution": resolution,
        "requirements_reduced": reduced,
        "estimated_wait_time": None if wait_s is None else round(wait_s, 1),
        "estimated_wait_seconds": None if wait_s is None else round(wait_s, 1),
        "can_queue_request": can_queue,
        "download_model": download,
    }


def choose(q: Query, suggestions: list[Suggestion], status: str, eta_s: float | None,
           requested_vram: tuple[float, str, str | None, float | None] | None, t: Thresholds,
           auto_download: bool = True) -> dict[str, Any]:
    """The `fallback_strategy` object for a request (see the module docstring for the rules).

    `status` and `eta_s` are the requested model's availability and seconds
    until ready (None when unknown); `requested_vram` is its VRAM fit as
    `scoring._vram_part` gives it (None: fits at no listed resolution);
    `auto_download` false: the request will not start a download.
    """
    R: Features = q.requested
    rid = R.model_id
    W = q.max_wait_s
    ready_alts = [s for s in suggestions if not s.is_requested and s.availability_status in READY]
    A = ready_alts[0] if ready_alts else None
    good = A if A is not None and A.score >= t.alternative_min_score else None
    usable = A if A is not None and A.score >= t.hybrid_min_score else None
    feasible = requested_vram is not None
    r_res = requested_vram[2] if requested_vram else None
    r_reduced = bool(requested_vram and requested_vram[1] == "reduce")
    at = f" (at {r_res}: the requested resolution does not fit the free VRAM)" if r_reduced else ""

    def use_alt(alt: Suggestion, why: str) -> dict[str, Any]:
        if alt.vram_fit == "reduce":
            return _strategy("reduce_requirements", f"Use {alt.model_id} at {alt.resolution} now",
                             f"{why}; {alt.model_id} (score {alt.score:.2f}) is ready and fits the free VRAM at {alt.resolution}.",
                             model=alt.model_id, resolution=alt.resolution, wait_s=0.0, reduced=True)
        return _strategy("alternative_model", f"Use {alt.model_id} now",
                         f"{why}; {alt.model_id} is ready with a compatibility score of {alt.score:.2f} "
                         f"({alt.to_dict(q)['estimated_quality_difference'].replace('_', ' ')} quality).",
                         model=alt.model_id, resolution=alt.resolution, wait_s=0.0)

    def hybrid(alt: Suggestion, wait: float | None, why: str) -> dict[str, Any]:
        if alt.vram_fit == "reduce":
            return _strategy("reduce_requirements", f"Use {alt.model_id} at {alt.resolution} now; switch to {rid} when it is ready",
                             f"{why}; {rid} will be ready in {_minutes(wait)}. Meanwhile {alt.model_id} (score {alt.score:.2f}) "
                             f"is ready and fits the free VRAM at {alt.resolution}.",
                             model=alt.model_id, resolution=alt.resolution, wait_s=wait, reduced=True)
        return _strategy("hybrid_approach", f"Use {alt.model_id} now; switch to {rid} when it is ready",
                         f"{why}; {rid} will be ready in {_minutes(wait)}. Meanwhile {alt.model_id} (score {alt.score:.2f}) is ready"
                         + "; queue your request to be told when it is.",
                         model=alt.model_id, resolution=alt.resolution, wait_s=wait)

    def mock(why: str, wait: float | None = None) -> dict[str, Any]:
        target = rid if (R.fetchable and feasible) else next(
            (s.model_id for s in suggestions if s.availability_status not in READY and s.features.fetchable), None)
        if target is None:
            tail = "No catalog model fits this machine's free VRAM for this request; free VRAM or lower the resolution."
        elif target == rid and status in IN_PROGRESS:
            tail = f"{rid} is downloading and will be ready in {_minutes(wait)}; it replaces mock output then."
        else:
            size = R.size_bytes if target == rid else next(s.features.size_bytes for s in suggestions if s.model_id == target)
            tail = f"Download {target} ({size / GIB:.1f} GiB) to stop needing mock output."
        return _strategy("mock_generation", "Generate placeholder output", f"{why}. {tail}", model=None, wait_s=wait, download=target)

    # 0. the requested model cannot take the request's inputs at all: only an alternative helps
    if R.modes & q.modes != q.modes:
        why = f"{rid} ({R.model_type}) cannot take this request's inputs"
        return use_alt(usable, why) if usable is not None else mock(why)
    # 1. ready
    if status in READY:
        fit, res = (requested_vram[1], requested_vram[2]) if requested_vram else (None, None)
        if fit in ("fits", "unknown"):
            return _strategy(None, f"Use {rid} now", f"{rid} is ready.", model=rid, resolution=res, wait_s=0.0, can_queue=False)
        own = next((s for s in suggestions if s.is_requested), None)
        if fit == "reduce":
            if good is not None and good.vram_fit != "reduce" and (own is None or good.score > own.score):
                return use_alt(good, f"{rid} does not fit the free VRAM at {q.resolution}")
            return _strategy("reduce_requirements", f"Use {rid} at {res}",
                             f"{rid} is ready but needs more VRAM than is free at {q.resolution}; it fits at {res}.",
                             model=rid, resolution=res, wait_s=0.0, can_queue=False, reduced=True)
        if usable is not None:
            return use_alt(usable, f"{rid} does not fit the free VRAM at any resolution it lists")
        return mock(f"{rid} does not fit the free VRAM at any resolution it lists")
    # 2. downloading
    if status in IN_PROGRESS:
        if not feasible:
            return use_alt(usable, f"{rid} will not fit the free VRAM") if usable else mock(f"{rid} will not fit the free VRAM")
        if eta_s is not None and eta_s <= W:
            if usable is not None and eta_s > t.hybrid_min_wait_s:
                return hybrid(usable, eta_s, f"{rid} is {status}")
            return _strategy("queue_and_wait", f"Wait for {rid} (queue the request)",
                             f"{rid} is {status} and will be ready in {_minutes(eta_s)}, within your limit of {_minutes(W)}{at}.",
                             model=rid, resolution=r_res, wait_s=eta_s, reduced=r_reduced)
        why = f"{rid} is {status}" + (f" and needs {_minutes(eta_s)}, more than your limit of {_minutes(W)}" if eta_s is not None else " with no estimate yet")
        if good is not None:
            return use_alt(good, why)
        if usable is not None:
            return hybrid(usable, eta_s, f"{rid} is {status}")
        return mock(why, eta_s)
    # 3. missing, failed, corrupted, unknown
    why = f"{rid} is {status}"
    if R.fetchable and feasible and not auto_download:
        why += " and is not being downloaded (auto_download is false)"
        if usable is not None:
            return use_alt(usable, why)
        return _strategy("download_and_retry", f"Download {rid} ({R.size_bytes / GIB:.1f} GiB) and retry",
                         f"{why}; no ready alternative is close enough. Start its download (downloads.start, or models.request "
                         f"with auto_download) and retry{at}.", model=rid, resolution=r_res, wait_s=None, download=rid, reduced=r_reduced)
    if R.fetchable and feasible:
        if good is not None:
            return use_alt(good, why)
        if usable is not None:
            return hybrid(usable, eta_s, why + " and will be downloaded")
        if eta_s is not None and eta_s <= W:
            return _strategy("queue_and_wait", f"Queue the request; {rid} downloads meanwhile",
                             f"{why}; downloading it takes {_minutes(eta_s)}, within your limit of {_minutes(W)}{at}.",
                             model=rid, resolution=r_res, wait_s=eta_s, reduced=r_reduced)
        if status == "corrupted":
            return _strategy("download_and_retry", f"Repair {rid} and retry",
                             f"{why}; no ready alternative is close enough. Repair it (health.repair fetches only the damaged "
                             f"pieces) and retry{at}.", model=rid, resolution=r_res, wait_s=eta_s, download=rid, reduced=r_reduced)
        return _strategy("download_and_retry", f"Download {rid} ({R.size_bytes / GIB:.1f} GiB) and retry",
                         f"{why}; no ready alternative is close enough. Download it ({R.size_bytes / GIB:.1f} GiB"
                         + (f", {_minutes(eta_s)}" if eta_s is not None else "") + f") and retry{at}.",
                         model=rid, resolution=r_res, wait_s=eta_s, download=rid, reduced=r_reduced)
    if usable is not None:
        return use_alt(usable, why + (" and cannot be downloaded" if not R.fetchable else " and will not fit the free VRAM"))
    return mock(why)
