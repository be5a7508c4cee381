"""Scoring of candidate models for a request, from catalog data only (no table of model names).

Every catalog model is reduced once per catalog to a `Features` record
(input modes, capability bits, quality and speed tiers, family, VRAM table,
size); a call to `rank` is then pure Python over those records plus two
figures read once per call (the free VRAM, and each candidate's availability
through a callable), so it does no I/O.

The formula
-----------
1. Hard filters (a candidate failing one is never suggested):
   - input compatibility: the candidate must accept every input mode the
     request needs. A model's modes come from its `model_type`:
     `text_to_video` -> text only, `image_to_video` -> image required,
     `text_image_to_video` -> both. The request's modes come from
     `requirements.has_image` / `requirements.inputs`, else
     `requirements.model_type`, else input capabilities named in
     `requirements.capabilities`, else the requested model's own modes. So a
     text-only request never gets an image-requiring model and a request with
     an image never gets a text-only model.
   - VRAM feasibility: when the free VRAM is known and the candidate's VRAM
     need is known, it must fit at the requested resolution or at one of its
     listed smaller resolutions (then it carries `vram_fit = "reduce"` and a
     `suggested_resolution`); with no resolution requested, at one of its
     listed resolutions (the largest that fits is suggested). The need at an
     unlisted resolution is `Features.vram_at`.
   - the requested model itself is listed only when it is ready now.
2. Sub-scores, each in [0, 1]:
   - `capabilities`: share of the wanted feature capabilities
     (high_resolution, fast_generation, high_quality; from
     `requirements.capabilities`, else the requested model's) the candidate has.
   - `model_type`: 1 same type as wanted; 0.75 a text_image_to_video model
     (a superset) for a single-mode request; 0.5 otherwise.
   - `quality`, `speed`: 1 at or above the wanted tier (from requirements,
     else the requested model's), minus 0.5 per tier short.
   - `vram`: 1 fits at the requested resolution (or at a listed one when
     none is requested, or free VRAM unknown);
     `fallback.vram_reduce_factor` x (pixels of the largest listed resolution
     that fits / requested pixels) when only a smaller one fits; 0.5 when the
     candidate lists no VRAM figures.
   - `family`: 1 same family as the requested model, else 0.
   - `availability`: 1 ready now (available, updating); for a download in
     progress `fallback.availability_downloading` x max(0, 1 - eta / max_wait),
     or x 0.25 when its ETA is unknown; 0 missing, failed, corrupted.
   - `size` (only with `user_preferences.prefer_smaller_models`):
     min(1, requested size / candidate size).
   The requested model matches itself: its capability, type, quality, speed,
   family and size sub-scores are 1, so when it is ready and fits it scores
   exactly 1 and ranks first (ties go to it).
3. `compatibility_score = sum(w_i * s_i) / sum(w_i)` with the weights
   `fallback.weight_*` from the configuration; it is therefore in [0, 1].
   Candidates under `fallback.min_score` are dropped; the best
   `fallback.max_suggestions` are returned, best first (ties: requested
   model, then ready ones, then catalog order).

`performance_difference` is in [-1, 1], positive when the candidate is
faster than the requested model, and `performance_basis` says where it comes
from:
- `measured_generation_time` when both models have at least `MIN_TIMED`
  successful generations recorded by analytics: with `t_req`, `t_cand` their
  mean successful generation times (all-time),
  `(t_req - t_cand) / max(t_req, t_cand)`, i.e. the share of the slower one's
  time the faster one saves (0.75: the candidate takes a quarter of the time;
  -0.5: it takes twice as long); both times are given beside it;
- `catalog_speed_tier` otherwise: the speed tier difference / 2
  (slow 0, medium 1, fast 2), an estimate from the catalog, not a measurement.
`estimated_quality_difference`
is one of higher, similar, slightly_lower, lower, much_lower from the
quality tier difference (similar tiers but a lost high_quality or
high_resolution capability, or a reduced resolution, read slightly_lower).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from mavail.core.config import Config
from mavail.core.catalog import CAPABILITIES, MODEL_TYPES, RESOLUTION_RE, SPEEDS, TIERS
from mavail.core.errors import InvalidParams
from mavail.core.limits import MAX_WAIT_MINUTES

INPUT_TEXT = 1
INPUT_IMAGE = 2
MODES_OF_TYPE = {"text_to_video": INPUT_TEXT, "image_to_video": INPUT_IMAGE, "text_image_to_video": INPUT_TEXT | INPUT_IMAGE}
MODE_NAMES = {INPUT_TEXT: "text", INPUT_IMAGE: "image"}
FEATURE_CAPS = ("high_resolution", "fast_generation", "high_quality")
_CAP_BIT = {c: 1 << i for i, c in enumerate(FEATURE_CAPS)}
TIER = {t: i for i, t in enumerate(TIERS)}
SPEED = {s: i for i, s in enumerate(SPEEDS)}
READY = frozenset({"available", "updating"})
IN_PROGRESS = frozenset({"downloading", "queued", "verifying", "paused"})
QUALITY_WORDS = {2: "higher", 1: "higher", 0: "similar", -1: "lower", -2: "much_lower"}
MIN_TIMED = 3  # successful generations a model needs before its mean time is used


def measured_times(summary_of: Callable[[str], Any], model_ids: Iterable[str]) -> dict[str, float]:
    """Mean successful generation time (s) of each model with at least `MIN_TIMED` timed successes.

    `summary_of` returns an object with `successes` and `time_sum` (analytics' in-memory
    summary), or None; nothing is read from disk."""
    out: dict[str, float] = {}
    for mid in model_ids:
        u = summary_of(mid)
        if u is not None and u.successes >= MIN_TIMED and u.time_sum > 0:
            out[mid] = u.time_sum / u.successes
    return out


def performance_difference(candidate: "Features", requested: "Features", times: Mapping[str, float] | None) -> tuple[float, str]:
    """(performance_difference, performance_basis) as documented above."""
    tc = times.get(candidate.model_id) if times else None
    tr = times.get(requested.model_id) if times else None
    if tc is not None and tr is not None:
        return (tr - tc) / max(tr, tc), "measured_generation_time"
    return (candidate.speed - requested.speed) / 2.0, "catalog_speed_tier"


def _cap_bits(caps: Iterable[str]) -> int:
    bits = 0
    for c in caps:
        bits |= _CAP_BIT.get(c, 0)
    return bits


def parse_resolution(text: str) -> int:
    """Pixels of a "WxH" resolution (ValueError when malformed)."""
    m = RESOLUTION_RE.match(text)
    if not m:
        raise ValueError(text)
    return int(m.group(1)) * int(m.group(2))


@dataclass(frozen=True, slots=True)
class Features:
    """What scoring needs of one catalog model, precomputed."""

    model_id: str
    display_name: str
    model_type: str
    modes: int
    caps: int  # bits of FEATURE_CAPS
    quality: int
    speed: int
    family: str | None
    vram: tuple[tuple[int, str, float], ...]  # (pixels, "WxH", GiB), by pixels
    size_bytes: int
    fetchable: bool
    min_vram_gb: float | None = None  # the smallest listed figure: no resolution needs less
    vram_by_res: dict[str, float] = field(default_factory=dict)

    def vram_at(self, pixels: int) -> float | None:
        """Estimated peak VRAM (GiB) at `pixels`: the listed figure, else interpolated linearly in pixels
        between listed neighbours, scaled in proportion above the largest, the smallest's below it."""
        table = self.vram
        if not table:
            return None
        if pixels <= table[0][0]:
            return table[0][2]
        for i in range(1, len(table)):
            p1, _, g1 = table[i]
            if pixels <= p1:
                p0, _, g0 = table[i - 1]
                return g0 + (g1 - g0) * (pixels - p0) / (p1 - p0) if p1 > p0 else g1
        p, _, g = table[-1]
        return g * pixels / p

    def largest_fitting(self, free_gb: float, below_pixels: int | None) -> tuple[int, str, float] | None:
        """The listed resolution with most pixels whose VRAM fits `free_gb` (and under `below_pixels`)."""
        best = None
        for entry in self.vram:
            if below_pixels is not None and entry[0] >= below_pixels:
                break
            if entry[2] <= free_gb:
                best = entry
        return best


def features_of(spec: Any) -> Features:
    """The `Features` of a catalog `ModelSpec`."""
    table: dict[int, tuple[int, str, float]] = {}
    for res, gb in spec.vram_gb.items():
        px = parse_resolution(res)
        if px not in table or table[px][2] < gb:  # same pixel count: keep the larger need
            table[px] = (px, res, float(gb))
    return Features(
        model_id=spec.id,
        display_name=spec.display_name,
        model_type=spec.model_type,
        modes=MODES_OF_TYPE[spec.model_type],
        caps=_cap_bits(spec.capabilities),
        quality=TIER[spec.quality],
        speed=SPEED[spec.speed],
        family=spec.family,
        vram=tuple(table[p] for p in sorted(table)),
        size_bytes=spec.size_bytes,
        fetchable=bool(spec.files) or spec.source is not None,
        min_vram_gb=min((e[2] for e in table.values()), default=None),
        vram_by_res={e[1]: e[2] for e in table.values()},
    )


@dataclass(frozen=True, slots=True)
class FeatureGroup:
    """Catalog models that score alike for every query: equal in everything `rank` reads but their size and id.

    `members` are (catalog position, features) in catalog order; `ids` their ids
    in the same order; `by_size` the positions into `members`, smallest model
    first (then catalog order), for the `prefer_smaller_models` size part.
    """

    rep: Features
    members: tuple[tuple[int, Features], ...]
    ids: tuple[str, ...]
    by_size: tuple[int, ...]


def _group_key(f: Features) -> tuple[Any, ...]:
    """What the scoring reads of a candidate besides size and id (`vram` determines `min_vram_gb` and `vram_by_res`)."""
    return (f.modes, f.caps, f.model_type, f.quality, f.speed, f.family, f.vram)


class FeatureIndex:
    """Features of every model of one catalog, rebuilt only when the catalog object changes.

    Besides the features by id and in catalog order, it keeps them grouped by
    `_group_key`, so a query scores each group once instead of each model.
    """

    def __init__(self) -> None:
        self._catalog: Any = None
        self.by_id: dict[str, Features] = {}
        self.all: tuple[Features, ...] = ()
        self.position: dict[str, int] = {}
        self.groups: tuple[FeatureGroup, ...] = ()

    def refresh(self, catalog: Iterable[Any], key: Any = None) -> "FeatureIndex":
        """Rebuild from the specs of `catalog` if it (or `key`, the object that identifies it) is not the one indexed; return self."""
        ident = catalog if key is None else key
        if ident is not self._catalog:
            feats = [features_of(spec) for spec in catalog]
            self.by_id = {f.model_id: f for f in feats}
            self.all = tuple(feats)
            self.position = {f.model_id: i for i, f in enumerate(feats)}
            grouped: dict[tuple[Any, ...], list[tuple[int, Features]]] = {}
            for i, f in enumerate(feats):
                grouped.setdefault(_group_key(f), []).append((i, f))
            self.groups = tuple(
                FeatureGroup(members[0][1], tuple(members), tuple(f.model_id for _, f in members),
                             tuple(sorted(range(len(members)), key=lambda k, m=members: (m[k][1].size_bytes, m[k][0]))))  # type: ignore[misc]
                for members in grouped.values())
            self._catalog = ident
        return self


@dataclass(frozen=True, slots=True)
class Weights:
    """The formula's weights and factors (`fallback.*` settings)."""

    capabilities: float
    model_type: float
    quality: float
    speed: float
    vram: float
    family: float
    availability: float
    size: float
    vram_reduce_factor: float
    availability_downloading: float
    min_score: float
    max_suggestions: int

    @classmethod
    def defaults(cls) -> "Weights":
        """The weights of a default configuration (the values live in core/config.py's SCHEMA only)."""
        return cls.from_config(Config(None))

    @classmethod
    def from_config(cls, config: Any) -> "Weights":
        """Read the weights from a `core.config.Config`."""
        g = config.get
        return cls(
            capabilities=g("fallback.weight_capabilities"),
            model_type=g("fallback.weight_model_type"),
            quality=g("fallback.weight_quality"),
            speed=g("fallback.weight_speed"),
            vram=g("fallback.weight_vram"),
            family=g("fallback.weight_family"),
            availability=g("fallback.weight_availability"),
            size=g("fallback.weight_size"),
            vram_reduce_factor=g("fallback.vram_reduce_factor"),
            availability_downloading=g("fallback.availability_downloading"),
            min_score=g("fallback.min_score"),
            max_suggestions=g("fallback.max_suggestions"),
        )


@dataclass(frozen=True, slots=True)
class Query:
    """A request, normalised: what an alternative must offer."""

    requested: Features
    modes: int
    caps: int
    model_type: str
    quality: int
    speed: int
    resolution: str | None
    pixels: int | None
    free_vram_gb: float | None
    max_wait_s: float
    prefer_smaller: bool
    family: str | None


def _enum_field(req: Mapping[str, Any], key: str, choices: Iterable[str]) -> str | None:
    v = req.get(key)
    if v is None:
        return None
    if isinstance(v, str):
        v = v.strip().lower().replace("-", "_")
    choices = tuple(choices)
    if v not in choices:
        raise InvalidParams(f"requirements.{key} must be one of {', '.join(choices)}", field=f"requirements.{key}", allowed=list(choices))
    return str(v)


def _positive_number(d: Mapping[str, Any], key: str, prefix: str) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not 0 <= v <= MAX_WAIT_MINUTES:
        raise InvalidParams(f"{prefix}.{key} must be a number from 0 to {MAX_WAIT_MINUTES:g}", field=f"{prefix}.{key}",
                            minimum=0, maximum=MAX_WAIT_MINUTES)
    return float(v)


def build_query(requested: Features, requirements: Mapping[str, Any] | None, preferences: Mapping[str, Any] | None,
                free_vram_gb: float | None, default_max_wait_minutes: float) -> Query:
    """Normalise `requirements` and `user_preferences`; InvalidParams names a bad field. Unknown keys are ignored."""
    if not isinstance(requirements or {}, Mapping):
        raise InvalidParams("requirements must be an object", field="requirements")
    if not isinstance(preferences or {}, Mapping):
        raise InvalidParams("user_preferences must be an object", field="user_preferences")
    req = dict(requirements or {})
    prefs = dict(preferences or {})
    model_type = _enum_field(req, "model_type", MODEL_TYPES)
    caps_raw = req.get("capabilities")
    if caps_raw is not None and (not isinstance(caps_raw, list) or any(c not in CAPABILITIES for c in caps_raw)):
        raise InvalidParams(f"requirements.capabilities must be a list drawn from {', '.join(CAPABILITIES)}", field="requirements.capabilities")
    # the input modes the request needs
    modes = 0
    has_image = req.get("has_image")
    inputs = req.get("inputs")
    if has_image is not None:
        if not isinstance(has_image, bool):
            raise InvalidParams("requirements.has_image must be a boolean", field="requirements.has_image")
        modes = INPUT_IMAGE if has_image else INPUT_TEXT
    elif inputs is not None:
        if not isinstance(inputs, list) or not inputs or any(i not in ("text", "image") for i in inputs):
            raise InvalidParams("requirements.inputs must be a non-empty list of \"text\" and \"image\"", field="requirements.inputs")
        modes = INPUT_IMAGE if "image" in inputs else INPUT_TEXT
    elif model_type is not None:
        modes = MODES_OF_TYPE[model_type]
    elif caps_raw and any(c in MODES_OF_TYPE for c in caps_raw):
        for c in caps_raw:
            modes |= MODES_OF_TYPE.get(c, 0)
    else:
        modes = requested.modes
    if model_type is None:
        if modes == requested.modes:
            model_type = requested.model_type
        else:
            model_type = {INPUT_TEXT: "text_to_video", INPUT_IMAGE: "image_to_video"}.get(modes, "text_image_to_video")
    caps = _cap_bits(caps_raw) if caps_raw is not None else requested.caps
    quality = _enum_field(req, "quality", TIERS)
    speed = _enum_field(req, "speed", SPEEDS)
    resolution = req.get("resolution")
    pixels = None
    if resolution is not None:
        try:
            pixels = parse_resolution(resolution) if isinstance(resolution, str) else None
        except ValueError:
            pixels = None
        if pixels is None:
            raise InvalidParams("requirements.resolution must look like \"1280x704\"", field="requirements.resolution")
    wait_min = _positive_number(prefs, "max_wait_time_minutes", "user_preferences")
    if wait_min is None:
        wait_min = _positive_number(req, "max_wait_time_minutes", "requirements")
    if wait_min is None:
        wait_min = default_max_wait_minutes
    prefer_smaller = prefs.get("prefer_smaller_models", False)
    if not isinstance(prefer_smaller, bool):
        raise InvalidParams("user_preferences.prefer_smaller_models must be a boolean", field="user_preferences.prefer_smaller_models")
    family = req.get("family", requested.family)
    if family is not None and not isinstance(family, str):
        raise InvalidParams("requirements.family must be a string", field="requirements.family")
    return Query(
        requested=requested,
        modes=modes,
        caps=caps,
        model_type=model_type,
        quality=TIER[quality] if quality else requested.quality,
        speed=SPEED[speed] if speed else requested.speed,
        resolution=resolution,
        pixels=pixels,
        free_vram_gb=free_vram_gb,
        max_wait_s=wait_min * 60.0,
        prefer_smaller=prefer_smaller,
        family=family,
    )


@dataclass(slots=True)
class Suggestion:
    """One scored candidate."""

    features: Features
    score: float
    parts: dict[str, float]
    vram_fit: str  # fits | reduce | unknown
    resolution: str | None
    vram_need_gb: float | None
    availability_status: str = "unknown"
    eta_s: float | None = None
    is_requested: bool = False
    reason: str = ""

    @property
    def model_id(self) -> str:
        """The candidate's id."""
        return self.features.model_id

    def to_dict(self, query: Query, times: Mapping[str, float] | None = None) -> dict[str, Any]:
        """A suggestion's fields, with VRAM and wait figures; `times` are `measured_times` of the models."""
        f, ref = self.features, query.requested
        perf, basis = performance_difference(f, ref, times)
        qdiff = f.quality - ref.quality
        word = QUALITY_WORDS[max(-2, min(2, qdiff))]
        lost = (ref.caps & ~f.caps) & (_CAP_BIT["high_quality"] | _CAP_BIT["high_resolution"])
        if word == "similar" and (lost or self.vram_fit == "reduce"):
            word = "slightly_lower"
        return {
            "suggested_model": f.model_id,
            "display_name": f.display_name,
            "model_type": f.model_type,
            "compatibility_score": round(self.score, 4),
            "performance_difference": round(perf, 4),
            "performance_basis": basis,
            "measured_generation_time_s": times.get(f.model_id) if times and basis != "catalog_speed_tier" else None,
            "requested_generation_time_s": times.get(ref.model_id) if times and basis != "catalog_speed_tier" else None,
            "estimated_quality_difference": word,
            "availability_status": self.availability_status,
            "estimated_wait_seconds": None if self.eta_s is None else round(self.eta_s, 1),
            "reason": self.reason,
            "is_requested_model": self.is_requested,
            "vram_fit": self.vram_fit,
            "suggested_resolution": self.resolution,
            "required_vram_gb": None if self.vram_need_gb is None else round(self.vram_need_gb, 2),
            "score_breakdown": {k: round(v, 4) for k, v in self.parts.items()},
        }


Availability = Callable[[str], tuple[str, float | None]]
"""model_id -> (availability_status, seconds until ready or None)."""


def need_at(f: Features, q: Query) -> float | None:
    """The candidate's VRAM need (GiB) at the requested resolution: the listed figure, else `vram_at`."""
    if q.pixels is None or not f.vram:
        return None
    need = f.vram_by_res.get(q.resolution) if q.resolution is not None else None
    return need if need is not None else f.vram_at(q.pixels)


def vram_fit(f: Features, q: Query, w: Weights) -> tuple[float, str, str | None, float | None] | None:
    """(sub-score, fit, resolution, need GiB) or None when the candidate cannot fit at all.

    With a requested resolution: "fits" when the need there is within the free
    VRAM, else "reduce" to the largest listed smaller resolution that fits.
    Without one: "fits" at the largest listed resolution that fits. "unknown"
    when the free VRAM or the candidate's figures are unknown.
    """
    free = q.free_vram_gb
    if not f.vram:
        return (0.5 if free is not None else 1.0), "unknown", q.resolution, None
    if free is None:
        return 1.0, "unknown", q.resolution, need_at(f, q)
    if q.pixels is None:
        best = f.largest_fitting(free, None)
        return (1.0, "fits", best[1], best[2]) if best is not None else None
    need = need_at(f, q)
    if need is not None and need <= free:
        return 1.0, "fits", q.resolution, need
    smaller = f.largest_fitting(free, q.pixels)
    if smaller is None:
        return None
    return w.vram_reduce_factor * smaller[0] / q.pixels, "reduce", smaller[1], smaller[2]


def _availability_part(status: str, eta: float | None, q: Query, w: Weights) -> float:
    if status in READY:
        return 1.0
    if status in IN_PROGRESS:
        if status == "paused" or eta is None:
            return w.availability_downloading * 0.25
        if q.max_wait_s <= 0:
            return 0.0
        return w.availability_downloading * max(0.0, 1.0 - eta / q.max_wait_s)
    return 0.0


def _reason(s: Suggestion, q: Query) -> str:
    f, ref = s.features, q.requested
    bits: list[str] = []
    if s.is_requested:
        bits.append("the model you asked for")
    else:
        if q.family and f.family == q.family:
            bits.append(f"same family ({f.family})")
        if f.model_type == q.model_type:
            bits.append(f"same model type ({f.model_type})")
        else:
            bits.append(f"a {f.model_type} model that accepts your inputs")
        missing = q.caps & ~f.caps
        if q.caps and not missing:
            bits.append("has every requested capability")
        elif missing:
            bits.append("lacks " + ", ".join(c for c in FEATURE_CAPS if missing & _CAP_BIT[c]))
        if f.quality > q.quality:
            bits.append(f"higher quality ({TIERS[f.quality]})")
        elif f.quality < q.quality:
            bits.append(f"lower quality ({TIERS[f.quality]} vs {TIERS[q.quality]})")
        if f.speed != ref.speed:
            bits.append(f"{'faster' if f.speed > ref.speed else 'slower'} ({SPEEDS[f.speed]})")
    free = q.free_vram_gb
    if s.vram_fit == "fits" and free is not None:
        bits.append(f"fits the {free:.1f} GiB of free VRAM at {s.resolution} (needs {s.vram_need_gb:.1f})")
    elif s.vram_fit == "reduce" and free is not None:
        bits.append(f"needs {s.resolution} instead of {q.resolution} to fit the {free:.1f} GiB of free VRAM")
    elif s.vram_fit == "unknown":
        bits.append("VRAM fit unknown" if free is None else "lists no VRAM figures")
    st = s.availability_status
    if st in READY:
        bits.append("ready now")
    elif st in IN_PROGRESS:
        bits.append(f"{st}, ready in about {max(1, round(s.eta_s / 60))} min" if s.eta_s is not None else f"{st}, no estimate yet")
    else:
        bits.append(f"{st}: needs a download" if st == "missing" else st)
    text = "; ".join(bits)
    return text[0].upper() + text[1:]


def _parts(f: Features, q: Query, vram_score: float, availability_score: float) -> dict[str, float]:
    """The sub-scores of one candidate (for the answer; `rank` sums them through lookup tables)."""
    if f is q.requested:
        parts = {"capabilities": 1.0, "model_type": 1.0, "quality": 1.0, "speed": 1.0, "family": 1.0}
        if q.prefer_smaller:
            parts["size"] = 1.0
    else:
        ncaps = q.caps.bit_count()
        parts = {
            "capabilities": (q.caps & f.caps).bit_count() / ncaps if ncaps else 1.0,
            "model_type": 1.0 if f.model_type == q.model_type else (0.75 if f.modes == INPUT_TEXT | INPUT_IMAGE else 0.5),
            "quality": 1.0 - max(0, q.quality - f.quality) / 2.0,
            "speed": 1.0 - max(0, q.speed - f.speed) / 2.0,
            "family": 1.0 if q.family is not None and f.family == q.family else 0.0,
        }
        if q.prefer_smaller:
            parts["size"] = min(1.0, q.requested.size_bytes / f.size_bytes) if f.size_bytes > 0 else 1.0
    parts["vram"] = vram_score
    parts["availability"] = availability_score
    return parts


def _vram_score(f: Features, free: float | None, pixels: int | None, res: str | None, reduce_f: float) -> float | None:
    """The `vram` sub-score as `vram_fit` gives it, None when the candidate fits at no resolution (written for speed)."""
    if not f.vram:
        return 0.5 if free is not None else 1.0
    if free is None:
        return 1.0
    if f.min_vram_gb > free:  # type: ignore[operator]
        return None  # every resolution needs more than is free
    if pixels is None:
        return 1.0  # some listed resolution fits (min_vram_gb <= free)
    need = f.vram_by_res.get(res) if res is not None else None
    if need is None:
        need = f.vram_at(pixels)  # the same figure as need_at()
    if need <= free:  # type: ignore[operator]
        return 1.0
    smaller = f.largest_fitting(free, pixels)
    if smaller is None:
        return None
    return reduce_f * smaller[0] / pixels


_LIVE = READY | IN_PROGRESS


def rank(index: FeatureIndex, q: Query, availability: Availability, w: Weights, limit: int | None = None,
         status_of: Callable[[str], str] | None = None) -> list[Suggestion]:
    """Score every input-compatible candidate and return the best `limit`, best first.

    Ties are broken by: the requested model, then ready, then catalog order.
    Everything but availability is the same for every model of a `FeatureGroup`
    (but the size part), so it is summed once per group through per-query
    lookup tables; groups that fail a hard filter, or cannot reach `min_score`
    (or the current top `limit`) even when ready, are skipped whole. Within a
    group only the models whose status (`status_of`, a cheap read; by default
    `availability()`'s status) is ready or in progress can beat the group's
    first models of any other status, so only those, and the first others in
    score order, are looked at with `availability()` and scored.
    """
    limit = w.max_suggestions if limit is None else limit
    ref = q.requested
    size_w = w.size if q.prefer_smaller else 0.0
    # the same expression as a candidate's partial sum with every part 1, so a perfect candidate scores exactly 1.0
    total = (w.capabilities * 1.0 + w.model_type * 1.0 + w.quality * 1.0 + w.speed * 1.0 + w.vram * 1.0 + w.family * 1.0
             + size_w * 1.0) + w.availability * 1.0
    if total <= 0 or limit <= 0:
        return []
    if status_of is None:
        status_of = lambda mid: availability(mid)[0]  # noqa: E731
    # weighted lookup tables for this query
    ncaps = q.caps.bit_count()
    cap_t = [w.capabilities * ((q.caps & bits).bit_count() / ncaps if ncaps else 1.0) for bits in range(1 << len(FEATURE_CAPS))]
    type_t = {t: w.model_type * (1.0 if t == q.model_type else (0.75 if MODES_OF_TYPE[t] == INPUT_TEXT | INPUT_IMAGE else 0.5))
              for t in MODES_OF_TYPE}
    qual_t = [w.quality * (1.0 - max(0, q.quality - t) / 2.0) for t in range(len(TIERS))]
    speed_t = [w.speed * (1.0 - max(0, q.speed - t) / 2.0) for t in range(len(SPEEDS))]
    fam, fam_w, vram_w, avail_w, min_score = q.family, w.family * 1.0, w.vram, w.availability, w.min_score
    qmodes, free, pixels, res = q.modes, q.free_vram_gb, q.pixels, q.resolution
    reduce_f = w.vram_reduce_factor
    ref_size = ref.size_bytes
    ref_pos = index.position.get(ref.model_id, -1) if index.by_id.get(ref.model_id) is ref else -1

    best: list[tuple[tuple[float, int, int, int], Features, float, float, str, float | None]] = []  # min-heap by key
    vscores: dict[int, float] = {}  # catalog position -> vram sub-score, for the answer

    def consider(i: int, f: Features, partial: float, vs: float, is_ref: bool) -> None:
        status, eta = availability(f.model_id)
        if is_ref and status not in READY:
            return
        a = _availability_part(status, eta, q, w)
        score = (partial + avail_w * a) / total
        score = 0.0 if score < 0.0 else (1.0 if score > 1.0 else score)
        if score < min_score:
            return
        key = (score, 1 if is_ref else 0, 1 if status in READY else 0, -i)
        if len(best) >= limit and key <= best[0][0]:
            return
        vscores[i] = vs
        entry = (key, f, vs, a, status, eta if status not in READY else 0.0)
        if len(best) < limit:
            heapq.heappush(best, entry)
        else:
            heapq.heapreplace(best, entry)

    def floor() -> float:
        """The score a candidate must exceed (or tie) to enter the top `limit`; -1 while there is room."""
        return best[0][0][0] if len(best) >= limit else -1.0

    # the requested model, when it can take the inputs and fits
    if ref_pos >= 0 and ref.modes & qmodes == qmodes:
        vs = _vram_score(ref, free, pixels, res, reduce_f)
        if vs is not None:
            partial = (w.capabilities * 1.0 + w.model_type * 1.0 + w.quality * 1.0 + w.speed * 1.0 + vram_w * vs + fam_w
                       + size_w * 1.0)
            consider(ref_pos, ref, partial, vs, True)

    staged: list[tuple[float, int, float, float, FeatureGroup]] = []  # (-bound, order, base, vs, group)
    for n, g in enumerate(index.groups):
        f0 = g.rep
        if f0.modes & qmodes != qmodes:
            continue
        vs = _vram_score(f0, free, pixels, res, reduce_f)
        if vs is None:
            continue
        base = (cap_t[f0.caps] + type_t[f0.model_type] + qual_t[f0.quality] + speed_t[f0.speed] + vram_w * vs
                + (fam_w if fam is not None and f0.family == fam else 0.0))
        bound = (base + size_w + avail_w) / total  # the best any member can reach (every size part is at most 1)
        if bound < min_score:
            continue
        staged.append((-bound, n, base, vs, g))
    staged.sort()

    for neg_bound, _, base, vs, g in staged:
        if -neg_bound < floor():
            break  # this group and every later one cannot enter the top
        members = g.members
        statuses = list(map(status_of, g.ids))
        # a partial sum as the original expression adds it: the size part last
        if size_w:
            def partial_of(f: Features) -> float:
                return base + size_w * (min(1.0, ref_size / f.size_bytes) if f.size_bytes > 0 else 1.0)
        else:
            def partial_of(f: Features) -> float:
                return base + 0.0
        for k, st in enumerate(statuses):
            if st in _LIVE:
                i, f = members[k]
                if i != ref_pos:
                    consider(i, f, partial_of(f), vs, False)
        # the others score their partial sum alone: walk them best first, stop once none can enter
        order = g.by_size if size_w else range(len(members))
        taken = 0
        for k in order:
            if statuses[k] in _LIVE:
                continue
            i, f = members[k]
            if i == ref_pos:
                continue
            partial = partial_of(f)
            score = partial / total
            if score < min_score or score < floor():
                break
            if not size_w and taken >= limit:
                break  # equal scores: the first `limit` in catalog order win the ties
            consider(i, f, partial, vs, False)
            taken += 1

    chosen = sorted(best, key=lambda t: t[0], reverse=True)
    out: list[Suggestion] = []
    for key, f, vs, a, status, eta in chosen:
        vp = vram_fit(f, q, w)
        assert vp is not None  # only candidates that fit somehow were scored
        out.append(Suggestion(f, key[0], _parts(f, q, vs, a), vp[1], vp[2], vp[3], status, eta, bool(key[1])))
    for s in out:
        s.reason = _reason(s, q)
    return out
