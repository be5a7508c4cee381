"""Model versions: check for updates, update beside the old version, switch atomically, roll back, remove.

An update downloads the catalog's version into its own directory through the
downloads engine while the old version stays current and usable, runs a full
check of the new files, waits until no lease holds the model, then switches
`installed_versions.is_current` in one SQLite transaction: a crash leaves
either the old or the new version current, both complete. Previous versions
beyond `updates.keep_versions` are removed only after the new one passed its
full check, and never while leased. Removal moves a version directory into
`trash/` first (one rename), then forgets it in the database, then deletes it;
a crash in between is finished at the next start. An update a crash
interrupted resumes by itself at the next start, under its own update_id;
`models.update` called meanwhile joins it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mavail.core.catalog import version_key
from mavail.core.errors import Conflict, InvalidState, MavailError, ModelNotFound
from mavail.core import crash, safefs
from mavail.core.health.model import new_id
from mavail.core.health.scan import ReadBudget
from mavail.core.timeutil import iso

if TYPE_CHECKING:
    from mavail.core.engine import Engine
    from mavail.core.health.service import HealthService

log = logging.getLogger("mavail.health")

TRASH_PREFIX = "remove--"


@dataclass
class UpdateJob:
    """One update in progress."""

    update_id: str
    model_id: str
    from_version: str | None
    to_version: str
    started_at: float
    status: str = "downloading"
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"update_id": self.update_id, "model_id": self.model_id, "from_version": self.from_version, "to_version": self.to_version,
                "status": self.status, "message": self.message, "started_at": iso(self.started_at)}


class UpdateManager:
    """`models.check_updates`, `models.update`, `models.rollback`, `models.remove` (owned by `engine.health.updates`)."""

    def __init__(self, engine: "Engine", health: "HealthService") -> None:
        self.engine = engine
        self.health = health
        self._jobs: dict[str, UpdateJob] = {}
        self._waiters: dict[tuple[str, str], asyncio.Future[str]] = {}
        self._pending_switch: dict[str, asyncio.Task[Any]] = {}
        self.last: dict[str, UpdateJob] = {}

    # --- state -----------------------------------------------------------------------
    def is_updating(self, model_id: str) -> bool:
        """Whether an update of the model is in progress."""
        return model_id in self._jobs

    async def _versions(self, model_id: str) -> tuple[str | None, list[tuple[str, float]]]:
        """(current version, [(version, installed_at)] of every installed version)."""
        rows = await self.engine.db.read(lambda c: c.execute(
            "SELECT version, installed_at, is_current FROM installed_versions WHERE model_id = ?", (model_id,)).fetchall())
        current = next((r[0] for r in rows if r[2]), None)
        return current, [(r[0], r[1]) for r in rows]

    def on_download(self, model_id: str, version: str, status: str) -> None:
        """Downloads listener: wake an update waiting for this version."""
        fut = self._waiters.get((model_id, version))
        if fut is not None and not fut.done() and status in ("completed", "failed", "cancelled"):
            fut.set_result(status)

    async def recover(self) -> None:
        """At start: finish interrupted removals, forget versions whose directory is gone, resume interrupted updates."""
        trash = self.engine.layout.trash_dir
        entries = await asyncio.to_thread(lambda: [p for p in trash.iterdir() if p.name.startswith(TRASH_PREFIX)] if trash.is_dir() else [])
        for p in entries:
            parts = p.name.split("--")
            if len(parts) >= 4:
                mid, version = parts[1], parts[2]
                if not self.engine.layout.model_dir(mid, version).exists():
                    await self.engine.db.write(lambda c, m=mid, v=version: _forget(c, m, v))
            try:
                await asyncio.to_thread(safefs.remove_tree, self.engine.layout.home, p)
            except (OSError, MavailError) as exc:
                log.warning("could not delete %s left in the trash: %s", p, exc)

        def w(conn: Any) -> tuple[list[tuple[str, str]], list[tuple[Any, ...]]]:
            live = [tuple(r) for r in conn.execute(
                "SELECT update_id, model_id, from_version, to_version, started_at FROM model_updates "
                "WHERE status NOT IN ('completed', 'failed', 'interrupted') ORDER BY started_at DESC")]
            conn.execute("UPDATE model_updates SET status = 'interrupted', finished_at = ? WHERE status NOT IN ('completed', 'failed', 'interrupted')",
                         (self.engine.clock.time(),))
            return [(r[0], r[1]) for r in conn.execute("SELECT model_id, version FROM installed_versions")], live

        rows, interrupted = await self.engine.db.write(w)
        gone = await asyncio.to_thread(lambda: [(m, v) for m, v in rows if not self.engine.layout.model_dir(m, v).exists()])
        for m, v in gone:
            # a version whose directory vanished: forget it; promote another if it was current
            await self.engine.db.write(lambda c, m=m, v=v: _forget(c, m, v))
            log.info("forgot %s %s: its directory is gone", m, v)
        for update_id, mid, from_version, to_version, started_at in interrupted:
            await self._resume(update_id, mid, from_version, to_version, started_at)

    async def _resume(self, update_id: str, model_id: str, from_version: str | None, to_version: str, started_at: float) -> None:
        """Carry on an update a crash interrupted: finish its bookkeeping if the switch was made, else run it again.

        It keeps its update_id and joins whatever download of the new version the downloads engine resumed; an
        update the catalog no longer asks for (another version now, or the model gone) stays `interrupted`.
        """
        if model_id in self._jobs:
            return  # an older row for a model whose newer update is resumed: that one stays interrupted
        current, versions = await self._versions(model_id)
        job = UpdateJob(update_id, model_id, from_version, to_version, started_at)
        if current == to_version:
            await self._set(job, "completed", f"now at {to_version} (finished after a restart)")
            self.last[model_id] = job
            log.info("update %s of %s: the switch to %s was made before the restart", update_id, model_id, to_version)
            await self.prune(model_id)
            return
        spec = self.engine.catalog.get(model_id)
        if spec is None or spec.version != to_version or current is None or version_key(to_version) <= version_key(current):
            log.info("update %s of %s to %s stays interrupted: the catalog or the installed versions changed", update_id, model_id, to_version)
            return
        job.from_version = current
        await self._set(job, "downloading", "resumed after a restart")
        self._jobs[model_id] = job
        self.engine.spawn(self._run(job, False), name=f"update-{model_id}")
        log.info("update %s of %s: %s -> %s resumed after a restart", update_id, model_id, current, to_version)

    # --- check / update ------------------------------------------------------------------
    async def check_updates(self) -> dict[str, Any]:
        """Installed models whose catalog version is newer than the current one."""
        rows = await self.engine.db.read(lambda c: c.execute("SELECT model_id, version FROM installed_versions WHERE is_current = 1").fetchall())
        out = []
        for mid, version in rows:
            spec = self.engine.catalog.get(mid)
            if spec is not None and version_key(spec.version) > version_key(version):
                out.append({"model_id": mid, "current_version": version, "latest_version": spec.version, "size_bytes": spec.size_bytes,
                            "updating": self.is_updating(mid)})
        return {"updates": out}

    async def update(self, model_id: str) -> dict[str, Any]:
        """Start updating a model to its catalog version; the work goes on in the background."""
        spec = self.engine.spec(model_id)
        if self.is_updating(model_id):
            job = self._jobs[model_id]
            if job.to_version != spec.version:
                raise Conflict(f"model {model_id!r} is already being updated to {job.to_version}", model_id=model_id, update_id=job.update_id)
            # the same update is under way (started by another call, or resumed after a restart): join it
            return {"success": True, "update_id": job.update_id, "model_id": model_id, "from_version": job.from_version,
                    "to_version": job.to_version, "status": job.status, "joined": True,
                    "message": f"an update to {job.to_version} is already under way ({job.status})"}
        current, versions = await self._versions(model_id)
        if current is None:
            raise InvalidState(f"model {model_id!r} is not installed; download it instead", model_id=model_id)
        if version_key(spec.version) <= version_key(current):
            raise InvalidState(f"model {model_id!r} is already at {current}, the catalog's latest", model_id=model_id, current_version=current)
        if self.engine.activity.busy(model_id, "repairing", "downloading"):
            raise Conflict(f"model {model_id!r} is busy: {', '.join(sorted(self.engine.activity.reasons(model_id)))}", model_id=model_id)
        job = UpdateJob(new_id("update"), model_id, current, spec.version, self.engine.clock.time())
        await self.engine.db.write(lambda c: c.execute(
            "INSERT INTO model_updates (update_id, model_id, from_version, to_version, status, started_at) VALUES (?, ?, ?, ?, 'downloading', ?)",
            (job.update_id, model_id, current, spec.version, job.started_at)))
        self._jobs[model_id] = job
        already = any(v == spec.version for v, _ in versions)
        self.engine.spawn(self._run(job, already), name=f"update-{model_id}")
        self.engine.publish_status_changes([model_id])
        log.info("update %s of %s: %s -> %s started", job.update_id, model_id, current, spec.version)
        return {"success": True, "update_id": job.update_id, "model_id": model_id, "from_version": current, "to_version": spec.version,
                "status": job.status, "joined": False, "message": f"downloading {spec.version} beside {current}" if not already else f"{spec.version} is already on disk"}

    async def _set(self, job: UpdateJob, status: str, message: str = "") -> None:
        job.status, job.message = status, message
        done = status in ("completed", "failed")
        await self.engine.db.write(lambda c: c.execute("UPDATE model_updates SET status = ?, message = ?, finished_at = ? WHERE update_id = ?",
                                                       (status, message, self.engine.clock.time() if done else None, job.update_id)))

    async def _run(self, job: UpdateJob, already: bool) -> None:
        mid = job.model_id
        try:
            with self.engine.activity.hold(mid, "updating"):
                if not already:
                    # files already placed in the version's directory (copied by hand, or left by an interrupted
                    # update) need no download if they are all there: the full check below decides
                    ctx = await self.health.context(mid, job.to_version)
                    files, _ = await asyncio.to_thread(self.health._quick, ctx)
                    already = bool(files) and all(f.actual_size == f.size and f.state not in ("symlink", "unreadable") for f in files.values())
                if not already:
                    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
                    self._waiters[(mid, job.to_version)] = fut
                    try:
                        await self.engine.downloads.ensure(mid)
                        status = await fut
                    finally:
                        self._waiters.pop((mid, job.to_version), None)
                    if status != "completed":
                        raise InvalidState(f"the download of {job.to_version} ended {status}")
                await self._set(job, "verifying")
                ok, detail = await self._verify(mid, job.to_version)
                if not ok:
                    raise InvalidState(f"{job.to_version} failed its full check: {detail}")
                if self.engine.leases.is_leased(mid):
                    await self._set(job, "waiting_for_release", "the model is in use; switching when the last lease ends")
                    self.engine.publish_status_changes([mid])
                    await self.engine.leases.wait_released(mid)
                await self._switch(mid, job.to_version, job)
            await self._set(job, "completed", f"now at {job.to_version}")
            self.engine.events.emit("model_health_alert", model_id=mid, alert_type="update_completed", severity="info",
                                    message=f"updated from {job.from_version} to {job.to_version}", recommended_action="none", update_id=job.update_id)
            log.info("update %s of %s: now at %s", job.update_id, mid, job.to_version)
            await self.prune(mid)
        except asyncio.CancelledError:
            raise
        except MavailError as exc:
            await self._set(job, "failed", exc.message)
            self.engine.events.emit("model_health_alert", model_id=mid, alert_type="update_failed", severity="warning", message=exc.message,
                                    recommended_action="retry_update", update_id=job.update_id)
            log.warning("update %s of %s failed: %s (still at %s)", job.update_id, mid, exc.message, job.from_version)
        except Exception:
            await self._set(job, "failed", "internal error")
            log.exception("update %s of %s failed", job.update_id, mid)
        finally:
            self.last[mid] = job
            self._jobs.pop(mid, None)
            await self.engine.refresh_presence([mid])

    async def _verify(self, model_id: str, version: str) -> tuple[bool, str]:
        """A full check of one installed version (recording what it proves)."""
        ctx = await self.health.context(model_id, version)
        budget = ReadBudget(lambda: self.engine.config.get("health.max_read_mbps"), self.health._cancel)
        files, _extra = await asyncio.to_thread(self.health._full, ctx, budget)
        now = self.engine.clock.time()
        await self.engine.db.write(lambda c: self.health._db_updates(c, ctx, files, now, True))
        bad = [f"{f.path}: {f.state}" for f in files.values() if not f.verified]
        return not bad and bool(files), "; ".join(bad[:5])

    async def _switch(self, model_id: str, version: str, job: UpdateJob | None = None) -> None:
        """Make `version` current in one transaction (the caller made sure no lease holds the model)."""
        crash.point("update.before_switch")

        def w(conn: Any) -> None:
            n = conn.execute("SELECT COUNT(*) FROM installed_versions WHERE model_id = ? AND version = ?", (model_id, version)).fetchone()[0]
            if not n:
                raise InvalidState(f"{model_id} {version} is not installed")
            conn.execute("UPDATE installed_versions SET is_current = CASE WHEN version = ? THEN 1 ELSE 0 END WHERE model_id = ?", (version, model_id))
            if job is not None:
                conn.execute("UPDATE model_updates SET status = 'switched' WHERE update_id = ?", (job.update_id,))
            crash.point("update.in_switch")

        await self.engine.db.write(w)
        crash.point("update.after_switch")
        await self.engine.refresh_presence([model_id])
        log.info("%s switched to %s", model_id, version)

    # --- rollback ------------------------------------------------------------------------
    async def rollback(self, model_id: str) -> dict[str, Any]:
        """Switch back to the newest kept previous version (after any lease ends)."""
        self.engine.spec(model_id)
        if self.is_updating(model_id):
            raise Conflict(f"model {model_id!r} is being updated", model_id=model_id)
        if model_id in self._pending_switch:
            raise Conflict(f"a switch of {model_id!r} is already waiting for its lease to end", model_id=model_id)
        current, versions = await self._versions(model_id)
        others = sorted((v for v, _ in versions if v != current), key=version_key, reverse=True)
        candidates = []
        for v in others:
            ctx = await self.health.context(model_id, v)
            files, _ = await asyncio.to_thread(self.health._quick, ctx)
            if files and all(f.state == "ok" for f in files.values()):
                candidates.append(v)
        if not candidates:
            raise InvalidState(f"model {model_id!r} has no complete previous version to roll back to", model_id=model_id, current_version=current,
                               kept_versions=others)
        target = candidates[0]
        if self.engine.leases.is_leased(model_id):
            async def later() -> None:
                try:
                    with self.engine.activity.hold(model_id, "updating"):
                        await self.engine.leases.wait_released(model_id)
                        await self._switch(model_id, target)
                finally:
                    self._pending_switch.pop(model_id, None)

            self._pending_switch[model_id] = self.engine.spawn(later(), name=f"rollback-{model_id}")
            return {"success": True, "model_id": model_id, "from_version": current, "to_version": target, "pending": True,
                    "message": "the model is in use: the switch happens when the last lease ends"}
        with self.engine.activity.hold(model_id, "updating"):
            await self._switch(model_id, target)
        log.info("%s rolled back from %s to %s", model_id, current, target)
        return {"success": True, "model_id": model_id, "from_version": current, "to_version": target, "pending": False,
                "message": f"rolled back to {target}"}

    # --- remove / prune ------------------------------------------------------------------------
    async def prune(self, model_id: str) -> list[str]:
        """Remove previous versions beyond `updates.keep_versions` (newest kept; leased ones skipped)."""
        keep = self.engine.config.get("updates.keep_versions")
        current, versions = await self._versions(model_id)
        old = sorted((v for v, _ in versions if v != current), key=version_key, reverse=True)
        removed = []
        for v in old[keep:]:
            if self.engine.leases.is_leased(model_id, v):
                continue
            await self._remove_version(model_id, v)
            removed.append(v)
        if removed:
            log.info("pruned %s: removed %s (keeping %d previous)", model_id, ", ".join(removed), keep)
        return removed

    async def remove(self, model_id: str, version: str | None = None) -> dict[str, Any]:
        """`models.remove`: move the version (or every version) to trash, forget it, delete it."""
        current, versions = await self._versions(model_id)
        spec = self.engine.catalog.get(model_id)
        if spec is None and not versions:
            raise ModelNotFound(f"model {model_id!r} is not in the catalog", model_id=model_id)
        if self.engine.leases.is_leased(model_id, version):
            raise Conflict(f"model {model_id!r} is in use", model_id=model_id, active_leases=len(self.engine.leases.leases_for(model_id)))
        busy = self.engine.activity.reasons(model_id)
        if self.engine.downloads.is_active(model_id):
            busy = busy | {"downloading"}
        if busy or self.is_updating(model_id) or model_id in self._pending_switch:
            raise Conflict(f"model {model_id!r} is busy: {', '.join(sorted(busy)) or 'updating'}", model_id=model_id, activity=sorted(busy))
        # the intent is marked before the first await below: from here no lease can be taken on the model
        with self.engine.leases.removing(model_id, version), self.engine.activity.hold(model_id, "removing"):
            on_disk = await asyncio.to_thread(_versions_on_disk, self.engine.layout.home, self.engine.layout.models_dir / model_id)
            known = {v for v, _ in versions} | set(on_disk)
            targets = [version] if version is not None else sorted(known, key=version_key)
            if version is not None and version not in known:
                raise InvalidState(f"{model_id} {version} is not installed", model_id=model_id, version=version, installed=sorted(known))
            # every version directory must be reachable without a link before anything moves
            await asyncio.to_thread(lambda: [_check_version_dir(self.engine.layout.home, self.engine.layout.model_dir(model_id, v)) for v in targets])
            freed = 0
            for v in targets:
                freed += await self._remove_version(model_id, v)
            new_current = None
            if current in targets:
                remaining = sorted((v for v, _ in versions if v not in targets), key=version_key, reverse=True)
                if remaining:
                    new_current = remaining[0]
                    await self.engine.db.write(lambda c: c.execute("UPDATE installed_versions SET is_current = 1 WHERE model_id = ? AND version = ?",
                                                                   (model_id, new_current)))
            await asyncio.to_thread(safefs.rmdir, self.engine.layout.home, self.engine.layout.models_dir / model_id)
            # rescanned before the intent ends, so the next acquire sees what is left
            await self.engine.refresh_presence([model_id])
        if version is None or current in targets:
            self.health._state.pop(model_id, None)
        log.info("removed %s %s (%d bytes)", model_id, ", ".join(targets), freed)
        return {"success": True, "model_id": model_id, "removed_versions": targets, "freed_bytes": freed, "freed_mb": freed / 1048576,
                "current_version": new_current if current in targets else current}

    async def _remove_version(self, model_id: str, version: str) -> int:
        src = self.engine.layout.model_dir(model_id, version)
        trash = self.engine.layout.trash_dir / f"{TRASH_PREFIX}{model_id}--{version}--{secrets.token_hex(4)}"

        home = self.engine.layout.home

        def move() -> int:
            if not _check_version_dir(home, src):
                return 0
            safefs.rename(home, src, trash, create_parents=True)  # one rename, by directory descriptors
            return _tree_size(trash)

        size = await asyncio.to_thread(move)
        await self.engine.db.write(lambda c: _forget(c, model_id, version, promote=False))
        if size or await asyncio.to_thread(safefs.exists, home, trash):
            await asyncio.to_thread(safefs.remove_tree, home, trash)
        return size


def _forget(conn: Any, model_id: str, version: str, promote: bool = True) -> None:
    was_current = conn.execute("SELECT is_current FROM installed_versions WHERE model_id = ? AND version = ?", (model_id, version)).fetchone()
    for table in ("installed_versions", "installed_files", "file_pieces"):
        conn.execute(f"DELETE FROM {table} WHERE model_id = ? AND version = ?", (model_id, version))
    if promote and was_current and was_current[0]:
        rows = [r[0] for r in conn.execute("SELECT version FROM installed_versions WHERE model_id = ?", (model_id,))]
        if rows:
            best = max(rows, key=version_key)
            conn.execute("UPDATE installed_versions SET is_current = 1 WHERE model_id = ? AND version = ?", (model_id, best))


def _tree_size(p: Path) -> int:
    if p.is_symlink():
        return 0
    total = 0
    for root, _dirs, files in os.walk(p, followlinks=False):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _versions_on_disk(home: Path, model_dir: Path) -> list[str]:
    """Names under `models/<id>/` (links included: removing them is refused later, with a clear error)."""
    try:
        fd = safefs.open_dir(home, model_dir)
    except FileNotFoundError:
        return []
    try:
        return sorted(n for n in os.listdir(fd) if stat.S_ISDIR(m := os.stat(n, dir_fd=fd, follow_symlinks=False).st_mode) or stat.S_ISLNK(m))
    finally:
        os.close(fd)


def _check_version_dir(home: Path, path: Path) -> bool:
    """True when `path` is a real directory reached without links, False when nothing is there; LinkRefused otherwise."""
    try:
        st = safefs.lstat(home, path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise safefs.refuse(home, path)
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidState(f"{path.name} under models/ is not a directory; left alone", path=str(path))
    return True
