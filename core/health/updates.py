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
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from mavail.core import crash, installed, safefs
from mavail.core.catalog import version_key
from mavail.core.errors import Conflict, InvalidState, MavailError, ModelNotFound
from mavail.core.health import checks as ck
from mavail.core.health.checks import HealthChecks
from mavail.core.health.model import new_id
from mavail.core.paths import HomeLayout
from mavail.core.ports import BusyView, CatalogView, Emit, LeaseView, PresenceView, Settings, Spawner, StatusSink
from mavail.core.state import Database
from mavail.core.timeutil import Clock, iso

__all__ = ["Removal", "Rollback", "UpdateAvailable", "UpdateJob", "UpdateManager", "UpdateStarted"]

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


@dataclass(frozen=True)
class UpdateAvailable:
    """An installed model whose catalog version is newer than the one in use."""

    model_id: str
    current_version: str
    latest_version: str
    size_bytes: int
    updating: bool
    # an hf:// model whose branch moved: the commit in use, the one the branch names now, and what to do
    pinned_commit: str | None = None
    latest_commit: str | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the commit fields only for a moved branch)."""
        out = {"model_id": self.model_id, "current_version": self.current_version, "latest_version": self.latest_version,
               "size_bytes": self.size_bytes, "updating": self.updating}
        if self.latest_commit is not None:
            out.update(pinned_commit=self.pinned_commit, latest_commit=self.latest_commit, message=self.message)
        return out


@dataclass(frozen=True)
class UpdateStarted:
    """An update started (or joined, when one to the same version was under way)."""

    update_id: str
    model_id: str
    from_version: str | None
    to_version: str
    status: str
    joined: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"update_id": self.update_id, "model_id": self.model_id, "from_version": self.from_version, "to_version": self.to_version,
                "status": self.status, "joined": self.joined, "message": self.message}


@dataclass(frozen=True)
class Rollback:
    """A switch back to a previous version: made, or `pending` until the last lease ends."""

    model_id: str
    from_version: str | None
    to_version: str
    pending: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"model_id": self.model_id, "from_version": self.from_version, "to_version": self.to_version, "pending": self.pending,
                "message": self.message}


@dataclass(frozen=True)
class Removal:
    """What a removal deleted, and the version in use afterwards."""

    model_id: str
    removed_versions: list[str]
    freed_bytes: int
    current_version: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"model_id": self.model_id, "removed_versions": self.removed_versions, "freed_bytes": self.freed_bytes,
                "freed_mb": self.freed_bytes / 1048576, "current_version": self.current_version}


class UpdateManager:
    """Model versions: `models.check_updates`, `models.update`, `models.rollback`, `models.remove`, and pruning.

    It is given narrow ports (see `core.ports`), the shared checking code, and
    callables for what it needs of other services: `ensure_download`,
    `download_active` and `add_download_listener` (downloads) and
    `forget_health` (drops a removed model's health record).
    """

    def __init__(self, *, settings: Settings, clock: Clock, db: Database, layout: HomeLayout, catalog: CatalogView, presence: PresenceView,
                 status: StatusSink, emit: Emit, tasks: Spawner, leases: LeaseView, activity: BusyView, checks: HealthChecks,
                 ensure_download: Callable[[str], Awaitable[Any]], download_active: Callable[[str], bool],
                 add_download_listener: Callable[[Callable[[str, str, str], None]], None], forget_health: Callable[[str], None],
                 hub_moves: Callable[[dict[str, str]], Awaitable[list[Any]]] | None = None) -> None:
        """`hub_moves` (model_id -> version in use) gives the hf:// models whose branch moved past their pinned commit."""
        self._hub_moves = hub_moves
        self._settings = settings
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
        self._ensure_download = ensure_download
        self._download_active = download_active
        self._add_download_listener = add_download_listener
        self._forget_health = forget_health
        self._jobs: dict[str, UpdateJob] = {}
        self._waiters: dict[tuple[str, str], asyncio.Future[str]] = {}
        self._pending_switch: dict[str, asyncio.Task[Any]] = {}
        self.last: dict[str, UpdateJob] = {}

    async def start(self) -> None:
        """Finish what a crash interrupted (see `recover`), then follow downloads to wake updates waiting for one."""
        await self.recover()
        self._add_download_listener(self.on_download)

    # --- state -----------------------------------------------------------------------
    def is_updating(self, model_id: str) -> bool:
        """Whether an update of the model is in progress."""
        return model_id in self._jobs

    def in_progress(self, model_id: str) -> UpdateJob | None:
        """The model's update in progress, if one is."""
        return self._jobs.get(model_id)

    async def _versions(self, model_id: str) -> tuple[str | None, list[tuple[str, float]]]:
        """(current version, [(version, installed_at)] of every installed version)."""
        rows = await self._db.read(lambda c: installed.versions(c, model_id))
        current = next((r[0] for r in rows if r[2]), None)
        return current, [(r[0], r[1]) for r in rows]

    def on_download(self, model_id: str, version: str, status: str) -> None:
        """Downloads listener: wake an update waiting for this version."""
        fut = self._waiters.get((model_id, version))
        if fut is not None and not fut.done() and status in ("completed", "failed", "cancelled"):
            fut.set_result(status)

    async def recover(self) -> None:
        """At start: finish interrupted removals, forget versions whose directory is gone, resume interrupted updates."""
        trash = self._layout.trash_dir
        entries = await asyncio.to_thread(lambda: [p for p in trash.iterdir() if p.name.startswith(TRASH_PREFIX)] if trash.is_dir() else [])
        for p in entries:
            parts = p.name.split("--")
            if len(parts) >= 4:
                mid, version = parts[1], parts[2]
                if not self._layout.model_dir(mid, version).exists():
                    await self._db.write(lambda c, m=mid, v=version: installed.forget_version(c, m, v))
            try:
                await asyncio.to_thread(safefs.remove_tree, self._layout.home, p)
            except (OSError, MavailError) as exc:
                log.warning("could not delete %s left in the trash: %s", p, exc)

        def w(conn: sqlite3.Connection) -> tuple[list[tuple[str, str]], list[tuple[Any, ...]]]:
            live = [tuple(r) for r in conn.execute(
                "SELECT update_id, model_id, from_version, to_version, started_at FROM model_updates "
                "WHERE status NOT IN ('completed', 'failed', 'interrupted') ORDER BY started_at DESC")]
            conn.execute("UPDATE model_updates SET status = 'interrupted', finished_at = ? WHERE status NOT IN ('completed', 'failed', 'interrupted')",
                         (self._clock.time(),))
            return installed.every_version(conn), live

        rows, interrupted = await self._db.write(w)
        gone = await asyncio.to_thread(lambda: [(m, v) for m, v in rows if not self._layout.model_dir(m, v).exists()])
        for m, v in gone:
            # a version whose directory vanished: forget it; promote another if it was current
            await self._db.write(lambda c, m=m, v=v: installed.forget_version(c, m, v))
            log.info("forgot %s %s: its directory is gone", m, v)
        if gone:
            ids = sorted({m for m, _ in gone})
            await self._presence.refresh(ids)
            self._status_changed(ids)
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
        spec = self._catalog.get(model_id)
        if spec is None or spec.version != to_version or current is None or version_key(to_version) <= version_key(current):
            log.info("update %s of %s to %s stays interrupted: the catalog or the installed versions changed", update_id, model_id, to_version)
            return
        job.from_version = current
        await self._set(job, "downloading", "resumed after a restart")
        self._jobs[model_id] = job
        self._status_changed([model_id])
        self._tasks.spawn(self._run(job, False), name=f"update-{model_id}")
        log.info("update %s of %s: %s -> %s resumed after a restart", update_id, model_id, current, to_version)

    # --- check / update ------------------------------------------------------------------
    async def check_updates(self) -> list[UpdateAvailable]:
        """Installed models whose catalog version is newer than the current one."""
        current = await self._db.read(installed.current_versions)
        out = []
        for mid, version in current.items():
            spec = self._catalog.get(mid)
            if spec is not None and version_key(spec.version) > version_key(version):
                out.append(UpdateAvailable(mid, version, spec.version, spec.size_bytes, self.is_updating(mid)))
        listed = {u.model_id for u in out}
        hub = {mid: v for mid, v in current.items() if mid not in listed and (s := self._catalog.get(mid)) is not None and s.source}
        if self._hub_moves is not None and hub:
            for mv in await self._hub_moves(hub):
                out.append(UpdateAvailable(mv.model_id, mv.version, mv.version, 0, self.is_updating(mv.model_id), mv.pinned_commit,
                                           mv.latest_commit, f"{mv.revision} now points at {mv.latest_commit}; {mv.version} stays "
                                           f"pinned to {mv.pinned_commit}: give the catalog entry a new version to download the "
                                           f"new commit beside it"))
        return out

    async def update(self, model_id: str) -> UpdateStarted:
        """Start updating a model to its catalog version; the work goes on in the background."""
        spec = self._catalog.spec(model_id)
        if self.is_updating(model_id):
            job = self._jobs[model_id]
            if job.to_version != spec.version:
                raise Conflict(f"model {model_id!r} is already being updated to {job.to_version}", model_id=model_id, update_id=job.update_id)
            # the same update is under way (started by another call, or resumed after a restart): join it
            return UpdateStarted(job.update_id, model_id, job.from_version, job.to_version, job.status, True,
                                 f"an update to {job.to_version} is already under way ({job.status})")
        current, versions = await self._versions(model_id)
        if current is None:
            raise InvalidState(f"model {model_id!r} is not installed; download it instead", model_id=model_id)
        if version_key(spec.version) <= version_key(current):
            raise InvalidState(f"model {model_id!r} is already at {current}, the catalog's latest", model_id=model_id, current_version=current)
        if self._activity.busy(model_id, "repairing", "downloading"):
            raise Conflict(f"model {model_id!r} is busy: {', '.join(sorted(self._activity.reasons(model_id)))}", model_id=model_id)
        job = UpdateJob(new_id("update"), model_id, current, spec.version, self._clock.time())
        await self._db.write(lambda c: c.execute(
            "INSERT INTO model_updates (update_id, model_id, from_version, to_version, status, started_at) VALUES (?, ?, ?, ?, 'downloading', ?)",
            (job.update_id, model_id, current, spec.version, job.started_at)))
        self._jobs[model_id] = job
        already = any(v == spec.version for v, _ in versions)
        self._tasks.spawn(self._run(job, already), name=f"update-{model_id}")
        self._status_changed([model_id])
        log.info("update %s of %s: %s -> %s started", job.update_id, model_id, current, spec.version)
        return UpdateStarted(job.update_id, model_id, current, spec.version, job.status, False,
                             f"downloading {spec.version} beside {current}" if not already else f"{spec.version} is already on disk")

    async def _set(self, job: UpdateJob, status: str, message: str = "") -> None:
        job.status, job.message = status, message
        done = status in ("completed", "failed")
        await self._db.write(lambda c: c.execute("UPDATE model_updates SET status = ?, message = ?, finished_at = ? WHERE update_id = ?",
                                                       (status, message, self._clock.time() if done else None, job.update_id)))

    async def _run(self, job: UpdateJob, already: bool) -> None:
        mid = job.model_id
        try:
            with self._activity.hold(mid, "updating"):
                if not already:
                    # files already placed in the version's directory (copied by hand, or left by an interrupted
                    # update) need no download if they are all there: the full check below decides
                    ctx = await self._checks.context(mid, job.to_version)
                    files, _ = await asyncio.to_thread(self._checks.quick, ctx, None)
                    already = bool(files) and all(f.actual_size == f.size and f.state not in ("symlink", "unreadable") for f in files.values())
                if not already:
                    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
                    self._waiters[(mid, job.to_version)] = fut
                    try:
                        await self._ensure_download(mid)
                        status = await fut
                    finally:
                        self._waiters.pop((mid, job.to_version), None)
                    if status != "completed":
                        raise InvalidState(f"the download of {job.to_version} ended {status}")
                await self._set(job, "verifying")
                ok, detail = await self._verify(mid, job.to_version)
                if not ok:
                    raise InvalidState(f"{job.to_version} failed its full check: {detail}")
                if self._leases.is_leased(mid):
                    await self._set(job, "waiting_for_release", "the model is in use; switching when the last lease ends")
                    self._status_changed([mid])
                    await self._leases.wait_released(mid)
                await self._switch(mid, job.to_version, job)
            await self._set(job, "completed", f"now at {job.to_version}")
            self._emit("model_health_alert", model_id=mid, alert_type="update_completed", severity="info",
                                    message=f"updated from {job.from_version} to {job.to_version}", recommended_action="none", update_id=job.update_id)
            log.info("update %s of %s: now at %s", job.update_id, mid, job.to_version)
            await self.prune(mid)
        except asyncio.CancelledError:
            raise
        except MavailError as exc:
            await self._set(job, "failed", exc.message)
            self._emit("model_health_alert", model_id=mid, alert_type="update_failed", severity="warning", message=exc.message,
                                    recommended_action="retry_update", update_id=job.update_id)
            log.warning("update %s of %s failed: %s (still at %s)", job.update_id, mid, exc.message, job.from_version)
        except Exception:
            await self._set(job, "failed", "internal error")
            log.exception("update %s of %s failed", job.update_id, mid)
        finally:
            self.last[mid] = job
            self._jobs.pop(mid, None)
            await self._presence.refresh([mid])
            self._status_changed([mid])

    async def _verify(self, model_id: str, version: str) -> tuple[bool, str]:
        """A full check of one installed version (recording what it proves), at full speed: the read budget is the scheduled checks'."""
        ctx = await self._checks.context(model_id, version)
        files, _extra = await asyncio.to_thread(self._checks.full, ctx, self._checks.unlimited())
        now = self._clock.time()
        await self._db.write(lambda c: ck.record_results(c, ctx, files, now, True))
        bad = [f"{f.path}: {f.state}" for f in files.values() if not f.verified]
        return not bad and bool(files), "; ".join(bad[:5])

    async def _switch(self, model_id: str, version: str, job: UpdateJob | None = None) -> None:
        """Make `version` current in one transaction (the caller made sure no lease holds the model)."""
        crash.point("update.before_switch")

        def w(conn: sqlite3.Connection) -> None:
            if not any(v == version for v, _, _ in installed.versions(conn, model_id)):
                raise InvalidState(f"{model_id} {version} is not installed")
            installed.set_current(conn, model_id, version)
            if job is not None:
                conn.execute("UPDATE model_updates SET status = 'switched' WHERE update_id = ?", (job.update_id,))
            crash.point("update.in_switch")

        await self._db.write(w)
        crash.point("update.after_switch")
        await self._presence.refresh([model_id])
        self._status_changed([model_id])
        log.info("%s switched to %s", model_id, version)

    # --- rollback ------------------------------------------------------------------------
    async def rollback(self, model_id: str) -> Rollback:
        """Switch back to the newest kept previous version (after any lease ends)."""
        self._catalog.spec(model_id)
        if self.is_updating(model_id):
            raise Conflict(f"model {model_id!r} is being updated", model_id=model_id)
        if model_id in self._pending_switch:
            raise Conflict(f"a switch of {model_id!r} is already waiting for its lease to end", model_id=model_id)
        current, versions = await self._versions(model_id)
        others = sorted((v for v, _ in versions if v != current), key=version_key, reverse=True)
        candidates = []
        for v in others:
            ctx = await self._checks.context(model_id, v)
            files, _ = await asyncio.to_thread(self._checks.quick, ctx, None)
            if files and all(f.state == "ok" for f in files.values()):
                candidates.append(v)
        if not candidates:
            raise InvalidState(f"model {model_id!r} has no complete previous version to roll back to", model_id=model_id, current_version=current,
                               kept_versions=others)
        target = candidates[0]
        if self._leases.is_leased(model_id):
            async def later() -> None:
                try:
                    with self._activity.hold(model_id, "updating"):
                        await self._leases.wait_released(model_id)
                        await self._switch(model_id, target)
                finally:
                    self._pending_switch.pop(model_id, None)

            self._pending_switch[model_id] = self._tasks.spawn(later(), name=f"rollback-{model_id}")
            return Rollback(model_id, current, target, True, "the model is in use: the switch happens when the last lease ends")
        with self._activity.hold(model_id, "updating"):
            await self._switch(model_id, target)
        log.info("%s rolled back from %s to %s", model_id, current, target)
        return Rollback(model_id, current, target, False, f"rolled back to {target}")

    # --- remove / prune ------------------------------------------------------------------------
    async def prune(self, model_id: str) -> list[str]:
        """Remove previous versions beyond `updates.keep_versions` (newest kept; leased ones skipped)."""
        keep = self._settings.get("updates.keep_versions")
        current, versions = await self._versions(model_id)
        old = sorted((v for v, _ in versions if v != current), key=version_key, reverse=True)
        removed = []
        if old[keep:]:
            await self._leases.refresh_elsewhere()
        for v in old[keep:]:
            if self._leases.is_leased(model_id, v):
                continue
            elsewhere = self._leases.leased_elsewhere(model_id, v)
            if elsewhere:
                log.info("%s %s not pruned: %s", model_id, v, "; ".join(elsewhere))
                continue
            await self._remove_version(model_id, v)
            removed.append(v)
        if removed:
            log.info("pruned %s: removed %s (keeping %d previous)", model_id, ", ".join(removed), keep)
        return removed

    async def remove(self, model_id: str, version: str | None = None) -> Removal:
        """`models.remove`: move the version (or every version) to trash, forget it, delete it."""
        current, versions = await self._versions(model_id)
        spec = self._catalog.get(model_id)
        if spec is None and not versions:
            raise ModelNotFound(f"model {model_id!r} is not in the catalog", model_id=model_id)
        if self._leases.is_leased(model_id, version):
            raise Conflict(f"model {model_id!r} is in use", model_id=model_id, active_leases=len(self._leases.leases_for(model_id)))
        await self._leases.refresh_elsewhere()  # removing() below refuses a model other engines on a shared store hold
        busy = self._activity.reasons(model_id)
        if self._download_active(model_id):
            busy = busy | {"downloading"}
        if busy or self.is_updating(model_id) or model_id in self._pending_switch:
            raise Conflict(f"model {model_id!r} is busy: {', '.join(sorted(busy)) or 'updating'}", model_id=model_id, activity=sorted(busy))
        # the intent is marked before the first await below: from here no lease can be taken on the model
        with self._leases.removing(model_id, version), self._activity.hold(model_id, "removing"):
            on_disk = await asyncio.to_thread(_versions_on_disk, self._layout.home, self._layout.models_dir / model_id)
            known = {v for v, _ in versions} | set(on_disk)
            targets = [version] if version is not None else sorted(known, key=version_key)
            if version is not None and version not in known:
                raise InvalidState(f"{model_id} {version} is not installed", model_id=model_id, version=version, installed=sorted(known))
            # every version directory must be reachable without a link before anything moves
            await asyncio.to_thread(lambda: [_check_version_dir(self._layout.home, self._layout.model_dir(model_id, v)) for v in targets])
            freed = 0
            for v in targets:
                freed += await self._remove_version(model_id, v)
            new_current = None
            if current in targets:
                remaining = sorted((v for v, _ in versions if v not in targets), key=version_key, reverse=True)
                if remaining:
                    new_current = remaining[0]
                    await self._db.write(lambda c: installed.set_current(c, model_id, new_current))
            await asyncio.to_thread(safefs.rmdir, self._layout.home, self._layout.models_dir / model_id)
            if version is None or current in targets:
                self._forget_health(model_id)
            # rescanned before the intent ends, so the next acquire sees what is left
            await self._presence.refresh([model_id])
            self._status_changed([model_id])
        log.info("removed %s %s (%d bytes)", model_id, ", ".join(targets), freed)
        return Removal(model_id, targets, freed, new_current if current in targets else current)

    async def _remove_version(self, model_id: str, version: str) -> int:
        src = self._layout.model_dir(model_id, version)
        trash = self._layout.trash_dir / f"{TRASH_PREFIX}{model_id}--{version}--{secrets.token_hex(4)}"

        home = self._layout.home

        def move() -> int:
            if not _check_version_dir(home, src):
                return 0
            safefs.rename(home, src, trash, create_parents=True)  # one rename, by directory descriptors
            return _tree_size(trash)

        size = await asyncio.to_thread(move)
        await self._db.write(lambda c: installed.forget_version(c, model_id, version, promote=False))
        if size or await asyncio.to_thread(safefs.exists, home, trash):
            await asyncio.to_thread(safefs.remove_tree, home, trash)
        return size


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
