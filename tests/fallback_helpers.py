"""Shared pieces of the fallback tests: a small catalog of related models, a GPU-less NVML, a fake download
service, and waiting for one event."""

from __future__ import annotations

import asyncio
import heapq
from pathlib import Path
from typing import Any

from mavail.core.fallback.scoring import (FEATURE_CAPS, INPUT_IMAGE, INPUT_TEXT, MODES_OF_TYPE, READY, SPEEDS, TIERS, Availability,
                                          FeatureIndex, Features, Query, Suggestion, Weights, _availability_part, _parts, _reason, vram_fit)
from mavail.rpc.client import AsyncClient

from tests.helpers import install_files, model_toml, synthetic_bytes

FILES = {mid: [("w.bin", synthetic_bytes(mid, 2048))] for mid in ("wan-t2v", "wan-i2v", "ltx-t2v", "wan-ti2v")}


class NoGpu:
    """An NVML stand-in for a machine without a GPU (so `gpu.vram_gb` decides)."""

    def free_vram_gb(self) -> float | None:
        return None

    def gpus(self) -> tuple[list[Any], str]:
        return [], "no GPU in tests"


def write_catalog(home: Path, base_url: str = "http://127.0.0.1:9/", installed: tuple[str, ...] = ()) -> None:
    """Four related models: the wanted one (wan-t2v), an image model of its family, a lighter text model, a TI2V."""
    home.mkdir(parents=True, exist_ok=True)
    text = (
        model_toml("wan-t2v", FILES["wan-t2v"], base_url, model_type="text_to_video", capabilities=["text_to_video", "high_quality"],
                   quality="high", speed="slow", family="wan", vram_gb={"832x480": 12.0, "1280x704": 24.0})
        + model_toml("wan-i2v", FILES["wan-i2v"], base_url, model_type="image_to_video", capabilities=["image_to_video", "high_quality"],
                     quality="high", speed="slow", family="wan", vram_gb={"832x480": 12.0, "1280x704": 24.0})
        + model_toml("ltx-t2v", FILES["ltx-t2v"], base_url, model_type="text_to_video", capabilities=["text_to_video", "fast_generation"],
                     quality="medium", speed="fast", family="ltx", vram_gb={"832x480": 6.0, "1280x704": 10.0})
        + model_toml("wan-ti2v", FILES["wan-ti2v"], base_url, model_type="text_image_to_video",
                     capabilities=["text_to_video", "image_to_video"], quality="medium", speed="medium", family="wan",
                     vram_gb={"832x480": 9.0, "1280x704": 20.0})
    )
    (home / "catalog.toml").write_text(text)
    for mid in installed:
        install_files(home, mid, FILES[mid])


class Overridable:
    """A part built by `build` (give it to `Parts`) that is the real service, except for the attributes of `override`."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.override: Any = None

    def build(self, engine: Any) -> Any:
        outer = self
        real = self.factory(engine)

        class Part:
            def __getattr__(self, name: str) -> Any:
                if outer.override is not None and hasattr(outer.override, name):
                    return getattr(outer.override, name)
                return getattr(real, name)

        return Part()


class FakeDownloads:
    """The download service's interface as far as fallback uses it, for tests that do not need real transfers."""

    def __init__(self, engine: Any, eta: float | None = 42.0) -> None:
        self.engine = engine
        self.eta = eta
        self.calls: list[tuple[str, str]] = []
        self.active: dict[str, str] = {}
        self.listeners: list[Any] = []

    async def start_service(self) -> None:
        """Nothing to resume."""

    async def ensure(self, model_id: str, priority: str = "normal") -> dict[str, Any]:
        self.calls.append((model_id, priority))
        self.active[model_id] = priority
        self.engine.status.changed([model_id])  # its model_fields changed, as a real download service reports
        return {"download_id": f"dl_{model_id}", "model_id": model_id, "status": "downloading"}

    def estimate_ready_seconds(self, model_id: str) -> float | None:
        return self.eta if model_id in self.active else None

    def is_active(self, model_id: str) -> bool:
        return model_id in self.active

    def add_listener(self, cb: Any) -> None:
        self.listeners.append(cb)

    def model_fields(self, model_id: str) -> dict[str, Any]:
        return {"availability_status": "downloading"} if model_id in self.active else {}

    async def complete(self, model_id: str) -> None:
        install_files(self.engine.layout.home, model_id, FILES[model_id])
        self.active.pop(model_id, None)
        self.engine.status.changed([model_id])
        await self.engine.presence.refresh([model_id])


async def next_event(c: AsyncClient, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    """The params of the next `kind` notification `c` receives (fails after `timeout` seconds)."""
    async def take() -> dict[str, Any]:
        async for m in c.events():
            if m["method"] == kind:
                return m["params"]
        raise AssertionError("connection closed")

    return await asyncio.wait_for(take(), timeout)


def reference_rank(index: FeatureIndex, q: Query, availability: Availability, w: Weights, limit: int | None = None) -> list[Suggestion]:
    """`scoring.rank` as it was written before the grouped prefilter: one pass over every model (the reference the fast one must equal).

    Everything but availability is summed through per-query lookup tables
    (capability bits, tiers, types); the availability sub-score is the only
    part that needs `availability()`, so candidates are visited in order of
    their score without it and the visit stops once even a ready candidate
    could no longer enter the top `limit` (or reach `min_score`).
    """
    limit = w.max_suggestions if limit is None else limit
    ref = q.requested
    size_w = w.size if q.prefer_smaller else 0.0
    # the same expression as a candidate's partial sum with every part 1, so a perfect candidate scores exactly 1.0
    total = (w.capabilities * 1.0 + w.model_type * 1.0 + w.quality * 1.0 + w.speed * 1.0 + w.vram * 1.0 + w.family * 1.0
             + size_w * 1.0) + w.availability * 1.0
    if total <= 0 or limit <= 0:
        return []
    # weighted lookup tables for this query
    ncaps = q.caps.bit_count()
    cap_t = [w.capabilities * ((q.caps & bits).bit_count() / ncaps if ncaps else 1.0) for bits in range(1 << len(FEATURE_CAPS))]
    type_t = {t: w.model_type * (1.0 if t == q.model_type else (0.75 if MODES_OF_TYPE[t] == INPUT_TEXT | INPUT_IMAGE else 0.5))
              for t in MODES_OF_TYPE}
    qual_t = [w.quality * (1.0 - max(0, q.quality - t) / 2.0) for t in range(len(TIERS))]
    speed_t = [w.speed * (1.0 - max(0, q.speed - t) / 2.0) for t in range(len(SPEEDS))]
    fam, fam_w, vram_w = q.family, w.family * 1.0, w.vram
    qmodes, free, pixels, res = q.modes, q.free_vram_gb, q.pixels, q.resolution
    reduce_f = w.vram_reduce_factor
    ref_size = ref.size_bytes
    staged: list[tuple[float, int, int, Features, float]] = []  # (-partial, not-requested, index, features, vram score)
    for i, f in enumerate(index.all):
        if f.modes & qmodes != qmodes:
            continue
        # VRAM (see vram_fit; inlined: this loop runs for every model of the catalog)
        table = f.vram
        if not table:
            vs = 0.5 if free is not None else 1.0
        elif free is None:
            vs = 1.0
        elif f.min_vram_gb > free:  # type: ignore[operator]
            continue  # every resolution needs more than is free
        else:
            if pixels is None:
                vs = 1.0  # some listed resolution fits (min_vram_gb <= free)
            else:
                need = f.vram_by_res.get(res) if res is not None else None  # type: ignore[arg-type]
                if need is None:
                    need = f.vram_at(pixels)  # the same figure as need_at()
                if need <= free:  # type: ignore[operator]
                    vs = 1.0
                else:
                    smaller = f.largest_fitting(free, pixels)
                    if smaller is None:
                        continue
                    vs = reduce_f * smaller[0] / pixels
        if f is ref:
            partial = (w.capabilities * 1.0 + w.model_type * 1.0 + w.quality * 1.0 + w.speed * 1.0 + vram_w * vs + fam_w
                       + size_w * 1.0)
            staged.append((-partial, 0, i, f, vs))
            continue
        partial = (cap_t[f.caps] + type_t[f.model_type] + qual_t[f.quality] + speed_t[f.speed] + vram_w * vs
                   + (fam_w if fam is not None and f.family == fam else 0.0)
                   + (size_w * (min(1.0, ref_size / f.size_bytes) if f.size_bytes > 0 else 1.0) if size_w else 0.0))
        staged.append((-partial, 1, i, f, vs))
    heapq.heapify(staged)
    best: list[tuple[tuple[float, int, int, int], Suggestion]] = []  # min-heap of (sort key, suggestion)
    while staged:
        neg, not_ref, i, f, vs = heapq.heappop(staged)
        partial = -neg
        bound = (partial + w.availability) / total  # the best this and every later candidate can reach
        if bound < w.min_score or (len(best) >= limit and bound < best[0][0][0]):
            break
        status, eta = availability(f.model_id)
        is_ref = not not_ref
        if is_ref and status not in READY:
            continue
        a = _availability_part(status, eta, q, w)
        score = (partial + w.availability * a) / total
        score = 0.0 if score < 0.0 else (1.0 if score > 1.0 else score)
        if score < w.min_score:
            continue
        key = (score, 1 if is_ref else 0, 1 if status in READY else 0, -i)
        if len(best) >= limit and key <= best[0][0]:
            continue
        vp = vram_fit(f, q, w)
        assert vp is not None  # the loop above kept only candidates that fit somehow
        s = Suggestion(f, score, _parts(f, q, vs, a), vp[1], vp[2], vp[3], status, eta if status not in READY else 0.0, is_ref)
        if len(best) < limit:
            heapq.heappush(best, (key, s))
        else:
            heapq.heapreplace(best, (key, s))
    out = [s for _, s in sorted(best, key=lambda t: t[0], reverse=True)]
    for s in out:
        s.reason = _reason(s, q)
    return out
