"""Scoring and strategy properties over generated catalogs (pure functions, no engine)."""

from __future__ import annotations

import dataclasses


from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mavail.core.catalog import CAPABILITIES, MODEL_TYPES, SPEEDS, TIERS, FileSpec, ModelSpec
from mavail.core.fallback.scoring import (INPUT_IMAGE, INPUT_TEXT, FeatureIndex, Weights, build_query, need_at, parse_resolution, rank, vram_fit)
from mavail.core.fallback.strategy import Thresholds, choose

RESOLUTIONS = ["512x288", "832x480", "1024x576", "1280x704", "1920x1088"]
STATUSES = ["available", "downloading", "queued", "paused", "missing", "corrupted", "failed", "updating"]


def spec(mid: str, model_type: str = "text_to_video", caps: tuple[str, ...] = ("text_to_video",), quality: str = "medium",
         speed: str = "medium", family: str | None = None, vram: dict[str, float] | None = None, size: int = 1000) -> ModelSpec:
    return ModelSpec(id=mid, version="1.0.0", display_name=mid, model_type=model_type, capabilities=caps, quality=quality, speed=speed,
                     family=family, vram_gb=vram if vram is not None else {"832x480": 8.0, "1280x704": 16.0},
                     files=(FileSpec("w.bin", "http://127.0.0.1:9/w.bin", size, "0" * 64),))



class Cat:
    def __init__(self, specs: list[ModelSpec]) -> None:
        self.models = {s.id: s for s in specs}

    def __iter__(self):
        return iter(self.models.values())


def index_of(specs: list[ModelSpec]) -> FeatureIndex:
    return FeatureIndex().refresh(Cat(specs))


@st.composite
def specs_strategy(draw: st.DrawFn) -> list[ModelSpec]:
    n = draw(st.integers(1, 12))
    out = []
    for i in range(n):
        res = draw(st.lists(st.sampled_from(RESOLUTIONS), min_size=0, max_size=4, unique=True))
        vram = {r: draw(st.floats(1.0, 80.0, allow_nan=False)) for r in res}
        out.append(spec(
            f"m{i}",
            model_type=draw(st.sampled_from(MODEL_TYPES)),
            caps=tuple(draw(st.lists(st.sampled_from(CAPABILITIES), max_size=4, unique=True))),
            quality=draw(st.sampled_from(TIERS)),
            speed=draw(st.sampled_from(SPEEDS)),
            family=draw(st.sampled_from([None, "wan", "ltx"])),
            vram=vram,
            size=draw(st.integers(1, 10**10)),
        ))
    return out


requirements_strategy = st.fixed_dictionaries({}, optional={
    "has_image": st.booleans(),
    "model_type": st.sampled_from(MODEL_TYPES),
    "capabilities": st.lists(st.sampled_from(CAPABILITIES), max_size=3, unique=True),
    "quality": st.sampled_from(TIERS),
    "speed": st.sampled_from(SPEEDS),
    "resolution": st.sampled_from(RESOLUTIONS),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=specs_strategy(), data=st.data())
def test_properties(specs: list[ModelSpec], data: st.DataObject) -> None:
    idx = index_of(specs)
    requested = data.draw(st.sampled_from(specs)).id
    req = data.draw(requirements_strategy)
    prefs = data.draw(st.fixed_dictionaries({}, optional={"prefer_smaller_models": st.booleans(),
                                                          "max_wait_time_minutes": st.floats(0, 120, allow_nan=False)}))
    free = data.draw(st.one_of(st.none(), st.floats(0.0, 100.0, allow_nan=False)))
    status = {s.id: data.draw(st.sampled_from(STATUSES)) for s in specs}
    etas = {s.id: data.draw(st.one_of(st.none(), st.floats(0, 10_000, allow_nan=False))) for s in specs}
    weights = dataclasses.replace(
        Weights.defaults(), capabilities=data.draw(st.floats(0, 3)), model_type=data.draw(st.floats(0, 3)), quality=data.draw(st.floats(0, 3)),
        speed=data.draw(st.floats(0, 3)), vram=data.draw(st.floats(0, 3)), family=data.draw(st.floats(0, 3)),
        availability=data.draw(st.floats(0, 3)), size=data.draw(st.floats(0, 3)), min_score=data.draw(st.floats(0, 0.5)),
        max_suggestions=data.draw(st.integers(1, 20)))

    def avail(mid: str):
        s = status[mid]
        return s, (0.0 if s in ("available", "updating") else etas[mid])

    q = build_query(idx.by_id[requested], req, prefs, free, 30.0)
    out = rank(idx, q, avail, weights)
    assert len(out) <= weights.max_suggestions
    ids = [s.model_id for s in out]
    assert len(ids) == len(set(ids))
    for s in out:
        d = s.to_dict(q)
        # 1. scores in [0, 1], each part too
        assert 0.0 <= s.score <= 1.0 and 0.0 <= d["compatibility_score"] <= 1.0
        assert all(0.0 <= v <= 1.0 for v in s.parts.values()), s.parts
        assert -1.0 <= d["performance_difference"] <= 1.0
        # the inlined sums of rank() agree with the documented formula over the reported parts
        wmap = {"capabilities": weights.capabilities, "model_type": weights.model_type, "quality": weights.quality,
                "speed": weights.speed, "vram": weights.vram, "family": weights.family, "availability": weights.availability,
                "size": weights.size}
        tw = sum(wmap[k] for k in s.parts)
        assert abs(sum(wmap[k] * v for k, v in s.parts.items()) / tw - s.score) < 1e-9
        assert s.parts["vram"] == vram_fit(s.features, q, weights)[0]
        assert d["reason"]
        # 2. input compatibility is never violated
        f = s.features
        assert f.modes & q.modes == q.modes
        if q.modes == INPUT_TEXT:
            assert f.model_type != "image_to_video"
        if q.modes & INPUT_IMAGE:
            assert f.model_type != "text_to_video"
        # 3. nothing VRAM-infeasible unless it names a smaller resolution that fits
        if free is not None and f.vram:
            if q.pixels is None:
                assert s.vram_fit == "fits" and f.vram_by_res[s.resolution] <= free
            elif need_at(f, q) > free:
                assert s.vram_fit == "reduce" and s.resolution is not None
                assert f.vram_by_res[s.resolution] <= free and parse_resolution(s.resolution) < q.pixels
            else:
                assert s.vram_fit == "fits" and s.resolution == q.resolution
    # 4. the requested model, ready and fitting and compatible, is the top
    R = idx.by_id[requested]
    fit = vram_fit(R, q, weights)
    total_w = (weights.capabilities + weights.model_type + weights.quality + weights.speed + weights.vram + weights.family
               + weights.availability + (weights.size if q.prefer_smaller else 0))
    if (status[requested] in ("available", "updating") and fit is not None and fit[1] in ("fits", "unknown") and fit[0] == 1.0
            and R.modes & q.modes == q.modes and total_w > 0):
        assert ids and ids[0] == requested, (ids, [s.score for s in out])
        assert out[0].score == 1.0
    if status[requested] not in ("available", "updating"):
        assert requested not in ids
    # 5. strategies: a named model that does not fit as asked comes with the resolution that does
    strategy = choose(q, out, status[requested], etas[requested], fit, Thresholds.defaults())
    assert strategy["strategy_type"] in (None, "alternative_model", "queue_and_wait", "mock_generation", "download_and_retry",
                                         "reduce_requirements", "hybrid_approach")
    named = strategy["suggested_model"]
    if named is not None and free is not None:
        f = idx.by_id[named]
        if f.vram and q.pixels is not None and need_at(f, q) > free:
            assert strategy["requirements_reduced"] and strategy["suggested_resolution"]
            assert f.vram_by_res[strategy["suggested_resolution"]] <= free
            if named != requested or status[requested] in ("available", "updating"):
                assert strategy["strategy_type"] == "reduce_requirements"
    if R.modes & q.modes != q.modes:
        assert strategy["suggested_model"] != requested and strategy["fallback_needed"]
    if strategy["strategy_type"] == "mock_generation":
        assert "ownload" in strategy["user_message"] or "VRAM" in strategy["user_message"]


def test_text_request_never_gets_image_model() -> None:
    specs = [
        spec("t2v-wanted", "text_to_video", ("text_to_video", "high_quality"), "high", family="wan"),
        spec("i2v-same-family", "image_to_video", ("image_to_video", "high_quality"), "high", family="wan"),
        spec("t2v-other", "text_to_video", ("text_to_video",), "medium", family="ltx"),
        spec("ti2v", "text_image_to_video", ("text_to_video", "image_to_video"), "medium", family="wan"),
    ]
    idx = index_of(specs)
    avail = lambda mid: ("missing", None) if mid == "t2v-wanted" else ("available", 0.0)  # noqa: E731
    q = build_query(idx.by_id["t2v-wanted"], {}, {}, 24.0, 30)
    ids = [s.model_id for s in rank(idx, q, avail, Weights.defaults())]
    assert "i2v-same-family" not in ids and "t2v-wanted" not in ids
    assert set(ids) == {"t2v-other", "ti2v"}
    # with an image: only models taking one
    q = build_query(idx.by_id["t2v-wanted"], {"has_image": True}, {}, 24.0, 30)
    ids = [s.model_id for s in rank(idx, q, avail, Weights.defaults())]
    assert set(ids) == {"i2v-same-family", "ti2v"}


def test_vram_reduce_and_infeasible() -> None:
    specs = [
        spec("big", vram={"832x480": 12.0, "1280x704": 24.0}),
        spec("huge", vram={"832x480": 40.0, "1280x704": 80.0}),
        spec("small", vram={"832x480": 6.0, "1280x704": 10.0}, quality="low"),
    ]
    idx = index_of(specs)
    avail = lambda mid: ("available", 0.0)  # noqa: E731
    q = build_query(idx.by_id["big"], {"resolution": "1280x704"}, {}, 16.0, 30)
    out = {s.model_id: s for s in rank(idx, q, avail, Weights.defaults())}
    assert "huge" not in out  # fits at no resolution
    assert out["big"].vram_fit == "reduce" and out["big"].resolution == "832x480"
    assert out["small"].vram_fit == "fits"
    strategy = choose(q, list(out.values()), "available", 0.0, vram_fit(idx.by_id["big"], q, Weights.defaults()), Thresholds.defaults())
    assert strategy["strategy_type"] in ("reduce_requirements", "alternative_model")
    assert strategy["suggested_resolution"] in ("832x480", "1280x704")
    # interpolation between listed resolutions
    assert idx.by_id["big"].vram_at(parse_resolution("1024x576")) == 12.0 + 12.0 * (1024 * 576 - 832 * 480) / (1280 * 704 - 832 * 480)


def test_requested_ready_is_top_with_score_one() -> None:
    specs = [spec("a", family="x"), spec("b", family="x")]
    idx = index_of(specs)
    q = build_query(idx.by_id["a"], {"quality": "high"}, {}, None, 30)
    out = rank(idx, q, lambda mid: ("available", 0.0), Weights.defaults())
    assert [s.model_id for s in out] == ["a", "b"] and out[0].score == 1.0 and out[1].score < 1.0
    strategy = choose(q, out, "available", 0.0, vram_fit(idx.by_id["a"], q, Weights.defaults()), Thresholds.defaults())
    assert strategy["strategy_type"] is None and strategy["fallback_needed"] is False


def test_strategies_by_state() -> None:
    specs = [
        spec("want", "text_to_video", ("text_to_video", "high_quality"), "high", family="wan", size=10 * 1024**3),
        spec("alt-good", "text_to_video", ("text_to_video", "high_quality"), "high", family="wan"),
        spec("alt-weak", "text_to_video", ("text_to_video",), "low", "slow"),
    ]
    idx = index_of(specs)
    th = Thresholds(alternative_min_score=0.8, hybrid_min_score=0.4, hybrid_min_wait_s=60)

    def run(status: str, eta: float | None, alts: dict[str, str], wait_min: float = 30):
        st_map = {"want": status, **alts}
        av = lambda mid: (st_map.get(mid, "missing"), eta if mid == "want" else 0.0)  # noqa: E731
        q = build_query(idx.by_id["want"], {}, {"max_wait_time_minutes": wait_min}, 48.0, 30)
        out = rank(idx, q, av, Weights.defaults())
        return choose(q, out, status, eta, vram_fit(idx.by_id["want"], q, Weights.defaults()), th)

    assert run("downloading", 30, {"alt-weak": "available"})["strategy_type"] == "queue_and_wait"
    assert run("downloading", 600, {"alt-weak": "available"})["strategy_type"] == "hybrid_approach"
    assert run("downloading", 600, {})["strategy_type"] == "queue_and_wait"
    assert run("downloading", 3600 * 5, {})["strategy_type"] == "mock_generation"
    assert run("downloading", 3600 * 5, {"alt-good": "available"})["strategy_type"] == "alternative_model"
    assert run("missing", None, {"alt-good": "available"})["strategy_type"] == "alternative_model"
    assert run("missing", None, {"alt-weak": "available"})["strategy_type"] == "hybrid_approach"
    s = run("missing", None, {})
    assert s["strategy_type"] == "download_and_retry" and s["download_model"] == "want"
    assert run("missing", 100, {})["strategy_type"] == "queue_and_wait"
    m = run("downloading", 3600 * 5, {"alt-weak": "missing"})
    assert m["strategy_type"] == "mock_generation" and "want" in m["user_message"]


def test_bad_requirements_name_the_field() -> None:
    import pytest

    from mavail.core.errors import InvalidParams

    idx = index_of([spec("a")])
    for req, field in [({"quality": "ultra"}, "requirements.quality"), ({"resolution": "big"}, "requirements.resolution"),
                       ({"inputs": ["audio"]}, "requirements.inputs"), ({"capabilities": "x"}, "requirements.capabilities")]:
        with pytest.raises(InvalidParams) as exc:
            build_query(idx.by_id["a"], req, {}, None, 30)
        assert exc.value.details["field"] == field
    # the hyphenated spelling of model types (text-to-video) is accepted
    q = build_query(idx.by_id["a"], {"model_type": "text-to-video"}, {}, None, 30)
    assert q.model_type == "text_to_video"


@st.composite
def alike_specs_strategy(draw: st.DrawFn) -> list[ModelSpec]:
    """Catalogs where many models score alike (few distinct feature sets, sizes around each other), as in large catalogs."""
    kinds = draw(st.lists(st.tuples(st.sampled_from(MODEL_TYPES), st.sampled_from(TIERS), st.sampled_from(SPEEDS),
                                    st.sampled_from([None, "wan", "ltx"]),
                                    st.sampled_from([{}, {"832x480": 8.0}, {"832x480": 8.0, "1280x704": 16.0}, {"1280x704": 30.0}])),
                          min_size=1, max_size=4))
    n = draw(st.integers(1, 40))
    out = []
    for i in range(n):
        mtype, quality, speed, family, vram = draw(st.sampled_from(kinds))
        out.append(spec(f"m{i}", model_type=mtype, quality=quality, speed=speed, family=family, vram=dict(vram),
                        size=draw(st.sampled_from([0, 500, 1000, 2000, 10**6]))))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=alike_specs_strategy(), data=st.data())
def test_grouped_rank_equals_one_pass_rank(specs: list[ModelSpec], data: st.DataObject) -> None:
    """The grouped, prefiltered ranking gives exactly what scoring every model in one pass gives."""
    from tests.fallback_helpers import reference_rank

    idx = index_of(specs)
    requested = data.draw(st.sampled_from(specs)).id
    req = data.draw(requirements_strategy)
    prefs = data.draw(st.fixed_dictionaries({}, optional={"prefer_smaller_models": st.booleans()}))
    free = data.draw(st.one_of(st.none(), st.sampled_from([4.0, 10.0, 20.0, 64.0])))
    status = {s.id: data.draw(st.sampled_from(STATUSES)) for s in specs}
    etas = {s.id: data.draw(st.one_of(st.none(), st.sampled_from([0.0, 60.0, 900.0, 5000.0]))) for s in specs}
    weights = dataclasses.replace(Weights.defaults(), min_score=data.draw(st.sampled_from([0.0, 0.3, 0.6])),
                                  max_suggestions=data.draw(st.integers(1, 8)))

    def avail(mid: str):
        s = status[mid]
        return s, (0.0 if s in ("available", "updating") else etas[mid])

    q = build_query(idx.by_id[requested], req, prefs, free, 30.0)
    fast = rank(idx, q, avail, weights)
    slow = reference_rank(idx, q, avail, weights)
    assert [(s.model_id, s.score) for s in fast] == [(s.model_id, s.score) for s in slow]
    assert [s.to_dict(q) for s in fast] == [s.to_dict(q) for s in slow]
