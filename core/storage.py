"""Storage management: real disk figures, hot/warm/cold tiers, retention policies and a crash-safe cleanup.

Everything on disk is measured with `lstat` and never through a symbolic
link: a model's size is the blocks its files occupy (hard links counted once),
a symlink planted in `models/` is reported and left alone, and deletion walks
directories through file descriptors opened with O_NOFOLLOW.

Rules (config keys under `storage.`):
- tier: hot = used or requested within `hot_days`, or in use now; warm = within
  `warm_days`; cold = the rest (a never-used model counts from its installation);
- retention, for `cleanup_type="auto"`: a model is kept when it was used in the
  last `keep_used_within_days` days (min_unused_days overrides), or, with
  preserve_frequently_used, used more than `keep_used_more_than` times in the
  last `frequent_window_days`; the rest are removed;
- ceiling and floor: while the models would still exceed `max_gb` (or the
  analytics.cleanup threshold), or free space would stay under `min_free_gb`,
  further models are added, least recently used first, never a hot one;
- never removed: a model under a lease, busy (downloading, checking, repairing,
  updating...), or with requests queued for it; anything that is not a real
  directory named like a model id directly under `models/`;
- partial download data (entries of `partial/`, `partial/<model_id>/...`)
  untouched for `partial_max_age_days` and not owned by a download (active,
  or with a download record that is not completed or cancelled) is offered too.

A removal renames the model directory into `trash/` (one atomic step, after a
journal row in `storage_trash`), deletes its installed_* rows, deletes the
files, and drops the journal row. A restart finishes a removal whose directory
reached the trash and reverts (forgets) one whose directory never moved.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import psutil

from mavail.core import crash, safefs
from mavail.core import installed as installed_store
from mavail.core.errors import InvalidParams, MavailError, NotFound
from mavail.core.store import STORE_DIR, SharedStore, VersionLock
from mavail.core.paths import ENGINE_PARTIAL_DIRS, HomeLayout, safe_join
from mavail.core.timeutil import Clock, days_text, iso

if TYPE_CHECKING:
    from mavail.core.ports import BusyView, CatalogView, Emit, LeaseView, PresenceView, Settings, Spawner
    from mavail.core.state import Database

log = logging.getLogger("mavail.storage")

GIB = 1024**3
DAY = 86400.0
MODEL_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
PLAN_TTL_S = 900.0


# --- measuring (worker threads) ------------------------------------------------------
@dataclass
class TreeSize:
    """What a directory tree holds, measured without following symlinks."""

    bytes: int = 0  # allocated blocks (st_blocks * 512), each inode once
    apparent_bytes: int = 0  # st_size sum, each inode once
    files: int = 0
    symlinks: int = 0
    newest_mtime: float = 0.0


def measure(path: Path) -> TreeSize:
    """Size of the file or tree at `path` (lstat only; a symlink counts as itself)."""
    out = TreeSize()
    seen: set[tuple[int, int]] = set()

    def add(st: os.stat_result) -> None:
        out.newest_mtime = max(out.newest_mtime, st.st_mtime)
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1:
            if key in seen:
                return
            seen.add(key)
        out.bytes += st.st_blocks * 512
        out.apparent_bytes += st.st_size

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return out
    add(st)
    if stat.S_ISLNK(st.st_mode):
        out.symlinks += 1
        return out
    if not stat.S_ISDIR(st.st_mode):
        out.files += 1
        return out
    stack = [str(path)]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                add(st)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
                elif stat.S_ISLNK(st.st_mode):
                    out.symlinks += 1
                else:
                    out.files += 1
    return out


def remove_tree(home: Path, path: Path) -> int:
    """Delete the file, symlink or directory tree at `path` without following any link below `home`; return bytes freed.

    Bytes freed are the blocks of every inode whose last link this removed
    (directories included), the same measure as `measure`.
    """
    return safefs.remove_tree(home, path)


@dataclass
class DiskEntry:
    """One entry directly under `models/` or `partial/`."""

    name: str
    path: Path
    kind: str  # dir | symlink | file | other
    size: TreeSize
    versions: list[str] = field(default_factory=list)


def scan_dir(base: Path, with_versions: bool = False) -> list[DiskEntry]:
    """Measure every entry directly under `base` (lstat; symlinks are not followed)."""
    out: list[DiskEntry] = []
    try:
        it = os.scandir(base)
    except FileNotFoundError:
        return out
    with it:
        entries = list(it)
    for e in sorted(entries, key=lambda e: e.name):
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
        p = Path(e.path)
        versions: list[str] = []
        if with_versions and kind == "dir":
            try:
                versions = sorted(v.name for v in os.scandir(p) if v.is_dir(follow_symlinks=False))
            except OSError:
                pass
        out.append(DiskEntry(e.name, p, kind, measure(p), versions))
    return out


# --- plans ---------------------------------------------------------------------------
def cleanup_confidence(idle_days: float, keep_days: float, uses: int) -> float:
    """How sure a cleanup recommendation is that the entry will not be missed, in [0.5, 0.95].

    ``past = 1 - exp(-max(0, idle_days - keep_days) / keep_days)`` grows from 0 at
    the retention threshold (0.63 at twice it, 0.86 at three times);
    ``history = 1 / (1 + log10(1 + uses))`` is 1 for a model never used and
    shrinks with its recorded generations (0.5 at 9 uses, 0.33 at 99): a model
    with a long history that merely paused is likelier to be wanted again;
    ``confidence = 0.5 + 0.45 * past * history``. idle_days counts from the last
    use or request, else from the installation; for partial download data it is
    the age of the data, keep_days `partial_max_age_days` and uses 0. Entries
    added only to meet the ceiling or floor are within retention, so they read
    0.5. A `keep_days` of 0 counts any idle time as fully past the threshold.
    """
    over = max(0.0, idle_days - keep_days)
    if keep_days > 0:
        past = 1.0 - math.exp(-over / keep_days)
    else:
        past = 1.0 if over > 0 else 0.0
    history = 1.0 / (1.0 + math.log10(1 + max(0, uses)))
    return 0.5 + 0.45 * past * history


@dataclass
class PlanItem:
    """One thing a cleanup will remove, and why."""

    kind: str  # model | partial | shared_partial
    name: str  # the entry's name under models/ or partial/ (shared_partial: <model>/<version> under the store's partial/)
    model_id: str | None
    size_bytes: int
    reason: str
    confidence: float
    last_used: float | None
    usage_count: int

    @property
    def action(self) -> str:
        """safe_to_remove at confidence >= 0.75, else consider_removing (confidence: see `cleanup_confidence`;
        1.0 for an entry the user named in a manual cleanup)."""
        return "safe_to_remove" if self.confidence >= 0.75 else "consider_removing"

    def to_dict(self, home: Path) -> dict[str, Any]:
        """The item as reported by storage.cleanup and analytics.cleanup."""
        rel = {"model": "models/", "shared_partial": f"models/{STORE_DIR}/partial/"}.get(self.kind, "partial/") + self.name
        return {"kind": self.kind, "model_id": self.model_id, "path": rel, "size_bytes": self.size_bytes,
                "size_mb": self.size_bytes / 1024**2, "size_gb": self.size_bytes / GIB, "reason": self.reason,
                "confidence": round(self.confidence, 3), "action": self.action, "last_used": iso(self.last_used),
                "usage_count": self.usage_count}


@dataclass
class Plan:
    """A computed cleanup: what to remove, what is kept (and why), what was skipped."""

    plan_id: str
    created_at: float
    items: list[PlanItem]
    preserved: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    models_bytes: int
    free_bytes: int
    processed: int


@dataclass
class CleanupResult:
    """What a cleanup did (or, for a dry run, would do): its plan, what it removed, kept and skipped, the bytes freed."""

    dry_run: bool
    plan_id: str
    plan: list[dict[str, Any]]
    cleanup_id: str | None
    models_removed: list[str]
    partial_removed: list[str]
    bytes_freed: int
    preserved: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    processed: int

    def to_dict(self) -> dict[str, Any]:
        """The figures as storage.cleanup reports them."""
        planned = sum(i["size_bytes"] for i in self.plan)
        return {
            "dry_run": self.dry_run,
            "plan_id": self.plan_id,
            "plan": self.plan,
            "planned_savings_gb": planned / GIB,
            "planned_savings_bytes": planned,
            "cleanup_id": self.cleanup_id,
            "models_removed": self.models_removed,
            "partial_removed": self.partial_removed,
            "space_freed_gb": self.bytes_freed / GIB,
            "bytes_freed": self.bytes_freed,
            "models_preserved": [p["model_id"] for p in self.preserved],
            "preserved": self.preserved,
            "skipped": self.skipped,
            "errors": self.errors,
            "summary": {"total_processed": self.processed, "removed": len(self.models_removed), "preserved": len(self.preserved),
                        "errors": len(self.errors)},
        }


class CleanupCrash(BaseException):
    """Raised by a test's fault hook to stop a cleanup the way a crash would (never caught by the cleanup)."""


class StorageManager:
    """storage.info, retention plans, crash-safe removal and storage_warning events.

    The other services' figures come as callables: `usage_of(model_id)` gives
    (last use or request, uses), `usage_frequency(model_id)` uses a day,
    `uses_since(ts)` uses per model since a time, `downloading(model_id)`
    whether a download of it runs, `has_waiting(model_id)` whether requests
    are queued for it, `forget_health(model_id)` drops what health knew of a
    removed model. `fault`, for tests, is called at each cleanup stage.
    The engine calls `on_download` for every download that changes state.
    """

    def __init__(self, settings: "Settings", clock: Clock, db: "Database", layout: HomeLayout, catalog: "CatalogView",
                 presence: "PresenceView", tasks: "Spawner", leases: "LeaseView", activity: "BusyView", emit: "Emit", *,
                 usage_of: Callable[[str], tuple[float | None, int]], usage_frequency: Callable[[str], float],
                 uses_since: Callable[[float], Awaitable[dict[str, int]]], downloading: Callable[[str], bool],
                 has_waiting: Callable[[str], bool], forget_health: Callable[[str], None] = lambda model_id: None,
                 fault: Callable[[str], None] | None = None, store: SharedStore | None = None) -> None:
        self._settings = settings
        self._clock = clock
        self._db = db
        self._layout = layout
        self._catalog = catalog
        self._presence = presence
        self._tasks = tasks
        self._leases = leases
        self._activity = activity
        self._emit = emit
        self._usage_of = usage_of
        self._usage_frequency = usage_frequency
        self._uses_since = uses_since
        self._downloading = downloading
        self._has_waiting = has_waiting
        self._forget_health = forget_health
        self._fault_hook = fault
        self._store = store  # a shared model store: its abandoned partial data is cleaned up too
        self._plans: dict[str, Plan] = {}
        self._lock = asyncio.Lock()
        self._warn_state: dict[str, str] = {"free_space": "ok", "ceiling": "ok"}
        self._check_pending = False
        self.last_check: dict[str, Any] | None = None

    # --- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        """Finish or revert interrupted cleanups, then start the periodic threshold check."""
        await self.recover()
        self._tasks.spawn(self._check_loop(), name="storage-check")
        self._settings.on_change(self._on_config)

    def _on_config(self, changed: dict[str, Any]) -> None:
        if any(k.startswith("storage.") for k in changed):
            self.schedule_check()

    def on_download(self, model_id: str, version: str, status: str) -> None:
        """A download changed state: a completed one may cross a threshold."""
        if status == "completed":
            self.schedule_check()

    def schedule_check(self) -> None:
        """Run a threshold check soon (coalesced)."""
        if self._check_pending:
            return
        self._check_pending = True

        async def run() -> None:
            try:
                await self.check_thresholds()
            finally:
                self._check_pending = False

        self._tasks.spawn(run(), name="storage-check-once")

    async def _check_loop(self) -> None:
        while True:
            try:
                await self.check_thresholds()
            except Exception:
                log.exception("storage check failed")
            await asyncio.sleep(float(self._settings.get("storage.check_interval_s")))

    # --- figures -----------------------------------------------------------
    def _disk(self) -> tuple[Any, list[DiskEntry], list[DiskEntry], TreeSize]:
        models_dir = self._layout.models_dir
        models_dir.mkdir(parents=True, exist_ok=True)
        du = psutil.disk_usage(str(models_dir))
        models = [e for e in scan_dir(models_dir, with_versions=True) if e.name != STORE_DIR]  # a shared store's own files
        return du, models, scan_dir(self._layout.partial_dir), measure(self._layout.trash_dir)

    async def _installed_at(self) -> dict[str, float]:
        return await self._db.read(installed_store.latest_install_times)

    def blockers(self, model_id: str) -> list[str]:
        """Why `model_id` must not be removed now (empty when it may be)."""
        out = []
        if self._leases.is_leased(model_id):
            out.append("in use (leased)")
        out += self._leases.leased_elsewhere(model_id)
        reasons = self._activity.reasons(model_id)
        if reasons:
            out.append("busy: " + ", ".join(sorted(reasons)))
        if self._has_waiting(model_id):
            out.append("requests are queued for it")
        if not reasons and self._downloading(model_id):  # an active download holds "downloading": named once
            out.append("downloading")
        return out

    def _last_activity(self, model_id: str) -> tuple[float | None, int]:
        return self._usage_of(model_id)

    def _tier(self, model_id: str, reference: float | None, now: float) -> str:
        if self._leases.is_leased(model_id):
            return "hot"
        if reference is None:
            return "cold"
        idle = (now - reference) / DAY
        if idle <= float(self._settings.get("storage.hot_days")):
            return "hot"
        if idle <= float(self._settings.get("storage.warm_days")):
            return "warm"
        return "cold"

    def _partial_owner(self, name: str) -> str | None:
        ids = self._catalog.models
        if name in ids:
            return name
        best = None
        for mid in ids:
            if name.startswith(mid) and len(name) > len(mid) and name[len(mid)] in "._-@" and (best is None or len(mid) > len(best)):
                best = mid
        return best

    async def _downloads_kept(self) -> set[str]:
        """Models with a download record that may still use its partial data (any state but completed or cancelled)."""
        def q(c: Any) -> set[str]:
            return {r[0] for r in c.execute("SELECT model_id FROM downloads WHERE status NOT IN ('completed', 'cancelled')")}

        return await self._db.read(q)

    def _partial_owned(self, owner: str | None, kept: set[str] = frozenset()) -> bool:  # type: ignore[assignment]
        """Whether partial data of `owner` is still wanted: a download record that may resume it, or a download running now."""
        if owner is None:
            return False
        return owner in kept or self._activity.busy(owner, "downloading") or self._downloading(owner)

    def _partial_entry_owned(self, name: str, owner: str | None, kept: set[str] = frozenset()) -> bool:  # type: ignore[assignment]
        """Whether the entry `name` of partial/ is still wanted; the engine's own repair folders while any repair runs."""
        if name in ENGINE_PARTIAL_DIRS:
            return any(self._activity.busy(mid, "repairing") for mid in self._catalog.models)
        return self._partial_owned(owner, kept)

    async def info(self) -> dict[str, Any]:
        """storage.info: the filesystem, every model's measured size, tier and use, partial data, suggestions."""
        du, models, partial, trash = await asyncio.to_thread(self._disk)
        installed = await self._installed_at()
        now = self._clock.time()
        rows = []
        skipped = []
        models_bytes = 0
        for e in models:
            models_bytes += e.size.bytes
            if e.kind != "dir" or not MODEL_ID_RE.fullmatch(e.name):
                skipped.append({"name": e.name, "kind": e.kind, "size_bytes": e.size.bytes,
                                "reason": "symbolic link: not followed, never removed" if e.kind == "symlink" else "not a model directory"})
                continue
            last, uses = self._last_activity(e.name)
            ref = last if last is not None else installed.get(e.name, e.size.newest_mtime or None)
            rows.append({
                "model_id": e.name,
                "size_gb": e.size.bytes / GIB,
                "size_bytes": e.size.bytes,
                "apparent_size_bytes": e.size.apparent_bytes,
                "files": e.size.files,
                "versions": e.versions,
                "last_accessed": iso(last),
                "installed_at": iso(installed.get(e.name)),
                "usage_frequency": self._usage_frequency(e.name),
                "total_uses": uses,
                "storage_tier": self._tier(e.name, ref, now),
                "in_catalog": e.name in self._catalog.models,
                "blocked_by": self.blockers(e.name),
            })
        rows.sort(key=lambda r: (-r["size_bytes"], r["model_id"]))
        max_age = float(self._settings.get("storage.partial_max_age_days")) * DAY
        kept = await self._downloads_kept()
        partial_rows = []
        for e in partial:
            owner = self._partial_owner(e.name)
            orphan = not self._partial_entry_owned(e.name, owner, kept) and (now - e.size.newest_mtime) >= max_age
            partial_rows.append({"name": e.name, "model_id": owner, "size_bytes": e.size.bytes, "modified": iso(e.size.newest_mtime),
                                 "orphaned": orphan})
        plan = await self._make_plan("auto", None, None, True, None, du=du, models=models, partial=partial, installed=installed, keep=False)
        max_gb = float(self._settings.get("storage.max_gb"))
        return {
            "storage_summary": {
                "total_capacity_gb": du.total / GIB,
                "used_space_gb": du.used / GIB,
                "available_space_gb": du.free / GIB,
                "usage_percent": du.percent,
                "total_capacity_bytes": du.total,
                "used_space_bytes": du.used,
                "available_space_bytes": du.free,
                "models_count": len(rows),
                "models_size_bytes": models_bytes,
                "models_size_gb": models_bytes / GIB,
                "partial_size_bytes": sum(e.size.bytes for e in partial),
                "partial_size_gb": sum(e.size.bytes for e in partial) / GIB,
                "trash_size_bytes": trash.bytes,
                "max_gb": max_gb,
                "ceiling_usage_percent": (100.0 * models_bytes / (max_gb * GIB)) if max_gb > 0 else None,
                "min_free_gb": float(self._settings.get("storage.min_free_gb")),
                "below_free_floor": du.free < float(self._settings.get("storage.min_free_gb")) * GIB,
                "models_directory": str(self._layout.models_dir),
            },
            "models_storage": rows,
            "partial_downloads": {"size_bytes": sum(e.size.bytes for e in partial), "entries": partial_rows},
            "skipped": skipped,
            "cleanup_suggestions": {
                "potential_savings_gb": sum(i.size_bytes for i in plan.items) / GIB,
                "safe_to_remove_count": sum(1 for i in plan.items if i.action == "safe_to_remove"),
                "candidates": [i.model_id or i.name for i in plan.items],
            },
            "tier_rules": {"hot_days": float(self._settings.get("storage.hot_days")),
                           "warm_days": float(self._settings.get("storage.warm_days"))},
        }

    # --- planning ----------------------------------------------------------
    async def _make_plan(self, cleanup_type: str, models_to_remove: list[str] | None, min_unused_days: float | None,
                         preserve_frequently_used: bool, threshold_gb: float | None, include_partial: bool = True,
                         du: Any = None, models: list[DiskEntry] | None = None, partial: list[DiskEntry] | None = None,
                         installed: dict[str, float] | None = None, keep: bool = True) -> Plan:
        if models is None or partial is None or du is None:
            du, models, partial, _ = await asyncio.to_thread(self._disk)
        if installed is None:
            installed = await self._installed_at()
        cfg = self._settings
        now = self._clock.time()
        keep_days = float(cfg.get("storage.keep_used_within_days")) if min_unused_days is None else float(min_unused_days)
        keep_more = int(cfg.get("storage.keep_used_more_than"))
        window = float(cfg.get("storage.frequent_window_days"))
        recent = await self._uses_since(now - window * DAY)
        items: list[PlanItem] = []
        preserved: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        keepable: list[tuple[float, int, DiskEntry, float | None, int]] = []  # kept only by retention: pressure may take them
        wanted = set(models_to_remove or [])
        models_bytes = sum(e.size.bytes for e in models)
        processed = 0
        for e in models:
            if e.kind != "dir" or not MODEL_ID_RE.fullmatch(e.name):
                if e.name in wanted or cleanup_type == "auto":
                    skipped.append({"name": e.name, "kind": e.kind,
                                    "reason": "symbolic link: not followed, never removed" if e.kind == "symlink" else "not a model directory"})
                wanted.discard(e.name)
                continue
            mid = e.name
            if cleanup_type == "manual" and mid not in wanted:
                continue
            wanted.discard(mid)
            processed += 1
            last, uses = self._last_activity(mid)
            n_recent = recent.get(mid, 0)
            block = self.blockers(mid)
            if block:
                preserved.append({"model_id": mid, "reason": "; ".join(block)})
                continue
            if preserve_frequently_used and n_recent > keep_more:
                preserved.append({"model_id": mid, "reason": f"used {n_recent} times in the last {window:g} days (more than {keep_more})"})
                continue
            ref = last if last is not None else installed.get(mid, e.size.newest_mtime or now)
            idle_days = (now - ref) / DAY
            if cleanup_type == "manual":
                items.append(PlanItem("model", mid, mid, e.size.bytes, "asked for", 1.0, last, uses))
                continue
            if idle_days < keep_days:
                what = "used" if last is not None else "installed"
                preserved.append({"model_id": mid, "reason": f"{what} {idle_days:.1f} days ago (kept for {keep_days:g} days)"})
                if self._tier(mid, ref, now) != "hot":
                    keepable.append((ref, e.size.bytes, e, last, uses))
                continue
            conf = cleanup_confidence(idle_days, keep_days, uses)
            if last is None:
                reason = f"Never used; installed {days_text(idle_days)} ago"
            else:
                reason = f"Not used for {days_text(idle_days)}"
            if mid not in self._catalog.models and self._catalog.error is None:
                reason += "; not in the catalog"
            items.append(PlanItem("model", mid, mid, e.size.bytes, reason, conf, last, uses))
        for name in sorted(wanted):
            if name in self._catalog.models:
                skipped.append({"name": name, "kind": "missing", "reason": "not installed"})
            else:
                skipped.append({"name": name, "kind": "missing", "reason": "no such model"})
        if cleanup_type == "auto":
            # ceiling and floor: take more, least recently used first (never hot models)
            max_gb = float(cfg.get("storage.max_gb")) if threshold_gb is None else float(threshold_gb)
            need = 0
            why = ""
            planned = sum(i.size_bytes for i in items)
            if max_gb > 0 and models_bytes - planned > max_gb * GIB:
                need = int(models_bytes - planned - max_gb * GIB)
                why = f"models use {models_bytes / GIB:.2f} GiB, over the {max_gb:g} GiB ceiling"
            floor = float(cfg.get("storage.min_free_gb")) * GIB
            if du.free + planned < floor and floor - du.free - planned > need:
                need = int(floor - du.free - planned)
                why = f"free space {du.free / GIB:.2f} GiB is under the {floor / GIB:g} GiB floor"
            if need > 0:
                got = 0
                for ref, size, e, last, uses in sorted(keepable, key=lambda k: (k[0], -k[1], k[2].name)):
                    if got >= need:
                        break
                    idle = (now - ref) / DAY
                    items.append(PlanItem("model", e.name, e.name, size, why + "; least recently used",
                                          cleanup_confidence(idle, keep_days, uses), last, uses))
                    preserved = [p for p in preserved if p["model_id"] != e.name]
                    got += size
        if include_partial and cleanup_type == "auto":
            max_age = float(cfg.get("storage.partial_max_age_days")) * DAY
            kept = await self._downloads_kept()
            for e in await asyncio.to_thread(self._shared_partials):
                owner = e.name.split("/", 1)[0]
                age = now - e.size.newest_mtime
                if age < max_age or self._partial_owned(owner, kept):
                    continue
                items.append(PlanItem("shared_partial", e.name, owner, e.size.bytes,
                                      f"shared partial download data untouched for {age / DAY:.0f} days",
                                      cleanup_confidence(age / DAY, max_age / DAY, 0), None, 0))
            for e in partial:
                owner = self._partial_owner(e.name)
                age = now - e.size.newest_mtime
                if age < max_age or self._partial_entry_owned(e.name, owner, kept):
                    continue
                items.append(PlanItem("partial", e.name, owner, e.size.bytes,
                                      f"partial download data untouched for {days_text(age / DAY)}, no download owns it",
                                      cleanup_confidence(age / DAY, max_age / DAY, 0), None, 0))
        plan = Plan("plan_" + secrets.token_hex(6), self._clock.monotonic(), items, preserved, skipped, models_bytes, du.free, processed)
        if keep:  # storage.info's suggestions are not plans anyone can run
            self._plans = {k: p for k, p in self._plans.items() if self._clock.monotonic() - p.created_at < PLAN_TTL_S}
            self._plans[plan.plan_id] = plan
        return plan

    async def recommendations(self, storage_threshold_gb: float | None, min_unused_days: float | None) -> dict[str, Any]:
        """analytics.cleanup: every recommendation with its reason, last use, size and confidence, and the savings."""
        plan = await self._make_plan("auto", None, min_unused_days, True, storage_threshold_gb)
        savings = sum(i.size_bytes for i in plan.items)
        home = self._layout.home
        recs = []
        for i in plan.items:
            d = i.to_dict(home)
            recs.append(d)
        return {
            "recommendations": recs,
            "potential_savings_gb": savings / GIB,
            "potential_savings_bytes": savings,
            "current_usage_gb": plan.models_bytes / GIB,
            "target_usage_gb": max(0, plan.models_bytes - sum(i.size_bytes for i in plan.items if i.kind == "model")) / GIB,
            "preserved": plan.preserved,
            "skipped": plan.skipped,
            "plan_id": plan.plan_id,
            "policy": {k.split(".", 1)[1]: self._settings.get(k) for k in (
                "storage.keep_used_within_days", "storage.keep_used_more_than", "storage.frequent_window_days",
                "storage.max_gb", "storage.min_free_gb", "storage.partial_max_age_days")},
        }

    # --- cleanup -----------------------------------------------------------
    async def cleanup(self, cleanup_type: str = "auto", models_to_remove: list[Any] | None = None, min_unused_days: float | None = None,
                      preserve_frequently_used: bool = True, dry_run: bool = False, plan_id: str | None = None,
                      include_partial: bool = True) -> CleanupResult:
        """A dry run returns the plan; a real run removes what its plan names and is still safe to remove."""
        if cleanup_type not in ("auto", "manual"):
            raise InvalidParams("cleanup_type must be auto or manual", field="cleanup_type")
        if models_to_remove is not None and not all(isinstance(m, str) for m in models_to_remove):
            raise InvalidParams("models_to_remove must be a list of model ids", field="models_to_remove")
        if cleanup_type == "manual" and not models_to_remove and plan_id is None:
            raise InvalidParams("a manual cleanup needs models_to_remove", field="models_to_remove")
        async with self._lock:
            await self._leases.refresh_elsewhere()  # what other engines on a shared store hold now, for every check below
            if plan_id is not None:
                plan = self._plans.get(plan_id)
                if plan is None or self._clock.monotonic() - plan.created_at > PLAN_TTL_S:
                    raise NotFound(f"no plan {plan_id!r} (plans last {PLAN_TTL_S / 60:g} minutes)", field="plan_id")
            else:
                plan = await self._make_plan(cleanup_type, models_to_remove, min_unused_days, preserve_frequently_used, None, include_partial)
            plan_items = [i.to_dict(self._layout.home) for i in plan.items]
            if dry_run:  # what the run would remove and free, in the fields the run reports
                return CleanupResult(True, plan.plan_id, plan_items, None, [i.name for i in plan.items if i.kind == "model"],
                                     [i.name for i in plan.items if i.kind == "partial"], sum(i.size_bytes for i in plan.items),
                                     plan.preserved, plan.skipped, [], plan.processed)
            self._plans.pop(plan.plan_id, None)  # a plan runs once
            cleanup_id = "cleanup_" + secrets.token_hex(6)
            removed: list[str] = []
            partial_removed: list[str] = []
            preserved = list(plan.preserved)
            errors: list[dict[str, Any]] = []
            freed = 0
            for item in plan.items:
                try:
                    got = await self._remove(cleanup_id, item, plan)
                except CleanupCrash:
                    raise
                except _Preserve as p:
                    preserved.append({"model_id": item.model_id or item.name, "reason": str(p)})
                    continue
                except Exception as exc:
                    log.exception("cleanup %s: removing %s %s failed", cleanup_id, item.kind, item.name)
                    errors.append({"name": item.name, "kind": item.kind, "error": exc.__class__.__name__})
                    continue
                freed += got
                (removed if item.kind == "model" else partial_removed).append(item.name)
            log.info("cleanup %s removed %d models and %d partial entries, freed %d bytes", cleanup_id, len(removed), len(partial_removed), freed)
        # a model whose removal failed part way may have lost its rows or its directory: rescan it too
        touched = removed + [e["name"] for e in errors if e["kind"] == "model"]
        for mid in removed:
            self._forget_health(mid)  # its files are gone: what the last check found no longer stands
        if touched:
            await self._presence.refresh(touched)
        self.schedule_check()
        return CleanupResult(False, plan.plan_id, plan_items, cleanup_id, removed, partial_removed, freed, preserved, plan.skipped,
                             errors, plan.processed)

    def _fault(self, stage: str) -> None:
        if self._fault_hook is not None:
            self._fault_hook(stage)
        crash.point(f"storage.{stage}")

    def _shared_partials(self) -> list[DiskEntry]:
        """Every `<model>/<version>` of the shared store's partial data (none without a store)."""
        if self._store is None:
            return []
        out = []
        for m in scan_dir(self._store.root / "partial"):
            if m.kind == "dir":
                out += [DiskEntry(f"{m.name}/{v.name}", v.path, v.kind, v.size) for v in scan_dir(m.path) if v.kind == "dir"]
        return out

    async def _remove(self, cleanup_id: str, item: PlanItem, plan: Plan) -> int:
        """Move one plan item aside into trash/, forget it in the database, delete it; return bytes freed."""
        if item.kind == "shared_partial":
            return await self._remove_shared_partial(cleanup_id, item, plan)
        base = self._layout.models_dir if item.kind == "model" else self._layout.partial_dir
        return await self._move_and_delete(cleanup_id, item, plan, base / item.name)

    async def _remove_shared_partial(self, cleanup_id: str, item: PlanItem, plan: Plan) -> int:
        """Remove abandoned partial data of the shared store while holding its version's lock, so that no engine
        starts to download into it meanwhile; preserved while an engine holds the lock."""
        assert self._store is not None
        model_id, version = item.name.split("/", 1)
        got = await asyncio.to_thread(self._store.try_lock, model_id, version)
        if not isinstance(got, VersionLock):
            raise _Preserve(f"another engine ({got.describe()}) is downloading it")
        try:
            freed = await self._move_and_delete(cleanup_id, item, plan, safe_join(self._store.root / "partial", item.name))
            await asyncio.to_thread(safefs.rmdir, self._layout.home, safe_join(self._store.root / "partial", model_id))  # if empty
            return freed
        finally:
            await asyncio.to_thread(got.release)

    async def _move_and_delete(self, cleanup_id: str, item: PlanItem, plan: Plan, src: Path) -> int:
        """Check the item again, journal the move, rename `src` into the trash, forget it, delete it; bytes freed."""
        dst = self._layout.trash_dir / f"{cleanup_id}.{item.kind}.{item.name.replace('/', '--')}"
        if item.kind == "model":
            self._recheck(item, plan, src)
        else:
            kept = await self._downloads_kept()
            self._recheck_partial(item, src, kept)
        db = self._db
        row_id = await db.write(lambda c: c.execute(
            "INSERT INTO storage_trash (cleanup_id, model_id, kind, src, dst, size_bytes, state, created_at) VALUES (?,?,?,?,?,?,?,?)",
            (cleanup_id, item.model_id, item.kind, str(src), str(dst), item.size_bytes, "moving", self._clock.time())).lastrowid)
        self._fault("after_journal")
        try:
            if item.kind == "model":
                self._recheck(item, plan, src)  # again, with no await before the rename: nobody can take it in between
            else:
                self._recheck_partial(item, src, kept)
            safefs.rename(self._layout.home, src, dst, create_parents=True)  # by directory descriptors: no link followed
        except BaseException:
            await db.write(lambda c: c.execute("DELETE FROM storage_trash WHERE id = ?", (row_id,)))
            raise
        hold = self._activity.hold(item.model_id, "removing") if item.kind == "model" and item.model_id else None
        if hold is not None:
            hold.__enter__()
        try:
            self._fault("after_move")

            def forget(c: Any) -> None:
                c.execute("UPDATE storage_trash SET state = 'moved' WHERE id = ?", (row_id,))
                if item.kind == "model":
                    installed_store.forget_model(c, item.name)

            await db.write(forget)
            self._fault("before_delete")
            freed = await asyncio.to_thread(remove_tree, self._layout.home, dst)
            await db.write(lambda c: c.execute("DELETE FROM storage_trash WHERE id = ?", (row_id,)))
            log.info("cleanup %s removed %s %s (%d bytes freed): %s", cleanup_id, item.kind, item.name, freed, item.reason)
            return freed
        finally:
            if hold is not None:
                hold.__exit__(None, None, None)

    def _recheck_partial(self, item: PlanItem, src: Path, kept: set[str]) -> None:
        """Preserve partial data that a download (or a repair) has taken since the plan was made."""
        if not os.path.lexists(src):
            raise _Preserve("already gone")
        if self._partial_entry_owned(item.name, item.model_id, kept):
            raise _Preserve("a download owns this partial data now")

    def _recheck(self, item: PlanItem, plan: Plan, src: Path) -> None:
        block = self.blockers(item.name)
        if block:
            raise _Preserve("; ".join(block))
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            raise _Preserve("already gone") from None
        if not stat.S_ISDIR(st.st_mode):
            raise _Preserve("no longer a real directory: left alone")
        last, _ = self._last_activity(item.name)
        if last is not None and (item.last_used is None or last > item.last_used) and item.confidence < 1.0:
            raise _Preserve("used since the plan was made")  # a manual request stands; an automatic verdict is stale

    # --- recovery ----------------------------------------------------------
    async def recover(self) -> list[str]:
        """Finish removals whose directory reached the trash, revert the others; return the affected model ids."""
        rows = await self._db.read(lambda c: [tuple(r) for r in c.execute(
            "SELECT id, cleanup_id, model_id, kind, src, dst, state FROM storage_trash ORDER BY id")])
        touched: list[str] = []
        for rid, cid, mid, kind, src, dst, state in rows:
            src_p, dst_p = Path(src), Path(dst)
            if not _inside(dst_p, self._layout.trash_dir):
                log.error("cleanup journal row %s names %s outside the trash: ignored", rid, dst)
                await self._db.write(lambda c, rid=rid: c.execute("DELETE FROM storage_trash WHERE id = ?", (rid,)))
                continue
            moved = os.path.lexists(dst_p)
            if state == "moving" and not moved:
                log.warning("cleanup %s of %s %s was interrupted before the move: reverted, nothing was removed", cid, kind, mid)
            else:
                src_back = os.path.lexists(src_p)

                def forget(c: Any, rid: int = rid, kind: str = kind, name: str = src_p.name, src_back: bool = src_back) -> None:
                    if kind == "model" and not src_back:
                        installed_store.forget_model(c, name)
                    c.execute("UPDATE storage_trash SET state = 'moved' WHERE id = ?", (rid,))

                await self._db.write(forget)
                try:
                    freed = await asyncio.to_thread(remove_tree, self._layout.home, dst_p) if moved else 0
                except (OSError, MavailError) as exc:
                    log.error("cleanup %s: could not delete %s from the trash: %s", cid, dst_p, exc)
                    freed = 0
                log.warning("cleanup %s of %s %s was interrupted after the move: finished (%d bytes freed)", cid, kind, mid, freed)
                if kind == "model" and mid:
                    touched.append(mid)
            await self._db.write(lambda c, rid=rid: c.execute("DELETE FROM storage_trash WHERE id = ?", (rid,)))
        # leftovers of ours in the trash that no journal row names (a crash after the delete, before the journal update)
        known = {Path(r[5]).name for r in rows}
        for e in await asyncio.to_thread(scan_dir, self._layout.trash_dir):
            if e.name.startswith("cleanup_") and e.name not in known:
                try:
                    await asyncio.to_thread(remove_tree, self._layout.home, e.path)
                except (OSError, MavailError) as exc:
                    log.error("could not delete %s from the trash: %s", e.path, exc)
        for mid in touched:
            self._forget_health(mid)
        if touched:
            await self._presence.refresh(touched)
        return touched

    # --- warnings ----------------------------------------------------------
    async def check_thresholds(self) -> dict[str, Any]:
        """Measure free space and the models' size; emit storage_warning when a state changes."""
        def measure_now() -> tuple[Any, int]:
            self._layout.models_dir.mkdir(parents=True, exist_ok=True)
            return psutil.disk_usage(str(self._layout.models_dir)), measure(self._layout.models_dir).bytes

        du, models_bytes = await asyncio.to_thread(measure_now)
        cfg = self._settings
        floor = float(cfg.get("storage.min_free_gb"))
        max_gb = float(cfg.get("storage.max_gb"))
        warn_pct = float(cfg.get("storage.ceiling_warn_percent"))
        free_state = "low" if du.free < floor * GIB else "ok"
        if max_gb > 0 and models_bytes > max_gb * GIB:
            ceiling_state = "exceeded"
        elif max_gb > 0 and models_bytes >= max_gb * GIB * warn_pct / 100:
            ceiling_state = "near"
        else:
            ceiling_state = "ok"
        figures = {"free_gb": du.free / GIB, "min_free_gb": floor, "models_gb": models_bytes / GIB, "max_gb": max_gb,
                   "total_gb": du.total / GIB, "usage_percent": du.percent}
        for key, state, msg in (
            ("free_space", free_state, f"free space {du.free / GIB:.2f} GiB is under the {floor:g} GiB floor" if free_state == "low"
             else f"free space {du.free / GIB:.2f} GiB is back above the {floor:g} GiB floor"),
            ("ceiling", ceiling_state, {"exceeded": f"models use {models_bytes / GIB:.2f} GiB, over the {max_gb:g} GiB ceiling",
                                        "near": f"models use {models_bytes / GIB:.2f} GiB, {warn_pct:g}% or more of the {max_gb:g} GiB ceiling",
                                        "ok": f"models use {models_bytes / GIB:.2f} GiB, within the ceiling"}[ceiling_state]),
        ):
            old = self._warn_state[key]
            if state != old:
                self._warn_state[key] = state
                level = "resolved" if state == "ok" else "critical" if state in ("low", "exceeded") else "warning"
                log.warning("storage_warning %s %s: %s", key, state, msg)
                self._emit("storage_warning", warning_type=key, state=state, level=level, message=msg, **figures)
        self.last_check = {"free_space": free_state, "ceiling": ceiling_state, **figures}
        return self.last_check


class _Preserve(Exception):
    """A plan item that turned out not to be removable now; the message says why."""


def _inside(path: Path, base: Path) -> bool:
    try:
        path.relative_to(base)
    except ValueError:
        return False
    return ".." not in path.parts
