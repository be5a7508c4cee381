"""Usage analytics: recorded generations and requests, figures over periods, trends, cleanup and preload advice.

Events are validated on the event loop, buffered in memory and written by one
background task in one transaction per flush (at most every
`analytics.flush_interval_ms`), so a client recording thousands of events a
second costs the loop a list append per event, plus one status report per
model per call (`analytics.record_batch` reports each model once), made at
once so that no read after the call sees the old usage fields. Each flush also maintains
`usage_daily`, a per-model, per-UTC-day rollup with running totals, so the
figures of any range of whole days are two index seeks per model whatever the
number of events; only the partial days at the edges of a range that does not
start or end at midnight UTC are read from the raw events.

Definitions (all times UTC):
- a *use* is one generation recorded with `analytics.record`; a *request* is
  one `models.request` (recorded even when the model is not ready);
- `average_generation_time` averages the successful generations only;
- `success_rate` is successful uses / uses;
- periods are whole UTC days ending today: day = today, week = the last 7
  days, month = the last 30, year = the last 365; `start_date`/`end_date`
  replace them (a date-only `end_date` includes that whole day);
- `uses_per_day` is uses / the length of the range in days;
- `peak_usage_hours` are the (up to 5) UTC hours with the most uses, busiest first;
- `system_performance.download_success_rate` = completed / (completed + failed)
  downloads, `average_download_speed_mbps` = bytes of completed downloads / their
  total duration (request to completion), `health_check_success_rate` = checks
  that completed without finding damage / checks that completed or failed; each
  beside its sample count, null only when there is no sample (`_query_operations`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable

from mavail.core.errors import InvalidParams, ModelNotFound
from mavail.core.timeutil import Clock, iso, parse_iso

if TYPE_CHECKING:
    from mavail.core.ports import CatalogView, PresenceView, Settings, Spawner, StatusSink, StatusView
    from mavail.core.state import Database

log = logging.getLogger("mavail.analytics")

DAY = 86400
HOUR = 3600
ALL = "*"  # the usage_daily row of every model together
PERIOD_DAYS = {"day": 1, "week": 7, "month": 30, "year": 365}
MAX_RANGE_DAYS = 3660
MAX_PARAMS_BYTES = 16 * 1024
FUTURE_SLACK_S = 300.0
SERIES_DAYS = 30
MAX_BATCH_EVENTS = 1000
HOURS = tuple(range(24))
_HCOLS = [f"h{h:02d}" for h in HOURS]
# figures kept per (model, day): uses, successes, time_sum, requests, h00..h23
_NVALS = 4 + 24
_DAILY_COLS = ["uses", "successes", "time_sum", "requests", *_HCOLS]
_CUM_COLS = ["c_" + c for c in _DAILY_COLS]


def utc_day(ts: float) -> int:
    """The UTC day number of epoch seconds `ts` (days since 1970-01-01)."""
    return int(ts // DAY)


def day_str(day: int) -> str:
    """`YYYY-MM-DD` of a UTC day number."""
    return datetime.fromtimestamp(day * DAY, tz=timezone.utc).strftime("%Y-%m-%d")


@dataclass
class ModelUsage:
    """The in-memory all-time summary of one model, kept current on every record."""

    uses: int = 0
    successes: int = 0
    time_sum: float = 0.0
    requests: int = 0
    last_used: float | None = None
    last_requested: float | None = None
    daily: dict[int, int] = field(default_factory=dict)  # recent UTC day -> uses

    @property
    def last_activity(self) -> float | None:
        """The later of the last use and the last request."""
        vals = [v for v in (self.last_used, self.last_requested) if v is not None]
        return max(vals) if vals else None

    def uses_since(self, first_day: int) -> int:
        """Uses on days >= `first_day` (within the kept recent window)."""
        return sum(n for d, n in self.daily.items() if d >= first_day)


@dataclass(frozen=True)
class Range:
    """A time range [start, end) in epoch seconds, and how it was asked for."""

    start: float
    end: float
    period: str | None

    @property
    def days(self) -> float:
        """Length in days (fractional for ranges that do not fall on midnight)."""
        return (self.end - self.start) / DAY

    def to_dict(self) -> dict[str, Any]:
        """The range as reported in results."""
        return {"period": self.period, "start": iso(self.start), "end": iso(self.end), "days": round(self.days, 6)}


def _parse_time(text: str, field_name: str) -> tuple[float, bool]:
    """Epoch seconds of an ISO date or date-time, and whether it was a plain date."""
    if not isinstance(text, str):
        raise InvalidParams(f"{field_name} must be an ISO-8601 date or date-time", field=field_name)
    date_only = bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()))
    try:
        return parse_iso(text), date_only
    except ValueError:
        raise InvalidParams(f"{field_name} must be an ISO-8601 date or date-time", field=field_name, value=text[:64]) from None


def resolve_range(now: float, period: str | None, start_date: str | None, end_date: str | None) -> Range:
    """The range of a usage query; see the module docstring for the rules."""
    if period is not None and period not in PERIOD_DAYS:
        raise InvalidParams(f"period must be one of {', '.join(PERIOD_DAYS)}", field="period")
    n = PERIOD_DAYS[period or "week"]
    tomorrow = (utc_day(now) + 1) * DAY
    if start_date is None and end_date is None:
        return Range(tomorrow - n * DAY, tomorrow, period or "week")
    if end_date is not None:
        end, date_only = _parse_time(end_date, "end_date")
        if date_only:
            end += DAY
    else:
        end = float(tomorrow)
    if start_date is not None:
        start, _ = _parse_time(start_date, "start_date")
    else:
        start = end - n * DAY
    if start >= end:
        raise InvalidParams("start_date must be before end_date", field="start_date", start=iso(start), end=iso(end))
    if end - start > MAX_RANGE_DAYS * DAY:
        raise InvalidParams(f"a range spans at most {MAX_RANGE_DAYS} days", field="start_date")
    return Range(start, end, None)


class _Acc:
    """Figures being added up for one model: totals, per-hour uses and per-day series."""

    __slots__ = ("uses", "successes", "time_sum", "requests", "hours", "days")

    def __init__(self) -> None:
        self.uses = 0
        self.successes = 0
        self.time_sum = 0.0
        self.requests = 0
        self.hours = [0] * 24
        self.days: dict[int, list[float]] = {}  # day -> [uses, successes, time_sum]

    def add_totals(self, uses: int, successes: int, time_sum: float, requests: int, hours: Iterable[int]) -> None:
        self.uses += uses
        self.successes += successes
        self.time_sum += time_sum
        self.requests += requests
        for i, h in enumerate(hours):
            self.hours[i] += h

    def add_day(self, day: int, uses: int, successes: int, time_sum: float) -> None:
        d = self.days.setdefault(day, [0, 0, 0.0])
        d[0] += uses
        d[1] += successes
        d[2] += time_sum


def _series(acc: _Acc, first_day: int, last_day: int) -> list[dict[str, Any]]:
    """Dense `{date, uses, avg_time, success_rate}` for every day of [first_day, last_day]."""
    out = []
    for d in range(first_day, last_day + 1):
        u, s, t = acc.days.get(d, (0, 0, 0.0))
        out.append({"date": day_str(d), "uses": int(u), "avg_time": (t / s) if s else None,
                    "success_rate": (s / u) if u else None})
    return out


def _peak_hours(hours: list[int], n: int = 5) -> list[int]:
    ranked = sorted((h for h in HOURS if hours[h] > 0), key=lambda h: (-hours[h], h))
    return ranked[:n]


@dataclass(frozen=True)
class Recorded:
    """One generation accepted by `Analytics.record`: its model and the time it was recorded at (ISO-8601 UTC)."""

    model_id: str
    recorded_at: str | None
    stored: bool = True  # False while analytics.enabled is off: validated, then dropped


class Analytics:
    """Records usage, answers the analytics.* queries and provides the usage status fields.

    It reports every model whose usage fields changed through the status sink:
    on each recorded generation or request, for every used model when the UTC
    day turns (usage_frequency counts whole days; checked every `day_check_s`
    against the injected clock, so a clock that jumps is seen too) and when
    `analytics.frequency_window_days` changes.
    """

    def __init__(self, settings: "Settings", clock: Clock, db: "Database", catalog: "CatalogView", presence: "PresenceView",
                 status: "StatusView", status_sink: "StatusSink", tasks: "Spawner", day_check_s: float = 1.0) -> None:
        self._settings = settings
        self._clock = clock
        self._db = db
        self._catalog = catalog
        self._presence = presence
        self._status = status
        self._sink = status_sink
        self._tasks = tasks
        self._day_check_s = day_check_s
        self._buf: list[tuple[Any, ...]] = []
        self._queued = 0  # events accepted so far
        self._flushed = 0  # events written so far
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._summary: dict[str, ModelUsage] = {}
        self._rollup = RollupCache()  # used by the database's writer thread only
        self._iso_cache: tuple[int, str | None] = (-1, None)
        self.flushes = 0
        self.write_errors = 0

    # --- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        """Load the per-model summary, then start the writer task and the day watch."""
        await self._load_summary()
        self._sink(list(self._summary))  # statuses composed before the summary was loaded lack its fields
        self._tasks.spawn(self._flush_loop(), name="analytics-flush")
        self._tasks.spawn(self._day_loop(), name="analytics-day")
        self._tasks.on_stop(self.flush)
        self._settings.on_change(self._on_config)

    def _window(self) -> int:
        return int(self._settings.get("analytics.frequency_window_days"))

    def _first_day(self) -> int:
        """The first UTC day of the usage_frequency window."""
        return utc_day(self._clock.time()) - self._window() + 1

    def _on_config(self, changed: dict[str, Any]) -> None:
        if "analytics.frequency_window_days" in changed:
            self._sink(list(self._summary))
            self._tasks.spawn(self._reload_daily(), name="analytics-window")

    async def _reload_daily(self) -> None:
        """Read the recent per-day uses again for the current window (a longer window needs older days)."""
        async with self._flush_lock:  # no batch in flight: memory = the database + what is still buffered
            first_day = self._first_day()
            daily: dict[str, dict[int, int]] = await self._db.read(lambda conn: _read_daily(conn, first_day))
            for ev in self._buf:
                if ev[2] == 0 and utc_day(ev[1]) >= first_day:
                    d = daily.setdefault(ev[0], {})
                    d[utc_day(ev[1])] = d.get(utc_day(ev[1]), 0) + 1
            for mid in daily:
                self._summary.setdefault(mid, ModelUsage())
            for mid, s in self._summary.items():
                s.daily = daily.get(mid, {})
        self._sink(list(self._summary))

    async def _day_loop(self) -> None:
        """Report every used model when the UTC day turns: usage_frequency moves with the window."""
        day = utc_day(self._clock.time())
        while True:
            now = self._clock.time()
            await asyncio.sleep(max(0.001, min(self._day_check_s, (utc_day(now) + 1) * DAY - now)))
            today = utc_day(self._clock.time())
            if today != day:
                day = today
                self._sink(list(self._summary))

    async def _load_summary(self) -> None:
        first_day = self._first_day()

        def q(conn: sqlite3.Connection) -> dict[str, ModelUsage]:
            out: dict[str, ModelUsage] = {}
            for r in conn.execute("SELECT model_id, uses, successes, time_sum, requests, last_used_ts, last_requested_ts FROM usage_models"):
                out[r[0]] = ModelUsage(uses=r[1], successes=r[2], time_sum=r[3], requests=r[4], last_used=r[5], last_requested=r[6])
            for mid, days in _read_daily(conn, first_day).items():
                out.setdefault(mid, ModelUsage()).daily = days
            return out

        self._summary = await self._db.read(q)

    # --- recording ---------------------------------------------------------
    def _check_event(self, model_id: Any, generation_time_s: Any, success: Any, parameters: Any, vram_peak_mb: Any,
                     timestamp: Any, now: float, prefix: str = "") -> tuple[Any, ...]:
        if not isinstance(model_id, str):
            raise InvalidParams(f"{prefix}model_id must be a string", field=prefix + "model_id")
        self._catalog.spec(model_id)  # ModelNotFound
        if isinstance(generation_time_s, bool) or not isinstance(generation_time_s, (int, float)) or not math.isfinite(generation_time_s) \
                or not 0 <= generation_time_s <= 7 * DAY:
            raise InvalidParams(f"{prefix}generation_time_s must be a number of seconds from 0 to {7 * DAY}", field=prefix + "generation_time_s")
        if not isinstance(success, bool):
            raise InvalidParams(f"{prefix}success must be a boolean", field=prefix + "success")
        if vram_peak_mb is not None and (isinstance(vram_peak_mb, bool) or not isinstance(vram_peak_mb, (int, float))
                                         or not math.isfinite(vram_peak_mb) or not 0 <= vram_peak_mb <= 1e7):
            raise InvalidParams(f"{prefix}vram_peak_mb must be a non-negative number of MiB", field=prefix + "vram_peak_mb")
        params_json = None
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise InvalidParams(f"{prefix}parameters must be an object", field=prefix + "parameters")
            params_json = json.dumps(parameters, separators=(",", ":"), allow_nan=False)
            if len(params_json) > MAX_PARAMS_BYTES:
                raise InvalidParams(f"{prefix}parameters must be at most {MAX_PARAMS_BYTES} bytes as JSON", field=prefix + "parameters")
        ts = now
        if timestamp is not None:
            if not isinstance(timestamp, str):
                raise InvalidParams(f"{prefix}timestamp must be an ISO-8601 date-time", field=prefix + "timestamp")
            ts, _ = _parse_time(timestamp, prefix + "timestamp")
            if ts > now + FUTURE_SLACK_S or ts < 946684800:  # 2000-01-01
                raise InvalidParams(f"{prefix}timestamp must be after 2000-01-01 and not in the future", field=prefix + "timestamp")
        return (model_id, ts, 0, float(generation_time_s), 1 if success else 0,
                None if vram_peak_mb is None else float(vram_peak_mb), params_json)

    def _accept(self, events: list[tuple[Any, ...]]) -> None:
        """Count the events in the summary, buffer them for the writer, and report their models' new usage fields."""
        window = self._window()
        first_day = utc_day(self._clock.time()) - window + 1
        for ev in events:
            mid, ts, kind = ev[0], ev[1], ev[2]
            s = self._summary.get(mid)
            if s is None:
                s = self._summary[mid] = ModelUsage()
            if kind == 0:
                s.uses += 1
                if ev[4]:
                    s.successes += 1
                    s.time_sum += ev[3]
                s.last_used = ts if s.last_used is None else max(s.last_used, ts)
                d = utc_day(ts)
                if d >= first_day:
                    s.daily[d] = s.daily.get(d, 0) + 1
                    if len(s.daily) > window + 2:
                        for old in [k for k in s.daily if k < first_day]:
                            del s.daily[old]
            else:
                s.requests += 1
                s.last_requested = ts if s.last_requested is None else max(s.last_requested, ts)
        self._buf.extend(events)
        self._queued += len(events)
        self._wake.set()
        self._sink([events[0][0]] if len(events) == 1 else list(dict.fromkeys(ev[0] for ev in events)))

    async def _backpressure(self) -> None:
        if len(self._buf) >= int(self._settings.get("analytics.max_buffered_events")):
            await self.flush()

    def _enabled(self) -> bool:
        return bool(self._settings.get("analytics.enabled"))

    async def record(self, model_id: Any, generation_time_s: Any, success: Any, parameters: Any = None,
                     vram_peak_mb: Any = None, timestamp: Any = None) -> Recorded:
        """Validate and buffer one generation; it is in every figure at once and on disk within a flush."""
        now = self._clock.time()
        ev = self._check_event(model_id, generation_time_s, success, parameters, vram_peak_mb, timestamp, now)
        if not self._enabled():
            return Recorded(model_id, None, stored=False)
        await self._backpressure()
        self._accept([ev])
        sec = int(ev[1])
        if self._iso_cache[0] != sec:  # formatting a time costs more than recording the event
            self._iso_cache = (sec, iso(sec))
        return Recorded(model_id, self._iso_cache[1])

    async def record_many(self, events: list[Any]) -> int:
        """Validate every event first, then buffer them all (none when any is invalid); return how many were recorded."""
        if len(events) > MAX_BATCH_EVENTS:
            raise InvalidParams(f"events holds at most {MAX_BATCH_EVENTS} events", field="events", size=len(events))
        now = self._clock.time()
        checked = []
        for i, e in enumerate(events):
            if not isinstance(e, dict):
                raise InvalidParams(f"events[{i}] must be an object", field=f"events[{i}]")
            unknown = set(e) - {"model_id", "generation_time_s", "success", "parameters", "vram_peak_mb", "timestamp"}
            if unknown:
                raise InvalidParams(f"events[{i}] has unknown field(s) {', '.join(sorted(unknown))}", field=f"events[{i}]")
            checked.append(self._check_event(e.get("model_id"), e.get("generation_time_s"), e.get("success"), e.get("parameters"),
                                             e.get("vram_peak_mb"), e.get("timestamp"), now, prefix=f"events[{i}]."))
        if not self._enabled():
            return 0
        await self._backpressure()
        if checked:
            self._accept(checked)
        return len(checked)

    def record_request(self, model_id: str) -> None:
        """Count one `models.request` for `model_id` (called whether or not the model is ready; not while analytics is off)."""
        if not self._enabled():
            return
        self._accept([(model_id, self._clock.time(), 1, None, None, None, None)])

    # --- writing -----------------------------------------------------------
    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            delay = float(self._settings.get("analytics.flush_interval_ms")) / 1000.0
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await self._flush_once()
            except Exception:
                self.write_errors += 1
                log.exception("writing usage events failed; kept in memory for the next flush")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def flush(self) -> None:
        """Write every event accepted so far (returns at once when there are none)."""
        target = self._queued
        while self._flushed < target:
            await self._flush_once()

    async def _flush_once(self) -> None:
        async with self._flush_lock:
            if not self._buf:
                return
            batch, self._buf = self._buf, []
            upto = self._queued
            try:
                await self._db.write(lambda conn: _write_batch(conn, batch, self._rollup))
            except asyncio.CancelledError:
                raise  # the writer thread still commits the batch: queueing it again would count it twice
            except BaseException:
                self._rollup.clear()  # the transaction rolled back: forget what it claimed
                self._buf[:0] = batch
                raise
            self._flushed = upto
            self.flushes += 1

    # --- status fields -----------------------------------------------------
    def model_fields(self, model_id: str) -> dict[str, Any]:
        """usage_frequency (uses a day over analytics.frequency_window_days), last_used, average_generation_time."""
        s = self._summary.get(model_id)
        if s is None:
            return {}
        window = self._window()
        first_day = utc_day(self._clock.time()) - window + 1
        return {
            "usage_frequency": s.uses_since(first_day) / window,
            "last_used": iso(s.last_used),
            "average_generation_time": (s.time_sum / s.successes) if s.successes else None,
            "total_uses": s.uses,
            "total_requests": s.requests,
            "last_requested": iso(s.last_requested),
        }

    def summary_of(self, model_id: str) -> ModelUsage | None:
        """The in-memory all-time summary of a model (None when never used or requested)."""
        return self._summary.get(model_id)

    def activity_of(self, model_id: str) -> tuple[float | None, int]:
        """(the last use or request, the number of uses) of a model; (None, 0) when never used or requested."""
        s = self._summary.get(model_id)
        return (None, 0) if s is None else (s.last_activity, s.uses)

    def usage_frequency(self, model_id: str) -> float:
        """Uses per day over the frequency window."""
        s = self._summary.get(model_id)
        if s is None:
            return 0.0
        window = self._window()
        return s.uses_since(utc_day(self._clock.time()) - window + 1) / window

    async def uses_since(self, since_ts: float) -> dict[str, int]:
        """Uses per model since `since_ts` (whole UTC days from the rollup)."""
        await self.flush()
        d0 = utc_day(since_ts)

        def q(conn: sqlite3.Connection) -> dict[str, int]:
            seek = "(SELECT day FROM usage_daily WHERE model_id = m.model_id AND day < ? ORDER BY day DESC LIMIT 1)"
            return {r[0]: r[1] for r in conn.execute(
                f"""SELECT m.model_id, hi.c_uses - COALESCE(lo.c_uses, 0) FROM usage_models m
                    JOIN usage_daily hi ON hi.model_id = m.model_id AND hi.day = {seek}
                    LEFT JOIN usage_daily lo ON lo.model_id = m.model_id AND lo.day = {seek}""", (2**31, d0))}

        return await self._db.read(q)

    async def generation_samples(self, model_id: str, limit: int = 500) -> list[tuple[float, float, bool]]:
        """The model's latest `limit` generations, newest first, as (ts, generation_time_s, success).

        Requests are not generations and are left out. Flushes the write buffer first, as every query does.
        """
        await self.flush()

        def q(conn: sqlite3.Connection) -> list[tuple[float, float, bool]]:
            return [(r[0], r[1], bool(r[2])) for r in conn.execute(
                "SELECT ts, generation_time_s, success FROM usage_events WHERE model_id = ? AND kind = 0 "
                "AND generation_time_s IS NOT NULL ORDER BY ts DESC LIMIT ?", (model_id, limit))]

        return await self._db.read(q)

    # --- analytics.usage ---------------------------------------------------
    async def usage(self, model_id: str | None = None, period: str | None = None, start_date: str | None = None,
                    end_date: str | None = None, include_series: bool | None = None) -> dict[str, Any]:
        """Usage figures for one model or every model used in the range.

        `include_series`: None (default) gives the summary's daily series and,
        for one model, its `last_30_days_usage`; True adds every model's
        `last_30_days_usage` to an all-models answer; False leaves out all series.
        """
        rng = resolve_range(self._clock.time(), period, start_date, end_date)
        per_model_series = include_series is True or (include_series is None and model_id is not None)
        include_series = include_series is not False
        if model_id is not None and model_id not in self._catalog.models and model_id not in self._summary:
            raise ModelNotFound(f"model {model_id!r} is not in the catalog", model_id=model_id)
        await self.flush()
        accs, scope = await self._db.read(lambda conn: _query_usage(conn, rng, model_id, include_series, per_model_series))
        first_day, last_day = utc_day(rng.start), utc_day(rng.end - 1e-6)
        series_first = max(first_day, last_day - SERIES_DAYS + 1)
        models: dict[str, Any] = {}
        for mid in sorted(accs):
            a = accs[mid]
            if mid != model_id and a.uses == 0 and a.requests == 0:
                continue
            entry = {
                "model_id": mid,
                "total_uses": a.uses,
                "successful_uses": a.successes,
                "failed_uses": a.uses - a.successes,
                "requests": a.requests,
                "uses_per_day": a.uses / rng.days,
                "average_generation_time": (a.time_sum / a.successes) if a.successes else None,
                "success_rate": (a.successes / a.uses) if a.uses else None,
                "peak_usage_hours": _peak_hours(a.hours),
                "hourly_usage": list(a.hours),
            }
            if per_model_series:
                entry["last_30_days_usage"] = _series(a, series_first, last_day)
            models[mid] = entry
        if model_id is not None and model_id not in models:
            a = _Acc()
            models[model_id] = {"model_id": model_id, "total_uses": 0, "successful_uses": 0, "failed_uses": 0, "requests": 0,
                                "uses_per_day": 0.0, "average_generation_time": None, "success_rate": None,
                                "peak_usage_hours": [], "hourly_usage": [0] * 24,
                                **({"last_30_days_usage": _series(a, series_first, last_day)} if per_model_series else {})}
        used = [m for m in models.values() if m["total_uses"] > 0]
        ranked = sorted(used, key=lambda m: (-m["total_uses"], m["model_id"]))
        total = sum(m["total_uses"] for m in used)
        succ = sum(m["successful_uses"] for m in used)
        summary = {
            "total_generations": total,
            "successful_generations": succ,
            "total_requests": sum(m["requests"] for m in models.values()),
            "total_models_used": len(used),
            "average_success_rate": (sum(m["success_rate"] for m in used) / len(used)) if used else None,
            "overall_success_rate": (succ / total) if total else None,
            "average_generation_time": (scope.time_sum / scope.successes) if scope.successes else None,
            "uses_per_day": total / rng.days,
            "most_used_model": ranked[0]["model_id"] if ranked else None,
            "least_used_model": ranked[-1]["model_id"] if ranked else None,
            "peak_usage_hours": _peak_hours(scope.hours),
            "daily_usage": _series(scope, first_day, last_day) if include_series else None,
        }
        return {"models": models, "summary": summary, "range": rng.to_dict(), "model_id": model_id}

    # --- analytics.performance ---------------------------------------------
    async def performance(self) -> dict[str, Any]:
        """Per-model scores now and over 7 and 30 days, a trend by `analytics.trend_threshold`, issues and advice.

        A window's score is success_rate x speed, speed = min(1, 30-day average
        time / the window's average time): 1.0 is "every generation succeeded
        at the model's usual speed". The current window is the last 24 hours.
        The trend compares the current score with the mean of the 7- and 30-day
        scores: at least `analytics.trend_threshold` above is improving, as much
        below is degrading, else stable (also when there are fewer than
        `analytics.trend_min_events` generations in the last 24 hours or 30 days).

        The download and health figures of `system_performance` are read from
        what those services record (see `_query_operations`); each comes with its
        sample count and is null only when that count is 0.
        """
        await self.flush()
        now = self._clock.time()
        today = utc_day(now)
        rows, ops = await self._db.read(lambda conn: (_query_performance(conn, now, today), _query_operations(conn)))
        tau = float(self._settings.get("analytics.trend_threshold"))
        min_events = int(self._settings.get("analytics.trend_min_events"))
        trends: dict[str, Any] = {}
        for mid, w in sorted(rows.items()):
            u30, s30, t30 = w["30d"]
            u7, s7, t7 = w["7d"]
            ucur, scur, tcur = w["24h"]
            avg30 = (t30 / s30) if s30 else None

            def score(u: int, s: int, t: float) -> float | None:
                if not u:
                    return None
                speed = 1.0
                if s and avg30:
                    speed = min(1.0, avg30 / (t / s)) if t > 0 else 1.0
                return (s / u) * speed

            sc30, sc7, sccur = score(u30, s30, t30), score(u7, s7, t7), score(ucur, scur, tcur)
            issues: list[str] = []
            recs: list[str] = []
            trend = "stable"
            current = sccur if sccur is not None else sc7
            if ucur >= min_events and u30 >= min_events and sccur is not None and sc30 is not None:
                ref = [x for x in (sc7, sc30) if x is not None]
                delta = sccur - sum(ref) / len(ref)
                if delta >= tau:
                    trend = "improving"
                elif delta <= -tau:
                    trend = "degrading"
            else:
                issues.append(f"too few generations to judge a trend (need {min_events} in the last 24 hours and in 30 days)")
            if u7 and s7 / u7 < 0.9:
                issues.append(f"success rate {100 * s7 / u7:.0f}% over the last 7 days")
                recs.append("Run a health check")
            if s7 and avg30 and (t7 / s7) > 1.5 * avg30:
                issues.append(f"generations {100 * ((t7 / s7) / avg30 - 1):.0f}% slower than the 30-day average")
            if trend == "degrading":
                recs.append("Performance is degrading: check the model's health and the GPU")
            update, corrupt = self._model_flags(mid)
            if update:
                recs.append("Consider updating to latest version")
            if corrupt:
                issues.append("corruption detected")
                recs.append("Repair the model")
            trends[mid] = {
                "current_score": current,
                "trend": trend,
                "last_7_days_avg": sc7,
                "last_30_days_avg": sc30,
                "uses_last_24h": ucur,
                "uses_last_7_days": u7,
                "uses_last_30_days": u30,
                "performance_issues": issues,
                "recommendations": recs,
            }
        scores = [t["current_score"] for t in trends.values() if t["current_score"] is not None]
        tot7 = sum(w["7d"][0] for w in rows.values())
        suc7 = sum(w["7d"][1] for w in rows.values())
        system = {
            "overall_score": (sum(scores) / len(scores)) if scores else None,
            "generation_success_rate": (suc7 / tot7) if tot7 else None,
            **ops,
        }
        return {"performance_trends": trends, "system_performance": system,
                "thresholds": {"trend_threshold": tau, "trend_min_events": min_events}}

    def _model_flags(self, model_id: str) -> tuple[bool, bool]:
        """(update available, corruption detected) from the last scan and the model's composed status."""
        pres = self._presence.presence(model_id)
        if self._catalog.get(model_id) is None or pres is None:
            return False, False
        try:
            st = self._status.model_status(model_id)
        except Exception:  # a provider's fault must not fail the usage figures
            log.exception("composing the status of %s failed", model_id)
            return False, bool(pres.wrong_size_files)
        return bool(st.get("update_available")), bool(pres.wrong_size_files or st.get("corruption_detected"))

    # --- analytics.preload -------------------------------------------------
    async def preload(self) -> dict[str, Any]:
        """Models used or requested often in `analytics.preload_window_days` that are missing, outdated or unhealthy."""
        await self.flush()
        now = self._clock.time()
        window = float(self._settings.get("analytics.preload_window_days"))
        min_uses = int(self._settings.get("analytics.preload_min_uses"))
        since = now - window * DAY
        counts = await self._db.read(lambda conn: {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT model_id, SUM(kind = 0), SUM(kind = 1) FROM usage_events WHERE ts >= ? GROUP BY model_id", (since,))})
        out = []
        for mid, (uses, requests) in counts.items():
            n = (uses or 0) + (requests or 0)
            if n < min_uses or mid not in self._catalog.models:
                continue
            st = self._status.model_status(mid)
            status = st["availability_status"]
            what = f"used {uses} and requested {requests} times in the last {window:g} days"
            reason = None
            if status in ("downloading", "queued"):
                continue
            if status in ("missing", "failed", "paused", "unknown"):
                reason = f"{what}, but not installed ({status})"
                base = 0.6
            elif status == "corrupted" or st.get("corruption_detected"):
                reason = f"{what}, but corrupted"
                base = 0.6
            elif st.get("overall_health") == "corrupted":
                # "degraded" (never verified, changed since verified, slower) is the health tab's business, not a reason to fetch
                reason = f"{what}, but unhealthy"
                base = 0.5
            elif st.get("update_available"):
                reason = f"{what}, but outdated ({st.get('current_version')} installed, {st.get('latest_version')} available)"
                base = 0.4
            if reason is None:
                continue
            confidence = min(0.95, base + 0.35 * (1 - math.exp(-n / (3 * min_uses))))
            out.append({"model_id": mid, "reason": reason, "confidence": round(confidence, 3), "uses": uses or 0,
                        "requests": requests or 0, "availability_status": status})
        out.sort(key=lambda s: (-s["confidence"], -(s["uses"] + s["requests"]), s["model_id"]))
        return {"suggestions": out, "window_days": window, "min_uses": min_uses}


# --- SQL (run in the database's threads) -------------------------------------------
def _read_daily(conn: sqlite3.Connection, first_day: int) -> dict[str, dict[int, int]]:
    """Uses per model and UTC day from `first_day` on (days with uses only)."""
    out: dict[str, dict[int, int]] = {}
    for r in conn.execute("SELECT d.model_id, d.day, d.uses FROM usage_models m JOIN usage_daily d "
                          "ON d.model_id = m.model_id AND d.day >= ? WHERE d.uses > 0", (first_day,)):
        out.setdefault(r[0], {})[r[1]] = r[2]
    return out


class RollupCache:
    """The latest usage_daily row of each model, as the writer thread last wrote it.

    Used by the database's writer thread only. An event on a model's latest day
    (or a later one) then costs one row replace computed here, with no read; a
    back-dated event takes the SQL path and drops the model's entry.
    """

    def __init__(self) -> None:
        self.latest: dict[str, tuple[int, list[float] | None]] = {}

    def get(self, conn: sqlite3.Connection, model_id: str) -> tuple[int, list[float] | None]:
        """(day, figures) of the model's latest usage_daily row, read once and then kept; (-1, None) when it has none."""
        got = self.latest.get(model_id)
        if got is None:
            r = conn.execute(f"SELECT day, {', '.join(_DAILY_COLS + _CUM_COLS)} FROM usage_daily WHERE model_id = ? "
                             "ORDER BY day DESC LIMIT 1", (model_id,)).fetchone()
            got = (r[0], list(r[1:])) if r is not None else (-1, None)
            self.latest[model_id] = got
        return got

    def clear(self) -> None:
        """Forget every kept row (after a rolled-back write)."""
        self.latest.clear()


_REPLACE = (f"INSERT OR REPLACE INTO usage_daily (model_id, day, {', '.join(_DAILY_COLS + _CUM_COLS)}) "
            f"VALUES (?, ?, {', '.join('?' * (2 * _NVALS))})")
_SET_DAILY = ", ".join(f"{c} = {c} + ?" for c in _DAILY_COLS + _CUM_COLS)
_SET_CUM = ", ".join(f"{c} = {c} + ?" for c in _CUM_COLS)
_INSERT = f"INSERT INTO usage_daily (model_id, day, {', '.join(_DAILY_COLS + _CUM_COLS)}) VALUES (?, ?, {', '.join('?' * (2 * _NVALS))})"
_PREV = f"SELECT {', '.join(_CUM_COLS)} FROM usage_daily WHERE model_id = ? AND day < ? ORDER BY day DESC LIMIT 1"


def _write_batch(conn: sqlite3.Connection, batch: list[tuple[Any, ...]], cache: RollupCache) -> None:
    """Insert events, then fold them into usage_daily (day and running totals) and usage_models."""
    conn.executemany(
        "INSERT INTO usage_events (model_id, ts, kind, generation_time_s, success, vram_peak_mb, parameters) VALUES (?,?,?,?,?,?,?)", batch)
    # sparse deltas: column index -> amount (an event touches 3 or 4 of the 28 figures)
    deltas: dict[tuple[str, int], dict[int, float]] = {}
    per_model: dict[str, list[Any]] = {}
    for mid, ts, kind, gt, ok, _vram, _p in batch:
        day = int(ts // DAY)
        hour_col = 4 + int(ts // HOUR) % 24
        for key in ((mid, day), (ALL, day)):
            v = deltas.get(key)
            if v is None:
                v = deltas[key] = {}
            if kind == 0:
                v[0] = v.get(0, 0) + 1
                if ok:
                    v[1] = v.get(1, 0) + 1
                    v[2] = v.get(2, 0.0) + gt
                v[hour_col] = v.get(hour_col, 0) + 1
            else:
                v[3] = v.get(3, 0) + 1
        m = per_model.get(mid)
        if m is None:
            m = per_model[mid] = [0, 0, 0.0, 0, ts, None, None]
        if ts < m[4]:
            m[4] = ts
        if kind == 0:
            m[0] += 1
            if ok:
                m[1] += 1
                m[2] += gt
            m[5] = ts if m[5] is None else max(m[5], ts)
        else:
            m[3] += 1
            m[6] = ts if m[6] is None else max(m[6], ts)
    rows = []
    late: list[tuple[str, int, list[float]]] = []
    zeros = [0] * _NVALS
    for (mid, day), sv in deltas.items():
        lday, row = cache.get(conn, mid)
        if day > lday:  # a new latest day: running totals continue from the previous latest row
            new = zeros + (row[_NVALS:] if row is not None else zeros)
        elif day == lday and row is not None:
            new = list(row)
        else:
            v = list(zeros)
            for i, x in sv.items():
                v[i] = x
            late.append((mid, day, v))
            continue
        for i, x in sv.items():
            new[i] += x
            new[_NVALS + i] += x
        cache.latest[mid] = (day, new)
        rows.append((mid, day, *new))
    conn.executemany(_REPLACE, rows)
    for mid, day, v in sorted(late):
        # back-dated: update or insert that day, and move the running totals of every later day
        if conn.execute(f"UPDATE usage_daily SET {_SET_DAILY} WHERE model_id = ? AND day = ?", (*v, *v, mid, day)).rowcount == 0:
            base = conn.execute(_PREV, (mid, day)).fetchone()
            cum = [b + x for b, x in zip(base, v)] if base is not None else list(v)
            conn.execute(_INSERT, (mid, day, *v, *cum))
        conn.execute(f"UPDATE usage_daily SET {_SET_CUM} WHERE model_id = ? AND day > ?", (*v, mid, day))
        cache.latest.pop(mid, None)
    conn.executemany(
        """INSERT INTO usage_models (model_id, uses, successes, time_sum, requests, first_ts, last_used_ts, last_requested_ts)
           VALUES (?,?,?,?,?,?,?,?)
           ON CONFLICT (model_id) DO UPDATE SET
             uses = uses + excluded.uses, successes = successes + excluded.successes,
             time_sum = time_sum + excluded.time_sum, requests = requests + excluded.requests,
             first_ts = MIN(COALESCE(first_ts, excluded.first_ts), excluded.first_ts),
             last_used_ts = MAX(COALESCE(last_used_ts, excluded.last_used_ts), COALESCE(excluded.last_used_ts, last_used_ts)),
             last_requested_ts = MAX(COALESCE(last_requested_ts, excluded.last_requested_ts), COALESCE(excluded.last_requested_ts, last_requested_ts))""",
        [(mid, *m) for mid, m in per_model.items()])


def _query_usage(conn: sqlite3.Connection, rng: Range, model_id: str | None, include_series: bool,
                 per_model_series: bool) -> tuple[dict[str, _Acc], _Acc]:
    """Per-model accumulators and the scope's (every model, or the one) accumulator for `rng`."""
    accs: dict[str, _Acc] = defaultdict(_Acc)
    scope = _Acc()
    if model_id is not None:
        accs[model_id] = scope  # one model: its figures are the scope's
    scope_id = model_id if model_id is not None else ALL
    d0 = math.ceil(rng.start / DAY)  # first whole day
    d1 = math.floor(rng.end / DAY)  # first day not wholly inside
    last_day = utc_day(rng.end - 1e-6)
    series_first = max(utc_day(rng.start), last_day - SERIES_DAYS + 1)
    if d0 < d1:
        # whole days: running totals at the end minus running totals before the start
        diff = ", ".join(f"hi.{c} - COALESCE(lo.{c}, 0)" for c in _CUM_COLS)
        ids_sql = "SELECT ?" if model_id is not None else "SELECT model_id FROM usage_models UNION ALL SELECT ?"
        sql = f"""
            WITH ids(model_id) AS ({ids_sql})
            SELECT ids.model_id, {diff}
            FROM ids
            JOIN usage_daily hi ON hi.model_id = ids.model_id AND hi.day =
                 (SELECT day FROM usage_daily WHERE model_id = ids.model_id AND day < ? ORDER BY day DESC LIMIT 1)
            LEFT JOIN usage_daily lo ON lo.model_id = ids.model_id AND lo.day =
                 (SELECT day FROM usage_daily WHERE model_id = ids.model_id AND day < ? ORDER BY day DESC LIMIT 1)
        """
        for r in conn.execute(sql, (scope_id, d1, d0)):
            acc = scope if r[0] == scope_id else accs[r[0]]
            acc.add_totals(r[1], r[2], r[3], r[4], r[5:29])
        if include_series:
            # per-model series: the last 30 days of the range; the scope's: the whole range
            lo_m = max(series_first, d0)
            if model_id is None and per_model_series and lo_m < d1:
                for r in conn.execute("SELECT d.model_id, d.day, d.uses, d.successes, d.time_sum FROM usage_models m "
                                      "JOIN usage_daily d ON d.model_id = m.model_id AND d.day >= ? AND d.day < ?", (lo_m, d1)):
                    accs[r[0]].add_day(r[1], r[2], r[3], r[4])
            for r in conn.execute("SELECT day, uses, successes, time_sum FROM usage_daily WHERE model_id = ? AND day >= ? AND day < ?",
                                  (scope_id, d0, d1)):
                scope.add_day(r[0], r[1], r[2], r[3])
        edges = [(rng.start, d0 * DAY), (d1 * DAY, rng.end)]
    else:
        edges = [(rng.start, rng.end)]
    for lo, hi in edges:
        if hi <= lo:
            continue
        where = "ts >= ? AND ts < ?" + (" AND model_id = ?" if model_id is not None else "")
        args: tuple[Any, ...] = (lo, hi, model_id) if model_id is not None else (lo, hi)
        sql = f"""SELECT model_id, CAST(ts / {DAY} AS INTEGER) AS day, CAST(ts / {HOUR} AS INTEGER) % 24 AS hour,
                         SUM(kind = 0), SUM(kind = 0 AND success = 1), TOTAL(CASE WHEN kind = 0 AND success = 1 THEN generation_time_s END),
                         SUM(kind = 1)
                  FROM usage_events WHERE {where} GROUP BY model_id, day, hour"""
        for mid, day, hour, uses, succ, tsum, reqs in conn.execute(sql, args):
            hours = [0] * 24
            hours[hour] = uses
            targets = (scope,) if model_id is not None else (accs[mid], scope)
            for acc in targets:
                acc.add_totals(uses, succ, tsum, reqs, hours)
                if include_series and (acc is scope or (per_model_series and day >= series_first)):
                    acc.add_day(day, uses, succ, tsum)
    return dict(accs), scope


def _query_performance(conn: sqlite3.Connection, now: float, today: int) -> dict[str, dict[str, tuple[int, int, float]]]:
    """(uses, successes, time_sum) per model over the last 24 hours, 7 days and 30 days.

    The 7- and 30-day windows are differences of running totals (a few index
    seeks per model); the last 24 hours come from the raw events.
    """
    out: dict[str, dict[str, tuple[int, int, float]]] = {}
    seek = "(SELECT day FROM usage_daily WHERE model_id = m.model_id AND day < ? ORDER BY day DESC LIMIT 1)"
    sql = f"""
        SELECT m.model_id,
               hi.c_uses - COALESCE(a.c_uses, 0), hi.c_successes - COALESCE(a.c_successes, 0), hi.c_time_sum - COALESCE(a.c_time_sum, 0),
               hi.c_uses - COALESCE(b.c_uses, 0), hi.c_successes - COALESCE(b.c_successes, 0), hi.c_time_sum - COALESCE(b.c_time_sum, 0)
        FROM usage_models m
        JOIN usage_daily hi ON hi.model_id = m.model_id AND hi.day = {seek}
        LEFT JOIN usage_daily a ON a.model_id = m.model_id AND a.day = {seek}
        LEFT JOIN usage_daily b ON b.model_id = m.model_id AND b.day = {seek}
        WHERE m.last_used_ts >= ?
    """
    for mid, u30, s30, t30, u7, s7, t7 in conn.execute(sql, (today + 1, today - 29, today - 6, (today - 29) * DAY)):
        if u30 > 0:
            out[mid] = {"30d": (u30, s30, t30), "7d": (u7, s7, t7), "24h": (0, 0, 0.0)}
    for mid, u, s, t in conn.execute(
        """SELECT model_id, COUNT(*), SUM(success = 1), TOTAL(CASE WHEN success = 1 THEN generation_time_s END)
           FROM usage_events WHERE ts >= ? AND kind = 0 GROUP BY model_id""", (now - DAY,)):
        if mid in out:
            out[mid]["24h"] = (u, s, t)
    return out


def _query_operations(conn: sqlite3.Connection) -> dict[str, Any]:
    """Download and health-check figures from the `downloads` and `health_checks` tables (read only).

    - `download_success_rate` = completed / (completed + failed) over the latest
      download of each model (the `downloads` table keeps one per model);
      cancelled, paused and running downloads are not counted.
      `download_samples` = completed + failed.
    - `average_download_speed_mbps` = sum of the completed downloads' bytes /
      sum of their durations (completed_at - created_at), in MiB/s: an effective
      speed from the request to the last verified byte, queue waits and pauses
      included. `download_speed_samples` = completed downloads with a duration.
    - `health_check_success_rate` = passed / (completed + failed) over the
      recorded checks (the last 50 of each model; the stock-taking at start is
      not recorded): a check passes when it completed and found no critical
      issue (overall_health not corrupted); a check that failed to run counts
      against it; cancelled and interrupted checks measured nothing and are left
      out. `health_check_samples` = completed + failed; the counts of passed,
      problem-finding and failed checks are given too.
    Every rate is null exactly when its sample count is 0.
    """
    completed = failed = 0
    total_bytes = 0
    total_s = 0.0
    timed = 0
    for status, created, finished, size in conn.execute(
            "SELECT d.status, d.created_at, d.completed_at, (SELECT SUM(f.size) FROM download_files f WHERE f.model_id = d.model_id)"
            " FROM downloads d WHERE d.status IN ('completed', 'failed')"):
        if status == "failed":
            failed += 1
            continue
        completed += 1
        if finished is not None and size and finished > created:
            total_bytes += size
            total_s += finished - created
            timed += 1
    passed = problems = check_failed = 0
    for status, health, n in conn.execute(
            "SELECT status, json_extract(result, '$.overall_health'), COUNT(*) FROM health_checks"
            " WHERE status IN ('completed', 'failed') GROUP BY 1, 2"):
        if status == "failed":
            check_failed += n
        elif health == "corrupted":
            problems += n
        else:
            passed += n
    downloads = completed + failed
    checks = passed + problems + check_failed
    return {
        "download_success_rate": completed / downloads if downloads else None,
        "download_samples": downloads,
        "downloads_completed": completed,
        "downloads_failed": failed,
        "average_download_speed_mbps": total_bytes / total_s / (1024 * 1024) if timed and total_s > 0 else None,
        "download_speed_samples": timed,
        "health_check_success_rate": passed / checks if checks else None,
        "health_check_samples": checks,
        "health_checks_passed": passed,
        "health_checks_found_problems": problems,
        "health_checks_failed": check_failed,
    }
