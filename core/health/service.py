"""The health service: checks, repairs, scheduled maintenance, and the health fields of a model's status.

Every database access and every byte hashed happens in worker threads; the
event loop only orchestrates. State survives restarts in `health_checks` and
`health_repairs` (this service's tables) and in the installed-files record,
written through `core.health.checks` / `core.installed`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
from collections import OrderedDict
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from mavail.core import installed, safefs
from mavail.core.errors import Conflict, InvalidState, MavailError, NotFound, SourceUnavailable
from mavail.core.health import checks as ck
from mavail.core.history import HistoryEntry
from mavail.core.health import repair as rp
from mavail.core.health import scores
from mavail.core.health.checks import HealthChecks
from mavail.core.health.model import Context, Job, ModelHealth, new_id
from mavail.core.health.scan import WARNING, CheckCancelled, FileResult, Issue, ManifestFile
from mavail.core.paths import REDOWNLOAD_DIR, REPAIR_DIR, HomeLayout
from mavail.core.ports import BusyView, CatalogView, Emit, LeaseView, PresenceView, Settings, Spawner, StatusSink, TallySink
from mavail.core.state import Database
from mavail.core.tally import Tally
from mavail.core.timeutil import Clock, iso

__all__ = ["CheckAllSummary", "CheckOutcome", "HealthService", "RepairResult", "integrity_of", "status_of"]

log = logging.getLogger("mavail.health")

MIB = 1024 * 1024
CHECK_TYPES = ("quick", "full", "integrity", "performance")
REPAIR_TYPES = ("auto", "redownload", "integrity_fix")
KEEP_CHECKS_PER_MODEL = 50
BUSY_FOR_CHECK = ("downloading", "repairing", "updating")
PERFORMANCE_SAMPLES = 500

GenerationSamples = Callable[[str, int], Awaitable[list[tuple[float, float, bool]]]]
"""`generation_samples(model_id, limit)`: the model's latest generations as (timestamp, duration_s, success)."""

DownloadListener = Callable[[str, str, str], None]
"""`listener(model_id, version, status)`, called by downloads at every change of a download's status."""


@dataclass
class CheckOutcome:
    """What `check` answers: the check's id and status, its result once it ended, and whether it joined one running."""

    check_id: str
    status: str
    result: dict[str, Any] | None = None
    joined: bool = False


@dataclass
class CheckAllSummary:
    """What one quick pass over every model found."""

    checked: int
    skipped_busy: list[str]
    duration_s: float
    by_health: dict[str, int]
    corrupted: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"checked": self.checked, "skipped_busy": self.skipped_busy, "duration_s": self.duration_s, "by_health": self.by_health,
                "corrupted": self.corrupted}


@dataclass
class RepairResult:
    """What a repair did and how the model stands after its final check (`ok`: nothing is broken any more)."""

    ok: bool
    repair_id: str
    model_id: str
    version: str
    actions_taken: list[str]
    bytes_redownloaded: int
    files: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    overall_health: str
    integrity_score: float
    check_id: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the form stored with the repair and shown by `health.check_status`)."""
        return {"success": self.ok, "repair_id": self.repair_id, "model_id": self.model_id, "version": self.version,
                "actions_taken": self.actions_taken, "bytes_redownloaded": self.bytes_redownloaded, "files": self.files, "errors": self.errors,
                "overall_health": self.overall_health, "integrity_score": self.integrity_score, "check_id": self.check_id}


def integrity_of(mh: ModelHealth) -> float | None:
    """The model's integrity_score, or None where nothing of it was measured (see core.health.scores)."""
    return mh.integrity if scores.measured(mh.installed, mh.known, bool(mh.critical)) else None


def status_of(mh: ModelHealth) -> dict[str, Any]:
    """The per-model health block, with integrity_score None where it was not measured."""
    return {**mh.to_status(), "integrity_score": integrity_of(mh)}


def _phase(model_id: str) -> float:
    """A fixed fraction in [0, 1) per model, spreading scheduled checks over their interval."""
    return int(hashlib.sha256(model_id.encode()).hexdigest()[:8], 16) / 0x1_0000_0000


class HealthService:
    """Health checks, repairs, scheduled maintenance and the health fields of `models.status`.

    It is given narrow ports (see `core.ports`) and, for what it needs of other
    services, callables: `generation_samples` (analytics), `is_updating` (the
    update manager), `add_download_listener` (downloads) and `fetch_range`
    (how repairs fetch byte ranges); `tally` counts every check by type and
    outcome (the check that closes a repair too), repairs by outcome and the
    bytes repairs fetched.
    """

    def __init__(self, *, settings: Settings, clock: Clock, db: Database, layout: HomeLayout, catalog: CatalogView, presence: PresenceView,
                 status: StatusSink, emit: Emit, tasks: Spawner, leases: LeaseView, activity: BusyView, checks: HealthChecks,
                 generation_samples: GenerationSamples, is_updating: Callable[[str], bool],
                 add_download_listener: Callable[[DownloadListener], None], fetch_range: rp.FetchRange = rp.simple_fetch_range,
                 tally: TallySink | None = None) -> None:
        self._settings = settings
        self._tally = tally or Tally()  # health_checks (type, outcome), repairs (outcome), repair_bytes
        self._clock = clock
        self._db = db
        self._layout = layout
        self._catalog = catalog
        self._presence = presence
        self._status_changed = status
        self._emit = emit
        self._tasks = tasks
        self._leases = leases
        self._activity = activity
        self._checks = checks
        self._generation_samples = generation_samples
        self._is_updating = is_updating
        self._add_download_listener = add_download_listener
        self.fetch_range = fetch_range
        self._state: dict[str, ModelHealth] = {}
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._running_full: dict[str, Job] = {}
        self._rates: dict[str, float] = {}  # check id -> its own read budget, MiB/s (absent: health.max_read_mbps)
        self._verifies_sha256: dict[str, bool] = {}  # check id -> whether it proves whole-file sha256s
        self._started_at = clock.time()
        self._repair_failed_at: dict[str, float] = {}
        self._client: Any = None
        self._scheduler_lock = asyncio.Lock()

    # --- lifecycle -------------------------------------------------------------
    @property
    def repair_dir(self) -> Path:
        """Where repair journals live: `partial/.repair/` (a leading dot: no model id can take the name)."""
        return self._layout.partial_dir / REPAIR_DIR

    @property
    def redownload_dir(self) -> Path:
        """Where whole-file redownloads collect their data until it is verified: `partial/.redownload/`."""
        return self._layout.partial_dir / REDOWNLOAD_DIR

    async def start(self) -> None:
        """Load the last checks, finish or discard interrupted repairs, take stock, start the scheduler."""
        self._tasks.on_stop(self.stop)
        await self._load_state()
        await asyncio.to_thread(self._move_old_dirs)
        await self._recover()
        await self.check_all(trigger="startup", record=False)
        self._add_download_listener(self._on_download)
        self._tasks.spawn(self._scheduler(), name="health-scheduler")

    def _move_old_dirs(self) -> None:
        """Move the repair folders of earlier versions (`partial/repair/`, `partial/redownload/`) to their dotted names.

        Left alone when a catalog model has that id (the folder is then its partial data) or the new one exists.
        """
        home, partial = self._layout.home, self._layout.partial_dir
        for old, new in (("repair", REPAIR_DIR), ("redownload", REDOWNLOAD_DIR)):
            if old in self._catalog.models or not safefs.is_real_dir(home, partial / old) or safefs.exists(home, partial / new):
                continue
            try:
                safefs.rename(home, partial / old, partial / new)
                log.info("moved %s to %s", partial / old, partial / new)
            except OSError as exc:
                log.warning("cannot move %s to %s: %s", partial / old, partial / new, exc)

    async def stop(self) -> None:
        """Stop running checks (they record nothing) and close the HTTP client."""
        self._checks.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _on_download(self, model_id: str, version: str, status: str) -> None:
        if status == "completed":
            self._tasks.spawn(self._after_download(model_id, version), name=f"health-after-download-{model_id}")

    async def _after_download(self, model_id: str, version: str) -> None:
        self._repair_failed_at.pop(model_id, None)
        try:
            await self.check(model_id, "quick", trigger="download", wait=True)
        except MavailError:
            pass

    def http_client(self) -> Any:
        """One shared httpx client for repairs."""
        if self._client is None:
            import httpx  # only repairs need it: most engines never load it

            timeout = self._settings.get("downloads.connect_timeout_s")
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=timeout), follow_redirects=True)
        return self._client

    def forget(self, model_id: str) -> None:
        """Drop the model's health record (its files were removed)."""
        if self._state.pop(model_id, None) is not None:
            self._status_changed([model_id])

    # --- database ---------------------------------------------------------------
    async def _load_state(self) -> None:
        def q(conn: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            conn.execute("UPDATE health_checks SET status = 'interrupted' WHERE status = 'running'")
            conn.execute("UPDATE health_repairs SET status = 'interrupted' WHERE status = 'running'")
            latest = conn.execute(
                "SELECT model_id, version, check_id, check_type, finished_at, result FROM ("
                " SELECT *, ROW_NUMBER() OVER (PARTITION BY model_id ORDER BY finished_at DESC) AS rn FROM health_checks"
                " WHERE status = 'completed' AND result IS NOT NULL) WHERE rn = 1").fetchall()
            times = conn.execute("SELECT model_id, check_type, MAX(finished_at) FROM health_checks WHERE status = 'completed' GROUP BY model_id, check_type").fetchall()
            return latest, times

        latest, times = await self._db.write(q)
        for r in latest:
            try:
                mh = ModelHealth.from_record(r[0], r[1], json.loads(r[5]))
            except (ValueError, KeyError, TypeError):
                continue
            mh.last_check_at, mh.last_check_id, mh.last_check_type = r[4], r[2], r[3]
            self._state[r[0]] = mh
        for mid, ctype, at in times:
            mh = self._state.get(mid)
            if mh is None:
                continue
            if ctype == "quick":
                mh.last_quick_at = at
            elif ctype in ("full", "integrity"):
                mh.last_full_at = at
        if self._state:
            self._status_changed(list(self._state))

    async def contexts(self, model_ids: Sequence[str] | None = None, version: str | None = None) -> dict[str, Context]:
        """See `HealthChecks.contexts`."""
        return await self._checks.contexts(model_ids, version)

    async def context(self, model_id: str, version: str | None = None) -> Context:
        """See `HealthChecks.context`."""
        return await self._checks.context(model_id, version)

    # --- checks -------------------------------------------------------------------
    def _quick(self, ctx: Context) -> ck.CheckResult:
        prev = self._state.get(ctx.model_id)
        return self._checks.quick(ctx, prev.files if prev is not None and prev.version == ctx.version else None)

    def _installed(self, ctx: Context, files: dict[str, FileResult]) -> bool:
        return ctx.installed or any(f.state not in ("missing",) for f in files.values())

    async def check(self, model_id: str, check_type: str = "full", force: bool = False, trigger: str = "manual", wait: bool = True,
                    max_read_mbps: float | None = None, verify_sha256: bool = False) -> CheckOutcome:
        """Run (or join) a check; with `wait` return its result once it ended, else its id at once (status running).

        A full check reads within `health.max_read_mbps` only when scheduled; any other runs at
        full speed unless `max_read_mbps` is given (0 = none). A caller that joins a running
        scheduled check lifts its budget to the caller's own. With `verify_sha256` a full check
        also proves each file's whole-file sha256 (it then never joins a check that does not).
        """
        if check_type not in CHECK_TYPES:
            raise InvalidState(f"check_type must be one of {', '.join(CHECK_TYPES)}", field="check_type")
        self._catalog.spec(model_id)
        busy = self._activity.reasons(model_id) & set(BUSY_FOR_CHECK)
        if busy:
            raise Conflict(f"model {model_id!r} is {', '.join(sorted(busy))}: checks never run on files being written", model_id=model_id,
                           activity=sorted(busy))
        full = check_type in ("full", "integrity")
        job = self._running_full.get(model_id) if full else None
        while job is not None and verify_sha256 and not self._verifies_sha256.get(job.id):
            await job.done.wait()
            job = self._running_full.get(model_id)
        if job is not None and trigger != "scheduled" and job.trigger == "scheduled":
            self._rates[job.id] = max_read_mbps or 0.0
        if job is None:
            job = Job(new_id("check"), "check", model_id, check_type, trigger, self._clock.time())
            self._remember(job)
            if full:
                self._running_full[model_id] = job
                rate = max_read_mbps if max_read_mbps is not None else None if trigger == "scheduled" else 0.0
                if rate is not None:
                    self._rates[job.id] = rate
                self._verifies_sha256[job.id] = verify_sha256
            task = self._tasks.spawn(self._run_check(job, force), name=f"health-check-{job.id}")
            if not wait:
                return CheckOutcome(job.id, "running")
            await asyncio.shield(task)
            joined = False
        elif not wait:
            return CheckOutcome(job.id, "running", joined=True)
        else:
            joined = True
        await job.done.wait()
        if job.status == "failed":
            raise InvalidState(f"check {job.id} failed", check_id=job.id)
        return CheckOutcome(job.id, job.status, job.result, joined)

    def _remember(self, job: Job) -> None:
        self._jobs[job.id] = job
        while len(self._jobs) > 500:
            self._jobs.popitem(last=False)

    def job(self, job_id: str) -> Job:
        """A check or repair by id (NotFound when unknown)."""
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no check or repair {job_id!r}", field="check_id")
        return job

    def _budget(self, job: Job) -> Any:
        """The read budget of a full check: its own rate when it has one (read live: a joining caller may lift it),
        else `health.max_read_mbps`."""
        setting = self._settings

        def rate() -> float:
            own = self._rates.get(job.id)
            return float(own) if own is not None else float(setting.get("health.max_read_mbps"))

        return self._checks.budget(rate)

    async def _run_check(self, job: Job, force: bool) -> None:
        mid = job.model_id
        try:
            if job.type in ("full", "integrity"):  # long: visible as running (and as interrupted after a crash)
                await self._db.write(lambda c: c.execute(
                    "INSERT INTO health_checks (check_id, model_id, version, check_type, trigger, status, started_at) VALUES (?, ?, ?, ?, ?, 'running', ?)",
                    (job.id, mid, self._presence.version_in_use(mid), job.type, job.trigger, job.started_at)))
            ctx = await self.context(mid)
            t0 = self._clock.monotonic()
            with self._activity.hold(mid, "checking"):
                if job.type in ("full", "integrity"):
                    budget = self._budget(job)
                    job.bytes_read = lambda: budget.bytes_read
                    files, extra = await asyncio.to_thread(self._checks.full, ctx, budget, self._verifies_sha256.get(job.id, False))
                else:
                    files, extra = await asyncio.to_thread(self._quick, ctx)
                perf = await self._performance(mid)
            elapsed = self._clock.monotonic() - t0
            mh = await self._record(job, ctx, files, extra, perf)
            hashed = sum(f.hashed_bytes for f in files.values())
            job.result = {**status_of(mh), "check_type": job.type, "duration_s": round(elapsed, 4), "bytes_hashed": hashed}
            if job.type in ("full", "integrity"):
                job.result["proofs"] = sorted({f.proof for f in files.values() if f.proof})
            job.status = "completed"
            log.info("check %s %s %s (%s): %s, integrity %.4f, %d issue(s), %.1f MiB hashed in %.2fs", job.id, job.type, mid, job.trigger,
                     mh.overall, mh.integrity, len(mh.issues), hashed / MIB, elapsed)
        except CheckCancelled:
            job.status = "cancelled"
        except MavailError as exc:
            job.status = "failed"
            job.result = {"error": {"code": exc.NAME, "message": exc.message}}
            log.warning("check %s of %s failed: %s", job.id, mid, exc.message)
        except Exception:
            job.status = "failed"
            job.result = {"error": {"code": "INTERNAL_ERROR", "message": "internal error"}}
            log.exception("check %s of %s failed", job.id, mid)
        finally:
            job.finished_at = self._clock.time()
            if self._running_full.get(mid) is job:
                del self._running_full[mid]
            self._rates.pop(job.id, None)
            self._verifies_sha256.pop(job.id, None)
            if job.status != "completed":
                self._tally.add("health_checks", (job.type, job.status))
                try:
                    await self._db.write(lambda c: c.execute("UPDATE health_checks SET status = ?, finished_at = ? WHERE check_id = ?",
                                                                  (job.status, job.finished_at, job.id)))
                except Exception:
                    log.exception("could not record the end of check %s", job.id)
            job.done.set()

    async def _performance(self, model_id: str) -> scores.Performance | None:
        cfg = self._settings
        try:
            rows = await self._generation_samples(model_id, PERFORMANCE_SAMPLES)
            samples = [scores.Sample(ts, duration_s, success) for ts, duration_s, success in rows]
        except Exception:
            log.exception("generation samples of %s could not be read", model_id)
            return None
        if not samples:
            return None
        return scores.performance(samples, cfg.get("health.performance_degraded_ratio"), cfg.get("health.performance_critical_ratio"),
                                  cfg.get("health.performance_min_success_rate"), cfg.get("health.performance_min_samples"))

    async def _record(self, job: Job, ctx: Context, files: dict[str, FileResult], extra: list[Issue], perf: scores.Performance | None,
                      persist: bool = True) -> ModelHealth:
        now = self._clock.time()
        full = job.type in ("full", "integrity")
        mh = self._merge(ctx, files, extra, perf, job.type, now, job.id)
        record = json.dumps(mh.to_record())

        def w(conn: sqlite3.Connection) -> bool:
            changed = ck.record_results(conn, ctx, files, now, full)
            if persist:
                conn.execute("INSERT OR REPLACE INTO health_checks (check_id, model_id, version, check_type, trigger, status, started_at, finished_at, result)"
                             " VALUES (?, ?, ?, ?, ?, 'completed', ?, ?, ?)", (job.id, ctx.model_id, ctx.version, job.type, job.trigger, job.started_at, now, record))
                conn.execute("DELETE FROM health_checks WHERE model_id = ? AND check_id NOT IN"
                             " (SELECT check_id FROM health_checks WHERE model_id = ? ORDER BY started_at DESC LIMIT ?)",
                             (ctx.model_id, ctx.model_id, KEEP_CHECKS_PER_MODEL))
            return changed

        changed = await self._db.write(w)
        prev = self._state.get(ctx.model_id)
        self._state[ctx.model_id] = mh
        if changed or full or prev is None or prev.overall != mh.overall or any(f.state != "ok" for f in files.values()):
            await self._rescan([ctx.model_id])
        else:
            self._status_changed([ctx.model_id])
        self._alert(mh, job)
        return mh

    def _merge(self, ctx: Context, files: dict[str, FileResult], extra: list[Issue], perf: scores.Performance | None, check_type: str, now: float,
               check_id: str) -> ModelHealth:
        prev = self._state.get(ctx.model_id)
        if not ctx.installed:
            # files copied in by hand, some not yet: the model is incomplete (missing), not damaged
            for fr in files.values():
                for i in fr.issues:
                    if i.type == "missing":
                        i.severity = WARNING
        mh = ModelHealth(ctx.model_id, ctx.version, self._installed(ctx, files), files, extra, perf, now, check_id, check_type)
        if prev is not None and prev.version == ctx.version:
            mh.last_quick_at, mh.last_full_at = prev.last_quick_at, prev.last_full_at
            if perf is None:
                mh.perf = prev.perf
        if check_type in ("full", "integrity"):
            mh.last_full_at = now
        elif not check_id.startswith("check_startup"):
            mh.last_quick_at = now  # the stock-taking at start does not count: scheduled checks stay staggered
        self._tally.add("health_checks", (check_type, mh.overall))
        return mh

    def _alert(self, mh: ModelHealth, job: Job) -> None:
        crit = mh.critical
        if crit:
            first = crit[0]
            alert = {"missing": "file_missing", "unreadable": "permission_denied", "symlink": "symlink_detected"}.get(first.type, "corruption_detected")
            fixable = all(i.recommendation in ("integrity_fix", "redownload", "fix_permissions") for i in crit)
            self._emit("model_health_alert", model_id=mh.model_id, alert_type=alert, severity="critical",
                                    message=f"{len(crit)} problem(s): " + "; ".join(i.message for i in crit[:3]),
                                    recommended_action="auto_repair" if fixable else "redownload", check_id=job.id,
                                    issues=[i.to_dict() for i in crit[:20]])
            log.warning("%s %s: %s", mh.model_id, alert, "; ".join(i.message for i in crit[:5]))
        elif mh.perf is not None and mh.perf.degraded:
            self._emit("model_health_alert", model_id=mh.model_id, alert_type="performance_degraded", severity="warning",
                                    message=f"generations take {mh.perf.ratio}x the baseline (success rate {mh.perf.success_rate})",
                                    recommended_action="check_system", check_id=job.id)

    async def check_all(self, trigger: str = "manual", record: bool = True) -> CheckAllSummary:
        """Quick check of every catalog model that has files on disk, in one pass (one read, one thread, one write)."""
        ctxs = await self.contexts()
        skip = {m for m in ctxs if self._activity.busy(m, *BUSY_FOR_CHECK)}
        todo = [c for m, c in ctxs.items() if m not in skip]
        t0 = self._clock.monotonic()

        gone: list[Context] = []

        def run() -> list[tuple[Context, dict[str, FileResult], list[Issue]]]:
            out = []
            for c in todo:
                if not c.installed and not c.base.exists():
                    gone.append(c)
                    continue
                files, extra = self._quick(c)
                out.append((c, files, extra))
            return out

        results = await asyncio.to_thread(run)
        dropped = []
        for c in gone:
            # neither installed nor on disk (removed, perhaps while the engine was down): an older record no longer describes it
            mh_old = self._state.get(c.model_id)
            if mh_old is not None and mh_old.version == c.version:
                del self._state[c.model_id]
                dropped.append(c.model_id)
        if dropped:
            self._status_changed(dropped)
        now = self._clock.time()
        jobs: list[tuple[Job, ModelHealth]] = []
        for c, files, extra in results:
            job = Job("check_" + trigger if not record else new_id("check"), "check", c.model_id, "quick", trigger, now, status="completed", finished_at=now)
            jobs.append((job, self._merge(c, files, extra, None, "quick", now, job.id)))

        def w(conn: sqlite3.Connection) -> None:
            for (c, files, _), (job, mh) in zip(results, jobs):
                ck.record_results(conn, c, files, now, False)
                if record:
                    conn.execute("INSERT INTO health_checks (check_id, model_id, version, check_type, trigger, status, started_at, finished_at, result)"
                                 " VALUES (?, ?, ?, 'quick', ?, 'completed', ?, ?, ?)",
                                 (job.id, c.model_id, c.version, trigger, now, now, json.dumps(mh.to_record())))

        if results:
            await self._db.write(w)
        for job, mh in jobs:
            self._state[mh.model_id] = mh
        if results:
            await self._rescan([c.model_id for c, _, _ in results] if len(results) < 50 else None)
        for job, mh in jobs:
            if record:
                self._alert(mh, job)
        elapsed = self._clock.monotonic() - t0
        counts: dict[str, int] = {}
        for _, mh in jobs:
            counts[mh.overall] = counts.get(mh.overall, 0) + 1
        log.info("quick check of %d model(s) (%s) in %.3fs: %s", len(jobs), trigger, elapsed, counts)
        return CheckAllSummary(len(jobs), sorted(skip), round(elapsed, 4), counts, sorted(mh.model_id for _, mh in jobs if mh.overall == "corrupted"))

    async def _rescan(self, model_ids: list[str] | None) -> None:
        """Rescan the models' files, then report their status changed (what the status shows follows what was found)."""
        await self._presence.refresh(model_ids)
        self._status_changed(model_ids)

    # --- status --------------------------------------------------------------------
    def is_busy(self, model_id: str) -> bool:
        """Whether health is checking, repairing or updating the model."""
        return self._activity.busy(model_id, "checking", "repairing", "updating")

    def _current(self, model_id: str) -> ModelHealth | None:
        """The model's health record if it still describes what is on disk."""
        mh = self._state.get(model_id)
        if mh is None:
            return None
        pres = self._presence.presence(model_id)
        if pres is not None and pres.version != mh.version:
            return None
        if mh.critical and pres is not None and pres.verified:
            return None  # re-verified since (a download replaced the files): the record is stale
        return mh

    def model_fields(self, model_id: str) -> dict[str, Any]:
        """Status fields: integrity_score, last_health_check, performance_score, corruption_detected, overall_health;
        availability "updating" during an update and "corrupted" when the last check found damage."""
        out: dict[str, Any] = {}
        if self._is_updating(model_id):
            out["availability_status"] = "updating"
        mh = self._current(model_id)
        if mh is None:
            pres = self._presence.presence(model_id)
            if not (pres and pres.complete and any(f.verified for f in pres.files)):
                out["integrity_score"] = None  # nothing of it was ever measured
            return out
        corrupted = bool(mh.critical)
        out.update({"integrity_score": integrity_of(mh), "last_health_check": iso(mh.last_check_at), "corruption_detected": corrupted,
                    "overall_health": mh.overall})
        if mh.perf is not None:
            out["performance_score"] = mh.perf.score
        if corrupted and "availability_status" not in out and not self._activity.busy(model_id, "downloading"):
            out["availability_status"] = "corrupted"
        return out

    def _model_health(self, model_id: str) -> dict[str, Any]:
        mh = self._current(model_id)
        if mh is None:
            pres = self._presence.presence(model_id)
            installed = bool(pres and any(f.actual_size is not None for f in pres.files))
            return {"model_id": model_id, "version": self._presence.version_in_use(model_id), "installed": installed, "overall_health": "unknown",
                    "integrity_score": None, "performance_score": None, "last_check": None, "last_check_id": None, "last_quick_check": None,
                    "last_full_check": None, "corruption_detected": False, "issues": [], "recommendations": [], "files": [], "performance": None}
        return status_of(mh)

    async def history(self, limit: int, model_id: str | None = None) -> list[HistoryEntry]:
        """Checks and repairs from `health_checks` and `health_repairs`, newest first (at most `limit` of each)."""
        def q(conn: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            where = " WHERE (? IS NULL OR model_id = ?) ORDER BY COALESCE(finished_at, started_at) DESC LIMIT ?"
            return (conn.execute("SELECT * FROM health_checks" + where, (model_id, model_id, limit)).fetchall(),
                    conn.execute("SELECT * FROM health_repairs" + where, (model_id, model_id, limit)).fetchall())

        checks, repairs = await self._db.read(q)
        out = []
        for r in checks:
            res = json.loads(r["result"]) if r["result"] else {}
            issues = sum(len(f.get("issues") or []) for f in res.get("files") or []) + len(res.get("extra") or [])
            hashed = sum(int(f.get("size_bytes") or 0) for f in res.get("files") or []) if r["check_type"] != "quick" else None
            verdict = res.get("overall_health")
            detail = verdict and (f"{verdict}, {issues} issue{'' if issues == 1 else 's'}" if issues else verdict)
            out.append(HistoryEntry("check", r["check_id"], r["model_id"], r["version"], r["status"], r["started_at"], r["finished_at"],
                                    hashed if res else None, detail, r["check_type"]))
        for r in repairs:
            res = json.loads(r["result"]) if r["result"] else {}
            errors = [e.get("message") for e in res.get("errors") or [] if e.get("message")]
            detail = "; ".join(errors[:2]) if errors else ", ".join(res.get("actions_taken") or []) or None
            out.append(HistoryEntry("repair", r["repair_id"], r["model_id"], r["version"], r["status"], r["started_at"], r["finished_at"],
                                    r["bytes_redownloaded"], detail, r["repair_type"]))
        return out

    async def status(self, model_id: str | None = None) -> dict[str, Any]:
        """`health.status`: one model's health (its files rescanned first), or every model's with the system figures."""
        if model_id is not None:
            self._catalog.spec(model_id)
            await self._presence.refresh([model_id])
            return self._model_health(model_id)
        models = {m: self._model_health(m) for m in self._catalog.models}
        times = [mh.last_check_at for mh in self._state.values() if mh.last_check_at]
        return {"models": models, "system_health": scores.system_health(list(models.values()), iso(max(times)) if times else None)}

    # --- repair -------------------------------------------------------------------------
    async def repair(self, model_id: str, repair_type: str = "auto", force_repair: bool = False, trigger: str = "manual") -> RepairResult:
        """`health.repair`: check, then fix what is broken the cheapest way that works (or the way asked)."""
        if repair_type not in REPAIR_TYPES:
            raise InvalidState(f"repair_type must be one of {', '.join(REPAIR_TYPES)}", field="repair_type")
        self._catalog.spec(model_id)
        busy = self._activity.reasons(model_id) & {"downloading", "repairing", "updating"}
        if busy:
            raise Conflict(f"model {model_id!r} is {', '.join(sorted(busy))}", model_id=model_id, activity=sorted(busy))
        if self._leases.is_leased(model_id):
            # force_repair may write verified pieces in place under a lease; replacing a file never happens under one
            if repair_type == "redownload":
                raise Conflict(f"model {model_id!r} is in use; a redownload replaces its files, which is never done under a lease: "
                               "release it first", model_id=model_id, active_leases=len(self._leases.leases_for(model_id)))
            if not force_repair:
                raise Conflict(f"model {model_id!r} is in use; repair writes its files (pass force_repair to repair anyway)", model_id=model_id,
                               active_leases=len(self._leases.leases_for(model_id)))
        job = Job(new_id("repair"), "repair", model_id, repair_type, trigger, self._clock.time())
        self._remember(job)
        with self._activity.hold(model_id, "repairing"):
            try:
                result = await self._repair(job, force_repair)
            finally:
                job.finished_at = self._clock.time()
                job.done.set()
        return result

    async def _repair(self, job: Job, force: bool) -> RepairResult:
        mid = job.model_id
        ctx = await self.context(mid)
        await self._db.write(lambda c: c.execute(
            "INSERT INTO health_repairs (repair_id, model_id, version, repair_type, status, started_at) VALUES (?, ?, ?, ?, 'running', ?)",
            (job.id, mid, ctx.version, job.type, job.started_at)))
        actions: list[str] = ["integrity_check"]
        done_files: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        fetched = 0
        files, _extra = await asyncio.to_thread(self._checks.full, ctx, self._checks.unlimited())
        piece_default = self._settings.get("downloads.piece_size_mb") * MIB
        by_path = {f.path: f for f in ctx.manifest}
        outcomes: dict[str, rp.RepairOutcome] = {}
        for fr in files.values():
            f = by_path[fr.path]
            needs = not fr.verified
            if not needs and not (force and job.type == "redownload"):
                continue
            plan = self._plan(job.type, fr, ctx, force)
            for step in plan:
                try:
                    out = await self._repair_step(step, ctx, f, fr, piece_default)
                except MavailError as exc:
                    fetched += getattr(exc, "fetched", 0)
                    log.warning("repair %s: %s of %s failed: %s", job.id, step, f.path, exc.message)
                    errors.append({"file": f.path, "action": step, "code": exc.NAME, "message": exc.message})
                    continue
                fetched += out.bytes_fetched
                outcomes[f.path] = out
                done_files.append({"file": f.path, "action": out.action, "bytes_fetched": out.bytes_fetched})
                if out.action not in actions:
                    actions.append(out.action)
                errors = [e for e in errors if e["file"] != f.path]
                break
            else:
                if not plan:
                    errors.append({"file": f.path, "action": "none", "code": "INVALID_STATE", "message": f"{job.type} cannot fix {fr.state}"})
        # record the repaired files as verified, with their new pieces
        now = self._clock.time()

        if outcomes:
            await self._db.write(lambda c: ck.record_repairs(c, ctx, outcomes.values(), now))
        # a final check of the repaired model (full when permissions were fixed, since those bytes were never hashed, or when something is still wrong)
        final_type = "full" if errors or any(o.action == "fix_permissions" for o in outcomes.values()) else "quick"
        ctx2 = await self.context(mid)
        check = Job(new_id("check"), "check", mid, final_type, "repair", now)
        await self._db.write(lambda c: c.execute(
            "INSERT INTO health_checks (check_id, model_id, version, check_type, trigger, status, started_at) VALUES (?, ?, ?, ?, 'repair', 'running', ?)",
            (check.id, mid, ctx2.version, final_type, now)))
        if final_type == "full":
            files2, extra2 = await asyncio.to_thread(self._checks.full, ctx2, self._checks.unlimited())
        else:
            files2, extra2 = await asyncio.to_thread(self._quick, ctx2)
        mh = await self._record(check, ctx2, files2, extra2, self._state[mid].perf if mid in self._state else None)
        success = not errors and not mh.critical
        result = RepairResult(success, job.id, mid, ctx.version, actions, fetched, done_files, errors, mh.overall, mh.integrity, check.id)
        job.status = "completed" if success else "failed"
        job.result = result.to_dict()
        self._tally.add("repairs", (job.status,))
        self._tally.add("repair_bytes", (), fetched)
        await self._db.write(lambda c: c.execute(
            "UPDATE health_repairs SET status = ?, finished_at = ?, bytes_redownloaded = ?, result = ? WHERE repair_id = ?",
            (job.status, self._clock.time(), fetched, json.dumps(job.result), job.id)))
        if success:
            self._repair_failed_at.pop(mid, None)
            if done_files:
                self._emit("model_health_alert", model_id=mid, alert_type="repair_completed", severity="info",
                                        message=f"repaired {len(done_files)} file(s), {fetched} bytes fetched", recommended_action="none",
                                        repair_id=job.id)
        else:
            self._repair_failed_at[mid] = self._clock.time()
            self._emit("model_health_alert", model_id=mid, alert_type="repair_failed", severity="critical",
                                    message="; ".join(e["message"] for e in errors[:3]) or "problems remain after the repair",
                                    recommended_action="redownload", repair_id=job.id)
        log.info("repair %s of %s (%s): %s, actions %s, %d bytes fetched", job.id, mid, job.type, "ok" if success else "FAILED", actions, fetched)
        return result

    def _plan(self, repair_type: str, fr: FileResult, ctx: Context, force: bool) -> list[str]:
        """The steps to try for one file, cheapest first."""
        if fr.verified:
            return ["redownload"] if repair_type == "redownload" and force else []
        if repair_type == "redownload":
            return ["redownload"]
        piece_fixable = fr.state in ("changed_bytes", "truncated", "extended") and (fr.broken_pieces or fr.state == "extended") and (
            fr.piece_size is not None or fr.state == "extended")
        if repair_type == "integrity_fix":
            if fr.state == "unreadable" and fr.stat_sig is not None:
                return ["fix_permissions"]
            return ["integrity_fix"] if piece_fixable else []
        # auto
        steps: list[str] = []
        if fr.state == "unreadable" and any(i.recommendation == "fix_permissions" for i in fr.issues) and fr.stat_sig is not None:
            steps.append("fix_permissions")
        elif piece_fixable:
            steps.append("integrity_fix")
        if fr.state in ("changed", "unverified"):
            return []
        steps.append("redownload")
        return steps

    async def _repair_step(self, step: str, ctx: Context, f: ManifestFile, fr: FileResult, piece_default: int) -> rp.RepairOutcome:
        if step == "fix_permissions":
            sig = await asyncio.to_thread(rp.fix_permissions, ctx.base, f.path, self._layout.home)
            return rp.RepairOutcome(f.path, "fix_permissions", 0, sig)
        if not ctx.catalog_version and step != "fix_permissions":
            raise SourceUnavailable(f"version {ctx.version} of {ctx.model_id} is no longer in the catalog: no source to fetch from", version=ctx.version)
        if step == "integrity_fix":
            pieces = ctx.pieces.get(f.path)
            if pieces is None:
                # an extended file whose pieces were just computed: nothing to fetch, cut it to size
                pieces = (fr.piece_size or piece_default, [])
            ps, hashes = pieces
            return await rp.integrity_fix(client=self.http_client(), fetch=self.fetch_range, to_thread=asyncio.to_thread, repair_dir=self.repair_dir,
                                          base=ctx.base, home=self._layout.home, model_id=ctx.model_id, version=ctx.version, f=f, broken=fr.broken_pieces,
                                          piece_hashes=hashes, piece_size=ps, piece_algo=ctx.piece_algos.get(f.path, "sha256"))

        def replacing() -> AbstractContextManager[None]:
            # checked and marked with no await between: a lease either lands before (and the replace is refused) or is refused
            if self._leases.is_leased(ctx.model_id):
                log.warning("redownload of %s %s held back: the model is in use (the fetched data is kept)", ctx.model_id, f.path)
                raise Conflict(f"{f.path}: model {ctx.model_id!r} is in use; a redownload replaces the file, which is never done under a lease "
                               "(the fetched data is kept for the next repair)", model_id=ctx.model_id, file=f.path)
            return self._leases.replacing(ctx.model_id)

        return await rp.redownload(client=self.http_client(), fetch=self.fetch_range, to_thread=asyncio.to_thread, base=ctx.base,
                                   home=self._layout.home, redownload_dir=self.redownload_dir, model_id=ctx.model_id, version=ctx.version, f=f,
                                   piece_size=piece_default, replacing=replacing)

    async def _recover(self) -> None:
        """At start: finish committed repair journals, drop uncommitted ones, delete the repair's temp files."""
        pending = await asyncio.to_thread(rp.pending_journals, self.repair_dir)
        for jdir, rec in pending:
            if rec is None:
                await asyncio.to_thread(rp.discard, jdir, self._layout.home)
                log.info("discarded an unfinished repair journal %s", jdir.name)
                continue
            mid, version = rec["model_id"], rec["version"]
            base = self._layout.model_dir(mid, version)
            with self._activity.hold(mid, "repairing"):
                try:
                    sig = await asyncio.to_thread(rp.apply_journal, jdir, base, self._layout.home)
                    digest = await asyncio.to_thread(rp.whole_sha256, rp.target_path(base, rec["path"]))
                except (OSError, MavailError):
                    log.exception("could not finish the repair journal %s", jdir.name)
                    await asyncio.to_thread(rp.discard, jdir, self._layout.home)
                    continue
                ok = digest == rec["sha256"]
                verified_at = self._clock.time() if ok else None
                await self._db.write(lambda c, m=mid, v=version, p=rec["path"], g=sig, t=verified_at: ck.record_journal(c, m, v, p, g, t))
                await asyncio.to_thread(rp.discard, jdir, self._layout.home)
                log.info("finished an interrupted repair of %s %s %s: %s", mid, version, rec["path"], "verified" if ok else "still damaged")
        dirs = [self._layout.model_dir(m, v) for m, v in await self._db.read(installed.every_version)]
        removed = await asyncio.to_thread(lambda: sum(rp.remove_temps(d, self._layout.home) for d in dirs))
        if removed:
            log.info("removed %d temp file(s) left by an interrupted repair", removed)

    # --- schedule ------------------------------------------------------------------------
    async def _scheduler(self) -> None:
        while True:
            await asyncio.sleep(self._settings.get("health.scheduler_tick_s"))
            try:
                await self.run_scheduled_once()
            except Exception:
                log.exception("scheduled health checks failed")

    def _due(self, mh: ModelHealth | None, model_id: str, now: float) -> tuple[bool, bool]:
        cfg = self._settings
        quick_iv = cfg.get("health.check_interval_hours") * 3600.0
        full_iv = cfg.get("health.full_check_interval_days") * 86400.0
        phase = _phase(model_id)
        last_quick = mh.last_quick_at if mh else None
        last_full = mh.last_full_at if mh else None
        quick_due = (last_quick + quick_iv if last_quick is not None else self._started_at + phase * quick_iv) <= now
        full_due = (last_full + full_iv if last_full is not None else self._started_at + phase * full_iv) <= now
        return quick_due, full_due

    async def run_scheduled_once(self) -> list[dict[str, Any]]:
        """One pass of the scheduler: run the checks that are due, one model at a time, then repair what they found.

        Each model's first check is offset by a fixed fraction of the interval
        (from a hash of its id), and later ones follow its own last check, so
        checks are spread over the interval instead of all running at once.
        Models being downloaded, repaired or updated are skipped until a later pass.
        With health.monitoring_enabled off a pass does nothing.
        """
        done: list[dict[str, Any]] = []
        if not self._settings.get("health.monitoring_enabled"):
            return done  # checks run only when asked
        async with self._scheduler_lock:
            now = self._clock.time()
            for mid in list(self._catalog.models):
                mh = self._state.get(mid)
                pres = self._presence.presence(mid)
                installed = (mh is not None and mh.installed) or bool(pres and any(f.actual_size is not None for f in pres.files))
                if not installed:
                    continue
                if self._activity.busy(mid, *BUSY_FOR_CHECK, "checking"):
                    done.append({"model_id": mid, "skipped": "busy"})
                    continue
                quick_due, full_due = self._due(mh, mid, now)
                kind = "full" if full_due else "quick" if quick_due else None
                try:
                    if kind is not None:
                        res = await self.check(mid, kind, trigger="scheduled")
                        done.append({"model_id": mid, "check": kind, "health": (res.result or {}).get("overall_health")})
                        mh = self._state.get(mid)
                        if kind == "quick" and mh is not None and any(i.type in ("changed_since_verified", "never_verified") for i in mh.issues):
                            await self.check(mid, "full", trigger="scheduled")
                            done.append({"model_id": mid, "check": "full", "health": self._state[mid].overall})
                    await self._maybe_auto_repair(mid, done)
                except MavailError as exc:
                    done.append({"model_id": mid, "error": exc.NAME})
        return done

    async def _maybe_auto_repair(self, model_id: str, done: list[dict[str, Any]]) -> None:
        cfg = self._settings
        mh = self._current(model_id)
        if mh is None or not mh.critical or not cfg.get("health.auto_repair_enabled"):
            return
        if self._leases.is_leased(model_id):
            done.append({"model_id": model_id, "repair": "deferred_in_use"})
            return
        failed_at = self._repair_failed_at.get(model_id)
        if failed_at is not None and self._clock.time() - failed_at < cfg.get("health.auto_repair_backoff_minutes") * 60:
            return
        res = await self.repair(model_id, "auto", trigger="scheduled")
        done.append({"model_id": model_id, "repair": "ok" if res.ok else "failed", "bytes": res.bytes_redownloaded})
