"""The health service (`engine.health`): checks, repairs, scheduled maintenance, status fields.

Every database access and every byte hashed happens in worker threads; the
event loop only orchestrates. State survives restarts in `health_checks`,
`installed_files` and `file_pieces`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from mavail.core import safefs
from mavail.core.errors import Conflict, InvalidState, MavailError, NotFound, SourceUnavailable
from mavail.core.health import repair as rp
from mavail.core.health import scores
from mavail.core.health.model import Context, Job, ModelHealth, new_id
from mavail.core.health.scan import (CRITICAL, WARNING, CheckCancelled, FileResult, Issue, ManifestFile, ReadBudget, Verified, extra_files,
                              full_check_file, quick_check_file)
from mavail.core.paths import REDOWNLOAD_DIR, REPAIR_DIR
from mavail.core.timeutil import iso

if TYPE_CHECKING:
    from mavail.core.engine import Engine

log = logging.getLogger("mavail.health")

MIB = 1024 * 1024
CHECK_TYPES = ("quick", "full", "integrity", "performance")
REPAIR_TYPES = ("auto", "redownload", "integrity_fix")
KEEP_CHECKS_PER_MODEL = 50
BUSY_FOR_CHECK = ("downloading", "repairing", "updating")


class PerformanceSource(Protocol):
    """Where generation records come from (`engine.analytics` by default; tests inject their own)."""

    async def samples(self, model_id: str) -> list[scores.Sample]:
        """The model's generations, any order."""


class AnalyticsSource:
    """The default PerformanceSource: the model's latest generations as the analytics service records them."""

    def __init__(self, engine: "Engine", limit: int = 500) -> None:
        self.engine = engine
        self.limit = limit

    async def samples(self, model_id: str) -> list[scores.Sample]:
        rows = await self.engine.analytics.generation_samples(model_id, self.limit)
        return [scores.Sample(ts, duration_s, success) for ts, duration_s, success in rows]


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
    """Health checks, repairs, scheduled maintenance and the health fields of `models.status`."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self.performance_source: PerformanceSource = AnalyticsSource(engine)
        self._state: dict[str, ModelHealth] = {}
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._running_full: dict[str, Job] = {}
        self._cancel = threading.Event()
        self._started_at = engine.clock.time()
        self._repair_failed_at: dict[str, float] = {}
        self._client: Any = None
        self.fetch_range = rp.get_fetch_range()
        self._scheduler_lock = asyncio.Lock()
        from mavail.core.health.updates import UpdateManager

        self.updates = UpdateManager(engine, self)
        engine.add_status_provider(self)

    # --- lifecycle -------------------------------------------------------------
    @property
    def repair_dir(self) -> Path:
        """Where repair journals live: `partial/.repair/` (a leading dot: no model id can take the name)."""
        return self.engine.layout.partial_dir / REPAIR_DIR

    @property
    def redownload_dir(self) -> Path:
        """Where whole-file redownloads collect their data until it is verified: `partial/.redownload/`."""
        return self.engine.layout.partial_dir / REDOWNLOAD_DIR

    async def start(self) -> None:
        """Load the last checks, finish or discard interrupted repairs, take stock, start the scheduler."""
        self.engine.on_stop(self.stop)
        await self._load_state()
        await asyncio.to_thread(self._move_old_dirs)
        await self._recover()
        await self.updates.recover()
        await self.check_all(trigger="startup", record=False)
        self.engine.downloads.add_listener(self._on_download)
        self.engine.spawn(self._scheduler(), name="health-scheduler")

    def _move_old_dirs(self) -> None:
        """Move the repair folders of earlier versions (`partial/repair/`, `partial/redownload/`) to their dotted names.

        Left alone when a catalog model has that id (the folder is then its partial data) or the new one exists.
        """
        home, partial = self.engine.layout.home, self.engine.layout.partial_dir
        for old, new in (("repair", REPAIR_DIR), ("redownload", REDOWNLOAD_DIR)):
            if old in self.engine.catalog.models or not safefs.is_real_dir(home, partial / old) or safefs.exists(home, partial / new):
                continue
            try:
                safefs.rename(home, partial / old, partial / new)
                log.info("moved %s to %s", partial / old, partial / new)
            except OSError as exc:
                log.warning("cannot move %s to %s: %s", partial / old, partial / new, exc)

    async def stop(self) -> None:
        """Stop running checks (they record nothing) and close the HTTP client."""
        self._cancel.set()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _on_download(self, model_id: str, version: str, status: str) -> None:
        if status == "completed":
            self.engine.spawn(self._after_download(model_id, version), name=f"health-after-download-{model_id}")
        self.updates.on_download(model_id, version, status)

    async def _after_download(self, model_id: str, version: str) -> None:
        self._repair_failed_at.pop(model_id, None)
        try:
            await self.check(model_id, "quick", trigger="download", wait=True)
        except MavailError:
            pass

    def http_client(self) -> Any:
        """One shared httpx client for repairs."""
        if self._client is None:
            import httpx

            timeout = self.engine.config.get("downloads.connect_timeout_s")
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=timeout), follow_redirects=True)
        return self._client

    # --- database ---------------------------------------------------------------
    async def _load_state(self) -> None:
        def q(conn: Any) -> tuple[list[Any], list[Any]]:
            conn.execute("UPDATE health_checks SET status = 'interrupted' WHERE status = 'running'")
            conn.execute("UPDATE health_repairs SET status = 'interrupted' WHERE status = 'running'")
            latest = conn.execute(
                "SELECT model_id, version, check_id, check_type, finished_at, result FROM ("
                " SELECT *, ROW_NUMBER() OVER (PARTITION BY model_id ORDER BY finished_at DESC) AS rn FROM health_checks"
                " WHERE status = 'completed' AND result IS NOT NULL) WHERE rn = 1").fetchall()
            times = conn.execute("SELECT model_id, check_type, MAX(finished_at) FROM health_checks WHERE status = 'completed' GROUP BY model_id, check_type").fetchall()
            return latest, times

        latest, times = await self.engine.db.write(q)
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

    async def contexts(self, model_ids: Sequence[str] | None = None, version: str | None = None) -> dict[str, Context]:
        """Version, manifest, verification records and pieces of models (all catalog models by default)."""
        catalog = self.engine.catalog
        ids = [m for m in (model_ids if model_ids is not None else list(catalog.models)) if m in catalog.models]
        layout = self.engine.layout
        want_pieces = model_ids is not None
        want_version = version

        def q(conn: Any) -> dict[str, Context]:
            few = len(ids) <= 20 and model_ids is not None
            where, args = (f" WHERE model_id IN ({','.join('?' * len(ids))})", tuple(ids)) if few else ("", ())
            vrows = conn.execute("SELECT model_id, version, is_current FROM installed_versions" + where, args).fetchall()
            current = {r[0]: r[1] for r in vrows if r[2]}
            versions = {(r[0], r[1]) for r in vrows}
            files: dict[tuple[str, str], dict[str, Verified]] = {}
            for r in conn.execute("SELECT model_id, version, path, size, sha256, mtime_ns, inode, verified_at FROM installed_files" + where, args):
                files.setdefault((r[0], r[1]), {})[r[2]] = Verified(r[3], r[4], r[5], r[6], r[7])
            out: dict[str, Context] = {}
            for mid in ids:
                spec = catalog.models[mid]
                version = current.get(mid, spec.version) if want_version is None else want_version
                ver = files.get((mid, version), {})
                if version == spec.version and spec.files:
                    manifest = [ManifestFile(f.path, f.size, f.sha256, f.urls) for f in spec.files]
                else:
                    manifest = [ManifestFile(p, v.size, v.sha256) for p, v in sorted(ver.items())]
                pieces: dict[str, tuple[int, list[str]]] = {}
                if want_pieces:
                    rows = conn.execute("SELECT path, piece_size, idx, sha256 FROM file_pieces WHERE model_id = ? AND version = ? ORDER BY path, idx",
                                        (mid, version)).fetchall()
                    for path, ps, idx, sha in rows:
                        entry = pieces.setdefault(path, (ps, []))
                        if idx == len(entry[1]) and ps == entry[0]:
                            entry[1].append(sha)
                out[mid] = Context(mid, version, layout.model_dir(mid, version), manifest, ver, pieces, (mid, version) in versions,
                                   mid in current, version == spec.version)
            return out

        return await self.engine.db.read(q)

    async def context(self, model_id: str, version: str | None = None) -> Context:
        """The context of one model, at its version in use or at `version` (ModelNotFound when not in the catalog)."""
        self.engine.spec(model_id)
        return (await self.contexts([model_id], version))[model_id]

    # --- checks -------------------------------------------------------------------
    def _quick(self, ctx: Context) -> tuple[dict[str, FileResult], list[Issue]]:
        prev = self._state.get(ctx.model_id)
        prev_files = prev.files if prev is not None and prev.version == ctx.version else {}
        files = {f.path: quick_check_file(ctx.base, f, ctx.verified.get(f.path), prev_files.get(f.path)) for f in ctx.manifest}
        return files, extra_files(ctx.base, ctx.manifest)

    def _full(self, ctx: Context, budget: ReadBudget) -> tuple[dict[str, FileResult], list[Issue]]:
        piece_size = self.engine.config.get("downloads.piece_size_mb") * MIB
        files: dict[str, FileResult] = {}
        for f in ctx.manifest:
            rec = ctx.verified.get(f.path)
            pieces = ctx.pieces.get(f.path)
            trusted = pieces is not None and (rec is None or rec.sha256 == f.sha256)
            if trusted:
                assert pieces is not None
                files[f.path] = full_check_file(ctx.base, f, pieces[1], pieces[0], budget)
            else:
                files[f.path] = full_check_file(ctx.base, f, None, piece_size, budget)
        return files, extra_files(ctx.base, ctx.manifest)

    def _installed(self, ctx: Context, files: dict[str, FileResult]) -> bool:
        return ctx.installed or any(f.state not in ("missing",) for f in files.values())

    async def check(self, model_id: str, check_type: str = "full", force: bool = False, trigger: str = "manual", wait: bool = True,
                    max_read_mbps: float | None = None) -> dict[str, Any]:
        """Run (or join) a check; with `wait` return its result, else its id at once."""
        if check_type not in CHECK_TYPES:
            raise InvalidState(f"check_type must be one of {', '.join(CHECK_TYPES)}", field="check_type")
        self.engine.spec(model_id)
        busy = self.engine.activity.reasons(model_id) & set(BUSY_FOR_CHECK)
        if busy:
            raise Conflict(f"model {model_id!r} is {', '.join(sorted(busy))}: checks never run on files being written", model_id=model_id,
                           activity=sorted(busy))
        full = check_type in ("full", "integrity")
        job = self._running_full.get(model_id) if full else None
        if job is None:
            job = Job(new_id("check"), "check", model_id, check_type, trigger, self.engine.clock.time())
            self._remember(job)
            if full:
                self._running_full[model_id] = job
            task = self.engine.spawn(self._run_check(job, force, max_read_mbps), name=f"health-check-{job.id}")
            if not wait:
                return {"success": True, "check_id": job.id, "status": "running", "result": None}
            await asyncio.shield(task)
        elif not wait:
            return {"success": True, "check_id": job.id, "status": "running", "result": None, "joined": True}
        await job.done.wait()
        if job.status == "failed":
            raise InvalidState(f"check {job.id} failed", check_id=job.id)
        return {"success": job.status == "completed", "check_id": job.id, "status": job.status, "result": job.result}

    def _remember(self, job: Job) -> None:
        self._jobs[job.id] = job
        while len(self._jobs) > 500:
            self._jobs.popitem(last=False)

    def job(self, job_id: str) -> dict[str, Any]:
        """A check or repair by id (NotFound when unknown)."""
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no check or repair {job_id!r}", field="check_id")
        return job.to_dict()

    async def _run_check(self, job: Job, force: bool, max_read_mbps: float | None) -> None:
        mid = job.model_id
        try:
            if job.type in ("full", "integrity"):  # long: visible as running (and as interrupted after a crash)
                await self.engine.db.write(lambda c: c.execute(
                    "INSERT INTO health_checks (check_id, model_id, version, check_type, trigger, status, started_at) VALUES (?, ?, ?, ?, ?, 'running', ?)",
                    (job.id, mid, self.engine.version_in_use(mid), job.type, job.trigger, job.started_at)))
            ctx = await self.context(mid)
            t0 = self.engine.clock.monotonic()
            with self.engine.activity.hold(mid, "checking"):
                if job.type in ("full", "integrity"):
                    rate = (lambda: max_read_mbps) if max_read_mbps is not None else (lambda: self.engine.config.get("health.max_read_mbps"))
                    budget = ReadBudget(rate, self._cancel)
                    files, extra = await asyncio.to_thread(self._full, ctx, budget)
                else:
                    files, extra = await asyncio.to_thread(self._quick, ctx)
                perf = await self._performance(mid)
            elapsed = self.engine.clock.monotonic() - t0
            mh = await self._record(job, ctx, files, extra, perf)
            hashed = sum(f.hashed_bytes for f in files.values())
            job.result = {**status_of(mh), "check_type": job.type, "duration_s": round(elapsed, 4), "bytes_hashed": hashed}
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
            job.finished_at = self.engine.clock.time()
            if self._running_full.get(mid) is job:
                del self._running_full[mid]
            if job.status != "completed":
                try:
                    await self.engine.db.write(lambda c: c.execute("UPDATE health_checks SET status = ?, finished_at = ? WHERE check_id = ?",
                                                                  (job.status, job.finished_at, job.id)))
                except Exception:
                    log.exception("could not record the end of check %s", job.id)
            job.done.set()

    async def _performance(self, model_id: str) -> scores.Performance | None:
        cfg = self.engine.config
        try:
            samples = await self.performance_source.samples(model_id)
        except Exception:
            log.exception("performance source failed for %s", model_id)
            return None
        if not samples:
            return None
        return scores.performance(samples, cfg.get("health.performance_degraded_ratio"), cfg.get("health.performance_critical_ratio"),
                                  cfg.get("health.performance_min_success_rate"), cfg.get("health.performance_min_samples"))

    def _db_updates(self, conn: Any, ctx: Context, files: dict[str, FileResult], now: float, full: bool) -> bool:
        """Record verified files and new piece hashes; mark broken files unverified (in the caller's transaction).

        Returns whether any row changed."""
        before = conn.total_changes
        for fr in files.values():
            f = next(m for m in ctx.manifest if m.path == fr.path)
            if fr.verified and fr.stat_sig is not None and full:
                conn.execute(
                    "INSERT INTO installed_files (model_id, version, path, size, sha256, mtime_ns, inode, verified_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (model_id, version, path) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256,"
                    " mtime_ns = excluded.mtime_ns, inode = excluded.inode, verified_at = excluded.verified_at",
                    (ctx.model_id, ctx.version, fr.path, f.size, f.sha256, fr.stat_sig[1], fr.stat_sig[2], now))
            elif any(i.severity == CRITICAL for i in fr.issues) or (full and fr.state == "changed_bytes"):
                conn.execute("UPDATE installed_files SET verified_at = NULL WHERE model_id = ? AND version = ? AND path = ?",
                             (ctx.model_id, ctx.version, fr.path))
            if fr.new_pieces is not None and fr.piece_size:
                conn.execute("DELETE FROM file_pieces WHERE model_id = ? AND version = ? AND path = ?", (ctx.model_id, ctx.version, fr.path))
                conn.executemany("INSERT INTO file_pieces (model_id, version, path, piece_size, idx, sha256) VALUES (?, ?, ?, ?, ?, ?)",
                                 [(ctx.model_id, ctx.version, fr.path, fr.piece_size, i, h) for i, h in enumerate(fr.new_pieces)])
        if full and not ctx.installed and files and all(fr.verified for fr in files.values()):
            # copied in by hand and now proven: it is installed
            has_current = conn.execute("SELECT 1 FROM installed_versions WHERE model_id = ? AND is_current = 1", (ctx.model_id,)).fetchone()
            conn.execute("INSERT OR IGNORE INTO installed_versions (model_id, version, installed_at, is_current) VALUES (?, ?, ?, ?)",
                         (ctx.model_id, ctx.version, now, 0 if has_current else 1))
        return conn.total_changes != before

    async def _record(self, job: Job, ctx: Context, files: dict[str, FileResult], extra: list[Issue], perf: scores.Performance | None,
                      persist: bool = True) -> ModelHealth:
        now = self.engine.clock.time()
        full = job.type in ("full", "integrity")
        mh = self._merge(ctx, files, extra, perf, job.type, now, job.id)
        record = json.dumps(mh.to_record())

        def w(conn: Any) -> bool:
            changed = self._db_updates(conn, ctx, files, now, full)
            if persist:
                conn.execute("INSERT OR REPLACE INTO health_checks (check_id, model_id, version, check_type, trigger, status, started_at, finished_at, result)"
                             " VALUES (?, ?, ?, ?, ?, 'completed', ?, ?, ?)", (job.id, ctx.model_id, ctx.version, job.type, job.trigger, job.started_at, now, record))
                conn.execute("DELETE FROM health_checks WHERE model_id = ? AND check_id NOT IN"
                             " (SELECT check_id FROM health_checks WHERE model_id = ? ORDER BY started_at DESC LIMIT ?)",
                             (ctx.model_id, ctx.model_id, KEEP_CHECKS_PER_MODEL))
            return changed

        changed = await self.engine.db.write(w)
        prev = self._state.get(ctx.model_id)
        self._state[ctx.model_id] = mh
        if changed or full or prev is None or prev.overall != mh.overall or any(f.state != "ok" for f in files.values()):
            await self.engine.refresh_presence([ctx.model_id])  # rescan: what the status shows follows what was found
        else:
            self.engine.publish_status_changes([ctx.model_id])
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
        return mh

    def _alert(self, mh: ModelHealth, job: Job) -> None:
        crit = mh.critical
        if crit:
            first = crit[0]
            alert = {"missing": "file_missing", "unreadable": "permission_denied", "symlink": "symlink_detected"}.get(first.type, "corruption_detected")
            fixable = all(i.recommendation in ("integrity_fix", "redownload", "fix_permissions") for i in crit)
            self.engine.events.emit("model_health_alert", model_id=mh.model_id, alert_type=alert, severity="critical",
                                    message=f"{len(crit)} problem(s): " + "; ".join(i.message for i in crit[:3]),
                                    recommended_action="auto_repair" if fixable else "redownload", check_id=job.id,
                                    issues=[i.to_dict() for i in crit[:20]])
            log.warning("%s %s: %s", mh.model_id, alert, "; ".join(i.message for i in crit[:5]))
        elif mh.perf is not None and mh.perf.degraded:
            self.engine.events.emit("model_health_alert", model_id=mh.model_id, alert_type="performance_degraded", severity="warning",
                                    message=f"generations take {mh.perf.ratio}x the baseline (success rate {mh.perf.success_rate})",
                                    recommended_action="check_system", check_id=job.id)

    async def check_all(self, trigger: str = "manual", record: bool = True) -> dict[str, Any]:
        """Quick check of every catalog model that has files on disk, in one pass (one read, one thread, one write)."""
        ctxs = await self.contexts()
        skip = {m for m in ctxs if self.engine.activity.busy(m, *BUSY_FOR_CHECK)}
        todo = [c for m, c in ctxs.items() if m not in skip]
        t0 = self.engine.clock.monotonic()

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
        for c in gone:
            # neither installed nor on disk (removed, perhaps while the engine was down): an older record no longer describes it
            mh_old = self._state.get(c.model_id)
            if mh_old is not None and mh_old.version == c.version:
                del self._state[c.model_id]
        now = self.engine.clock.time()
        jobs: list[tuple[Job, ModelHealth]] = []
        for c, files, extra in results:
            job = Job("check_" + trigger if not record else new_id("check"), "check", c.model_id, "quick", trigger, now, status="completed", finished_at=now)
            jobs.append((job, self._merge(c, files, extra, None, "quick", now, job.id)))

        def w(conn: Any) -> None:
            for (c, files, _), (job, mh) in zip(results, jobs):
                self._db_updates(conn, c, files, now, False)
                if record:
                    conn.execute("INSERT INTO health_checks (check_id, model_id, version, check_type, trigger, status, started_at, finished_at, result)"
                                 " VALUES (?, ?, ?, 'quick', ?, 'completed', ?, ?, ?)",
                                 (job.id, c.model_id, c.version, trigger, now, now, json.dumps(mh.to_record())))

        if results:
            await self.engine.db.write(w)
        for job, mh in jobs:
            self._state[mh.model_id] = mh
        if results:
            await self.engine.refresh_presence([c.model_id for c, _, _ in results] if len(results) < 50 else None)
        for job, mh in jobs:
            if record:
                self._alert(mh, job)
        elapsed = self.engine.clock.monotonic() - t0
        counts: dict[str, int] = {}
        for _, mh in jobs:
            counts[mh.overall] = counts.get(mh.overall, 0) + 1
        log.info("quick check of %d model(s) (%s) in %.3fs: %s", len(jobs), trigger, elapsed, counts)
        return {"success": True, "checked": len(jobs), "skipped_busy": sorted(skip), "duration_s": round(elapsed, 4), "by_health": counts,
                "corrupted": sorted(mh.model_id for _, mh in jobs if mh.overall == "corrupted")}

    # --- status --------------------------------------------------------------------
    def is_busy(self, model_id: str) -> bool:
        """Whether health is checking, repairing or updating the model."""
        return self.engine.activity.busy(model_id, "checking", "repairing", "updating")

    def _current(self, model_id: str) -> ModelHealth | None:
        """The model's health record if it still describes what is on disk."""
        mh = self._state.get(model_id)
        if mh is None:
            return None
        pres = self.engine.presence(model_id)
        if pres is not None and pres.version != mh.version:
            return None
        if mh.critical and pres is not None and pres.verified:
            return None  # re-verified since (a download replaced the files): the record is stale
        return mh

    def model_fields(self, model_id: str) -> dict[str, Any]:
        """Status fields: integrity_score, last_health_check, performance_score, corruption_detected, overall_health;
        availability "updating" during an update and "corrupted" when the last check found damage."""
        out: dict[str, Any] = {}
        if self.updates.is_updating(model_id):
            out["availability_status"] = "updating"
        mh = self._current(model_id)
        if mh is None:
            pres = self.engine.presence(model_id)
            if not (pres and pres.complete and any(f.verified for f in pres.files)):
                out["integrity_score"] = None  # nothing of it was ever measured
            return out
        corrupted = bool(mh.critical)
        out.update({"integrity_score": integrity_of(mh), "last_health_check": iso(mh.last_check_at), "corruption_detected": corrupted,
                    "overall_health": mh.overall})
        if mh.perf is not None:
            out["performance_score"] = mh.perf.score
        if corrupted and "availability_status" not in out and not self.engine.activity.busy(model_id, "downloading"):
            out["availability_status"] = "corrupted"
        return out

    def _model_health(self, model_id: str) -> dict[str, Any]:
        mh = self._current(model_id)
        if mh is None:
            pres = self.engine.presence(model_id)
            installed = bool(pres and any(f.actual_size is not None for f in pres.files))
            return {"model_id": model_id, "version": self.engine.version_in_use(model_id), "installed": installed, "overall_health": "unknown",
                    "integrity_score": None, "performance_score": None, "last_check": None, "last_check_id": None, "last_quick_check": None,
                    "last_full_check": None, "corruption_detected": False, "issues": [], "recommendations": [], "files": [], "performance": None}
        return status_of(mh)

    async def status(self, model_id: str | None = None) -> dict[str, Any]:
        """`health.status`: one model's health, or every model's with the system figures."""
        if model_id is not None:
            self.engine.spec(model_id)
            return self._model_health(model_id)
        models = {m: self._model_health(m) for m in self.engine.catalog.models}
        times = [mh.last_check_at for mh in self._state.values() if mh.last_check_at]
        return {"models": models, "system_health": scores.system_health(list(models.values()), iso(max(times)) if times else None)}

    # --- repair -------------------------------------------------------------------------
    async def repair(self, model_id: str, repair_type: str = "auto", force_repair: bool = False, trigger: str = "manual") -> dict[str, Any]:
        """`health.repair`: check, then fix what is broken the cheapest way that works (or the way asked)."""
        if repair_type not in REPAIR_TYPES:
            raise InvalidState(f"repair_type must be one of {', '.join(REPAIR_TYPES)}", field="repair_type")
        self.engine.spec(model_id)
        busy = self.engine.activity.reasons(model_id) & {"downloading", "repairing", "updating"}
        if busy:
            raise Conflict(f"model {model_id!r} is {', '.join(sorted(busy))}", model_id=model_id, activity=sorted(busy))
        if self.engine.leases.is_leased(model_id):
            # force_repair may write verified pieces in place under a lease; replacing a file never happens under one
            if repair_type == "redownload":
                raise Conflict(f"model {model_id!r} is in use; a redownload replaces its files, which is never done under a lease: "
                               "release it first", model_id=model_id, active_leases=len(self.engine.leases.leases_for(model_id)))
            if not force_repair:
                raise Conflict(f"model {model_id!r} is in use; repair writes its files (pass force_repair to repair anyway)", model_id=model_id,
                               active_leases=len(self.engine.leases.leases_for(model_id)))
        job = Job(new_id("repair"), "repair", model_id, repair_type, trigger, self.engine.clock.time())
        self._remember(job)
        with self.engine.activity.hold(model_id, "repairing"):
            try:
                result = await self._repair(job, force_repair)
            finally:
                job.finished_at = self.engine.clock.time()
                job.done.set()
        return result

    async def _repair(self, job: Job, force: bool) -> dict[str, Any]:
        mid = job.model_id
        ctx = await self.context(mid)
        await self.engine.db.write(lambda c: c.execute(
            "INSERT INTO health_repairs (repair_id, model_id, version, repair_type, status, started_at) VALUES (?, ?, ?, ?, 'running', ?)",
            (job.id, mid, ctx.version, job.type, job.started_at)))
        actions: list[str] = ["integrity_check"]
        done_files: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        fetched = 0
        files, _extra = await asyncio.to_thread(self._full, ctx, ReadBudget(lambda: 0.0, self._cancel))
        piece_default = self.engine.config.get("downloads.piece_size_mb") * MIB
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
        now = self.engine.clock.time()

        def w(conn: Any) -> None:
            for path, out in outcomes.items():
                f = by_path[path]
                if out.stat_sig is None:
                    continue
                conn.execute(
                    "INSERT INTO installed_files (model_id, version, path, size, sha256, mtime_ns, inode, verified_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (model_id, version, path) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256,"
                    " mtime_ns = excluded.mtime_ns, inode = excluded.inode, verified_at = excluded.verified_at",
                    (mid, ctx.version, path, f.size, f.sha256, out.stat_sig[1], out.stat_sig[2], now if out.action != "fix_permissions" else None))
                if out.pieces is not None and out.piece_size:
                    conn.execute("DELETE FROM file_pieces WHERE model_id = ? AND version = ? AND path = ?", (mid, ctx.version, path))
                    conn.executemany("INSERT INTO file_pieces (model_id, version, path, piece_size, idx, sha256) VALUES (?, ?, ?, ?, ?, ?)",
                                     [(mid, ctx.version, path, out.piece_size, i, h) for i, h in enumerate(out.pieces)])

        if outcomes:
            await self.engine.db.write(w)
        # a final check of the repaired model (full when permissions were fixed, since those bytes were never hashed)
        # (full when permissions were fixed, since those bytes were never hashed, or when something is still wrong)
        final_type = "full" if errors or any(o.action == "fix_permissions" for o in outcomes.values()) else "quick"
        ctx2 = await self.context(mid)
        check = Job(new_id("check"), "check", mid, final_type, "repair", now)
        await self.engine.db.write(lambda c: c.execute(
            "INSERT INTO health_checks (check_id, model_id, version, check_type, trigger, status, started_at) VALUES (?, ?, ?, ?, 'repair', 'running', ?)",
            (check.id, mid, ctx2.version, final_type, now)))
        if final_type == "full":
            files2, extra2 = await asyncio.to_thread(self._full, ctx2, ReadBudget(lambda: 0.0, self._cancel))
        else:
            files2, extra2 = await asyncio.to_thread(self._quick, ctx2)
        mh = await self._record(check, ctx2, files2, extra2, self._state[mid].perf if mid in self._state else None)
        success = not errors and not mh.critical
        result = {"success": success, "repair_id": job.id, "model_id": mid, "version": ctx.version, "actions_taken": actions,
                  "bytes_redownloaded": fetched, "files": done_files, "errors": errors, "overall_health": mh.overall,
                  "integrity_score": mh.integrity, "check_id": check.id}
        job.status = "completed" if success else "failed"
        job.result = result
        await self.engine.db.write(lambda c: c.execute(
            "UPDATE health_repairs SET status = ?, finished_at = ?, bytes_redownloaded = ?, result = ? WHERE repair_id = ?",
            (job.status, self.engine.clock.time(), fetched, json.dumps(result), job.id)))
        if success:
            self._repair_failed_at.pop(mid, None)
            if done_files:
                self.engine.events.emit("model_health_alert", model_id=mid, alert_type="repair_completed", severity="info",
                                        message=f"repaired {len(done_files)} file(s), {fetched} bytes fetched", recommended_action="none",
                                        repair_id=job.id)
        else:
            self._repair_failed_at[mid] = self.engine.clock.time()
            self.engine.events.emit("model_health_alert", model_id=mid, alert_type="repair_failed", severity="critical",
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
            sig = await asyncio.to_thread(rp.fix_permissions, ctx.base, f.path, self.engine.layout.home)
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
                                          base=ctx.base, home=self.engine.layout.home, model_id=ctx.model_id, version=ctx.version, f=f, broken=fr.broken_pieces,
                                          piece_hashes=hashes, piece_size=ps)

        def replacing() -> AbstractContextManager[None]:
            # checked and marked with no await between: a lease either lands before (and the replace is refused) or is refused
            if self.engine.leases.is_leased(ctx.model_id):
                log.warning("redownload of %s %s held back: the model is in use (the fetched data is kept)", ctx.model_id, f.path)
                raise Conflict(f"{f.path}: model {ctx.model_id!r} is in use; a redownload replaces the file, which is never done under a lease "
                               "(the fetched data is kept for the next repair)", model_id=ctx.model_id, file=f.path)
            return self.engine.leases.replacing(ctx.model_id)

        return await rp.redownload(client=self.http_client(), fetch=self.fetch_range, to_thread=asyncio.to_thread, base=ctx.base,
                                   home=self.engine.layout.home, redownload_dir=self.redownload_dir, model_id=ctx.model_id, version=ctx.version, f=f,
                                   piece_size=piece_default, replacing=replacing)

    async def _recover(self) -> None:
        """At start: finish committed repair journals, drop uncommitted ones, delete the repair's temp files."""
        pending = await asyncio.to_thread(rp.pending_journals, self.repair_dir)
        for jdir, rec in pending:
            if rec is None:
                await asyncio.to_thread(rp.discard, jdir, self.engine.layout.home)
                log.info("discarded an unfinished repair journal %s", jdir.name)
                continue
            mid, version = rec["model_id"], rec["version"]
            base = self.engine.layout.model_dir(mid, version)
            with self.engine.activity.hold(mid, "repairing"):
                try:
                    sig = await asyncio.to_thread(rp.apply_journal, jdir, base, self.engine.layout.home)
                    digest = await asyncio.to_thread(rp.whole_sha256, rp.target_path(base, rec["path"]))
                except (OSError, MavailError):
                    log.exception("could not finish the repair journal %s", jdir.name)
                    await asyncio.to_thread(rp.discard, jdir, self.engine.layout.home)
                    continue
                ok = digest == rec["sha256"]

                def w(conn: Any) -> None:
                    conn.execute("UPDATE installed_files SET mtime_ns = ?, inode = ?, size = ?, verified_at = ? WHERE model_id = ? AND version = ? AND path = ?",
                                 (sig[1], sig[2], sig[0], self.engine.clock.time() if ok else None, mid, version, rec["path"]))

                await self.engine.db.write(w)
                await asyncio.to_thread(rp.discard, jdir, self.engine.layout.home)
                log.info("finished an interrupted repair of %s %s %s: %s", mid, version, rec["path"], "verified" if ok else "still damaged")
        dirs = [self.engine.layout.model_dir(m, v) for m, v in await self.engine.db.read(
            lambda c: c.execute("SELECT model_id, version FROM installed_versions").fetchall())]
        removed = await asyncio.to_thread(lambda: sum(rp.remove_temps(d, self.engine.layout.home) for d in dirs))
        if removed:
            log.info("removed %d temp file(s) left by an interrupted repair", removed)

    # --- schedule ------------------------------------------------------------------------
    async def _scheduler(self) -> None:
        while True:
            await asyncio.sleep(self.engine.config.get("health.scheduler_tick_s"))
            try:
                await self.run_scheduled_once()
            except Exception:
                log.exception("scheduled health checks failed")

    def _due(self, mh: ModelHealth | None, model_id: str, now: float) -> tuple[bool, bool]:
        cfg = self.engine.config
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
        """
        done: list[dict[str, Any]] = []
        async with self._scheduler_lock:
            now = self.engine.clock.time()
            for mid in list(self.engine.catalog.models):
                mh = self._state.get(mid)
                pres = self.engine.presence(mid)
                installed = (mh is not None and mh.installed) or bool(pres and any(f.actual_size is not None for f in pres.files))
                if not installed:
                    continue
                if self.engine.activity.busy(mid, *BUSY_FOR_CHECK, "checking"):
                    done.append({"model_id": mid, "skipped": "busy"})
                    continue
                quick_due, full_due = self._due(mh, mid, now)
                kind = "full" if full_due else "quick" if quick_due else None
                try:
                    if kind is not None:
                        res = await self.check(mid, kind, trigger="scheduled")
                        done.append({"model_id": mid, "check": kind, "health": res["result"]["overall_health"]})
                        mh = self._state.get(mid)
                        if kind == "quick" and mh is not None and any(i.type in ("changed_since_verified", "never_verified") for i in mh.issues):
                            await self.check(mid, "full", trigger="scheduled")
                            done.append({"model_id": mid, "check": "full", "health": self._state[mid].overall})
                    await self._maybe_auto_repair(mid, done)
                except MavailError as exc:
                    done.append({"model_id": mid, "error": exc.NAME})
        return done

    async def _maybe_auto_repair(self, model_id: str, done: list[dict[str, Any]]) -> None:
        cfg = self.engine.config
        mh = self._current(model_id)
        if mh is None or not mh.critical or not cfg.get("health.auto_repair_enabled"):
            return
        if self.engine.leases.is_leased(model_id):
            done.append({"model_id": model_id, "repair": "deferred_in_use"})
            return
        failed_at = self._repair_failed_at.get(model_id)
        if failed_at is not None and self.engine.clock.time() - failed_at < cfg.get("health.auto_repair_backoff_minutes") * 60:
            return
        res = await self.repair(model_id, "auto", trigger="scheduled")
        done.append({"model_id": model_id, "repair": "ok" if res["success"] else "failed", "bytes": res["bytes_redownloaded"]})
