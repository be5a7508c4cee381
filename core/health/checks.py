"""The checking code health and updates share: contexts, the quick and full checks, and recording what they prove.

`HealthChecks` loads what a check needs from the database (version, manifest,
verification records, piece hashes), runs the quick check (stat only) or the
full check (every byte, within a read budget when one is given) in the caller's worker thread,
and the `record_*` functions store the results through `core.installed`
inside the caller's `Database.write` transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Callable, Iterable, Sequence

from mavail.core import hubpins, installed
from mavail.core.health.model import Context
from mavail.core.health.repair import RepairOutcome
from mavail.core.health.scan import CRITICAL, FileResult, Issue, ManifestFile, ReadBudget, Verified, extra_files, full_check_file, quick_check_file
from mavail.core.paths import HomeLayout
from mavail.core.ports import CatalogView, Settings
from mavail.core.state import Database

__all__ = ["CheckResult", "HealthChecks", "record_journal", "record_repairs", "record_results"]

MIB = 1024 * 1024

CheckResult = tuple[dict[str, FileResult], list[Issue]]
"""What one check of a model found: the result of each manifest file, and the files on disk it does not know."""


class HealthChecks:
    """Contexts and checks of model versions, shared by the health service and the update manager.

    The checks themselves run in a worker thread (the caller's `asyncio.to_thread`);
    `cancel` stops every running full check (at shutdown) without recording anything.
    """

    def __init__(self, db: Database, catalog: CatalogView, layout: HomeLayout, settings: Settings) -> None:
        self._db = db
        self._catalog = catalog
        self._layout = layout
        self._settings = settings
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Stop running full checks: they raise CheckCancelled at their next read."""
        self._cancel.set()

    def budget(self, rate: Callable[[], float] | None = None) -> ReadBudget:
        """A read budget of `rate()` MiB/s (default `health.max_read_mbps`, read live) that stops when cancelled."""
        return ReadBudget(rate if rate is not None else (lambda: float(self._settings.get("health.max_read_mbps"))), self._cancel)

    def unlimited(self) -> ReadBudget:
        """A read budget without a rate limit (repairs and their final checks), still stopped by `cancel`."""
        return ReadBudget(lambda: 0.0, self._cancel)

    async def contexts(self, model_ids: Sequence[str] | None = None, version: str | None = None) -> dict[str, Context]:
        """Version, manifest, verification records (and, for named models, pieces) of catalog models (all by default)."""
        models = self._catalog.models
        ids = [m for m in (model_ids if model_ids is not None else list(models)) if m in models]
        layout = self._layout
        want_pieces = model_ids is not None

        def q(conn: sqlite3.Connection) -> dict[str, Context]:
            few = len(ids) <= 20 and model_ids is not None
            where, args = (f" WHERE model_id IN ({','.join('?' * len(ids))})", tuple(ids)) if few else ("", ())
            vrows = conn.execute("SELECT model_id, version, is_current FROM installed_versions" + where, args).fetchall()
            current = {r[0]: r[1] for r in vrows if r[2]}
            versions = {(r[0], r[1]) for r in vrows}
            files: dict[tuple[str, str], dict[str, Verified]] = {}
            for r in conn.execute("SELECT model_id, version, path, size, sha256, mtime_ns, inode, verified_at FROM installed_files" + where, args):
                files.setdefault((r[0], r[1]), {})[r[2]] = Verified(r[3], r[4], r[5], r[6], r[7])
            pins = hubpins.read_many(conn, ids if few else None)
            out: dict[str, Context] = {}
            for mid in ids:
                spec = models[mid]
                ver_name = current.get(mid, spec.version) if version is None else version
                ver = files.get((mid, ver_name), {})
                pin = pins.get((mid, ver_name))
                if ver_name == spec.version and spec.files:
                    manifest = [ManifestFile(f.path, f.size, f.sha256, f.urls) for f in spec.files]
                elif pin is not None and spec.source == pin.source:
                    # an hf:// version: its files at the commit it was pinned to
                    manifest = [ManifestFile(p, v.size, v.sha256, (pin.url(p),)) for p, v in sorted(ver.items())]
                else:
                    manifest = [ManifestFile(p, v.size, v.sha256) for p, v in sorted(ver.items())]
                pieces: dict[str, tuple[int, list[str]]] = {}
                algos: dict[str, str] = {}
                if want_pieces:
                    rows = conn.execute("SELECT path, piece_size, idx, sha256, algo FROM file_pieces WHERE model_id = ? AND version = ?"
                                        " ORDER BY path, idx", (mid, ver_name)).fetchall()
                    for path, ps, idx, digest, algo in rows:
                        entry = pieces.setdefault(path, (ps, []))
                        algo0 = algos.setdefault(path, algo)
                        if idx == len(entry[1]) and ps == entry[0] and algo == algo0:
                            entry[1].append(digest)
                out[mid] = Context(mid, ver_name, layout.model_dir(mid, ver_name), manifest, ver, pieces, (mid, ver_name) in versions,
                                   mid in current, ver_name == spec.version, algos)
            return out

        return await self._db.read(q)

    async def context(self, model_id: str, version: str | None = None) -> Context:
        """The context of one model, at its version in use or at `version` (ModelNotFound when not in the catalog)."""
        self._catalog.spec(model_id)
        return (await self.contexts([model_id], version))[model_id]

    def quick(self, ctx: Context, previous: dict[str, FileResult] | None = None) -> CheckResult:
        """The quick check (stat only; blocking: run it in a worker thread). `previous`: the last results of this version."""
        prev = previous or {}
        files = {f.path: quick_check_file(ctx.base, f, ctx.verified.get(f.path), prev.get(f.path)) for f in ctx.manifest}
        return files, extra_files(ctx.base, ctx.manifest)

    def full(self, ctx: Context, budget: ReadBudget, verify_sha256: bool = False) -> CheckResult:
        """The full check of every byte, piece by piece, within `budget` (blocking: run it in a worker thread).

        Recorded piece hashes are checked with the algorithm they were recorded with, and
        trusted only while the file's recorded sha256 is the manifest's; otherwise pieces are
        computed afresh at `downloads.piece_size_mb`. With `verify_sha256` every file's
        whole-file sha256 is computed too (in the same pass) and decides.
        """
        piece_size = int(self._settings.get("downloads.piece_size_mb")) * MIB
        files: dict[str, FileResult] = {}
        for f in ctx.manifest:
            rec = ctx.verified.get(f.path)
            pieces = ctx.pieces.get(f.path)
            if pieces is not None and (rec is None or rec.sha256 == f.sha256):
                files[f.path] = full_check_file(ctx.base, f, pieces[1], pieces[0], budget, ctx.piece_algos.get(f.path, "sha256"), verify_sha256)
            else:
                files[f.path] = full_check_file(ctx.base, f, None, piece_size, budget, verify_sha256=verify_sha256)
        return files, extra_files(ctx.base, ctx.manifest)


def record_results(conn: sqlite3.Connection, ctx: Context, files: dict[str, FileResult], now: float, full: bool) -> bool:
    """Record what a check proved: verified files (full checks), broken ones unverified, new piece hashes (in PIECE_ALGO); a version
    copied in by hand and now fully proven becomes installed. Runs in the caller's transaction; returns whether any row changed."""
    before = conn.total_changes
    by_path = {m.path: m for m in ctx.manifest}
    for fr in files.values():
        f = by_path[fr.path]
        if fr.verified and fr.stat_sig is not None and full:
            installed.record_files(conn, ctx.model_id, ctx.version,
                                   [installed.VerifiedFile(fr.path, f.size, f.sha256, fr.stat_sig[1], fr.stat_sig[2], now)])
        elif any(i.severity == CRITICAL for i in fr.issues) or (full and fr.state == "changed_bytes"):
            installed.mark_unverified(conn, ctx.model_id, ctx.version, fr.path)
        if fr.new_pieces is not None and fr.piece_size:
            installed.replace_pieces(conn, ctx.model_id, ctx.version, fr.path, fr.piece_size, fr.new_pieces)
    if full and not ctx.installed and files and all(fr.verified for fr in files.values()):
        installed.add_version(conn, ctx.model_id, ctx.version, now, replace=False)
    return conn.total_changes != before


def record_repairs(conn: sqlite3.Connection, ctx: Context, outcomes: Iterable[RepairOutcome], now: float) -> None:
    """Record repaired files with their new stat signature and pieces; a file whose permissions were fixed is recorded
    unverified (its bytes were never hashed). Runs in the caller's transaction."""
    by_path = {m.path: m for m in ctx.manifest}
    rows = []
    for out in outcomes:
        if out.stat_sig is None:
            continue
        f = by_path[out.path]
        rows.append(installed.VerifiedFile(out.path, f.size, f.sha256, out.stat_sig[1], out.stat_sig[2],
                                           now if out.action != "fix_permissions" else None, out.piece_size or 0, out.pieces, out.piece_algo))
    installed.record_files(conn, ctx.model_id, ctx.version, rows)


def record_journal(conn: sqlite3.Connection, model_id: str, version: str, path: str, sig: tuple[int, int, int], verified_at: float | None) -> None:
    """Record the file a replayed repair journal wrote: its new stat signature, verified when its sha256 matched."""
    installed.update_stat(conn, model_id, version, path, sig[0], sig[1], sig[2], verified_at)
